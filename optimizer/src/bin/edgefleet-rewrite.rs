//! The optimizer's rewrite alone, without ONNX Runtime: what `scripts/setup.sh` makes the project's own int8
//! variants with, before anything that links ONNX Runtime or llama.cpp is built. `edgefleet release optimize` is
//! the command for releases: it also checks each variant against the reference and measures it.
//!
//!   cargo run -p edgefleet-optimizer --bin edgefleet-rewrite -- IN.onnx OUT.onnx KIND
//!
//! A binary, not an example, so that building it builds none of the crate's test dependencies (ONNX Runtime,
//! llama.cpp).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, kind] = &args[..] else {
        eprintln!("usage: rewrite IN.onnx OUT.onnx KIND (int8, int4, dynamic-int8, fp16, pruneNN)");
        return ExitCode::from(2);
    };
    let run = || -> Result<usize, String> {
        let kind: edgefleet_optimizer::Kind = kind.parse()?;
        let bytes = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
        let model = edgefleet_optimizer::decode(&bytes).map_err(|e| format!("{input}: {e}"))?;
        let variant = edgefleet_optimizer::optimize(&model, kind, None).map_err(|e| format!("{kind}: {e}"))?;
        let out = edgefleet_optimizer::encode(&variant);
        // Temporary file and rename: an interrupted run leaves nothing under OUT.
        let tmp = format!("{output}.tmp");
        std::fs::write(&tmp, &out)
            .and_then(|()| std::fs::rename(&tmp, output))
            .map_err(|e| format!("{output}: {e}"))?;
        Ok(out.len())
    };
    match run() {
        Ok(n) => {
            eprintln!("rewrite: {input} -> {output} ({kind}, {n} bytes)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rewrite: {e}");
            ExitCode::FAILURE
        }
    }
}
