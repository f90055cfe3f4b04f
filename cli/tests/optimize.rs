//! `edgefleet release optimize` as a real process on the real models: magika's variants made, checked against
//! fp32 and measured by ONNX Runtime; SmolLM2 requantized by llama.cpp and scored; bad input refused with
//! nothing written.

mod common;

use common::Lab;
use edgefleet_e2e::cache;

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn magika_variants_are_made_checked_reported_and_loadable() {
    let lab = Lab::new();
    let model = cache("models/magika/model.onnx");
    let samples = cache("samples/magika.safetensors");
    let run = lab
        .run(&[
            "--json",
            "release",
            "optimize",
            s(&model),
            "--to",
            "int8,int4,dynamic-int8,qdq-int8,fp16,prune30",
            "--samples",
            s(&samples),
            "--runs",
            "2",
            "-o",
            "variants",
        ])
        .ok();
    let report = run.json();
    let reference = report["reference"]["bytes"].as_u64().unwrap();
    assert_eq!(reference, std::fs::metadata(&model).unwrap().len());
    let variants = report["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 6);
    for v in variants {
        let name = v["variant"].as_str().unwrap();
        assert_eq!(v["passed"], true, "{name}: {v}");
        let file = lab.p("variants").join(v["file"].as_str().unwrap());
        assert_eq!(std::fs::metadata(&file).unwrap().len(), v["bytes"].as_u64().unwrap(), "{name}");
        assert!(v["zstd_bytes"].as_u64().unwrap() > 0 && v["latency_p50_ms"].as_f64().unwrap() > 0.0, "{name}");
        let out = &v["accuracy"][0];
        assert_eq!(out["output"], "target_label");
        assert_eq!(out["top1_agreement"], 1.0, "{name}: the five sample files keep their label");
        // Each file is a model the packer takes: it runs its golden vectors against fp32 again.
        let id = format!("id=v,file={},precision={}", s(&file), v["precision"].as_str().unwrap());
        let reference_model = format!("--reference={}", s(&model));
        let mut args = vec!["release", "pack", "--model", "m", "--version", "1", "--variant", &id];
        args.extend(["--samples", s(&samples), &reference_model, "-o"]);
        let out_dir = format!("packed-{name}");
        args.push(&out_dir);
        if name.starts_with("prune") {
            args.push("--tolerance=target_label=max_abs:0.1");
        }
        lab.run(&args).ok();
    }
    // weight-only int8 stays within 30 % of fp32's bytes; int4 below int8; fp16 about half.
    let bytes = |n: &str| variants.iter().find(|v| v["variant"] == n).unwrap()["bytes"].as_u64().unwrap();
    assert!(bytes("int8") * 100 <= reference * 30, "int8: {} of {reference}", bytes("int8"));
    assert!(bytes("int4") < bytes("int8"));
    assert!(bytes("fp16") * 100 <= reference * 55);
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.p("variants/report.json")).unwrap()).unwrap();
    assert_eq!(written, report);
}

#[test]
fn a_variant_that_misses_its_golden_vectors_is_refused_with_the_numbers_and_not_written() {
    let lab = Lab::new();
    let model = cache("models/magika/model.onnx");
    let samples = cache("samples/magika.safetensors");
    // Held to max |Δ| 1e-6, int8 cannot pass; int4 at 0.5 can.
    let run = lab.run(&[
        "release",
        "optimize",
        s(&model),
        "--to",
        "int8,int4",
        "--samples",
        s(&samples),
        "--runs",
        "1",
        "--tolerance",
        "int8:target_label=max_abs:0.000001",
        "--tolerance",
        "int4:target_label=max_abs:0.5",
        "-o",
        "variants",
    ]);
    let run = run.fails(1, "1 of 2 variant(s) refused");
    assert!(run.stderr().contains("int8: misses the reference's golden vectors"), "{}", run.stderr());
    assert!(run.stderr().contains("allowed 1.000e-6"), "the numbers: {}", run.stderr());
    assert!(lab.p("variants/model-int4.onnx").exists());
    assert!(!lab.p("variants/model-int8.onnx").exists());
}

#[test]
fn bad_input_is_refused_clearly_and_nothing_is_written() {
    let lab = Lab::new();
    let model = cache("models/magika/model.onnx");
    let magika_samples = cache("samples/magika.safetensors");
    let silero_samples = cache("samples/silero_vad.safetensors");
    let silero = cache("models/silero_vad.onnx");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(lab.p("truncated.onnx"), &bytes[..bytes.len() / 3]).unwrap();
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["truncated.onnx", "--to", "int8", "--samples", s(&magika_samples)], "not a readable ONNX model"),
        (
            vec![s(&model), "--to", "qdq-int8", "--samples", s(&silero_samples)],
            "the samples do not match the model: input \"bytes\" is missing",
        ),
        (
            vec![s(&model), "--to", "qdq-int8", "--samples", s(&magika_samples), "--calibration", s(&silero_samples)],
            "silero_vad.safetensors",
        ),
        (vec![s(&model), "--to", "int3", "--samples", s(&magika_samples)], "\"int3\" is not a variant kind"),
        (vec![s(&silero), "--to", "fp16", "--samples", s(&silero_samples)], "operator If"),
    ];
    for (args, says) in cases {
        let mut all = vec!["release", "optimize"];
        all.extend(args);
        all.extend(["-o", "out"]);
        lab.run(&all).fails(1, says);
        assert!(!lab.p("out").exists(), "{says}: the output directory was created");
    }
    let leftovers: Vec<_> = std::fs::read_dir(lab.dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".optimize-"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

#[test]
fn smollm2_requantized_by_llama_cpp_is_scored_on_the_golden_prompts() {
    let lab = Lab::new();
    let model = cache("models/llm/smollm2-135m-instruct-q4_1.gguf");
    let prompts = edgefleet_e2e::repo().join("fixtures/llm/golden-prompts.json");
    let run = lab.run(&[
        "--json",
        "release",
        "optimize",
        s(&model),
        "--to",
        "q8_0",
        "--samples",
        s(&prompts),
        "--golden-tokens",
        "8",
        "-o",
        "llm",
    ]);
    let report: serde_json::Value = serde_json::from_str(run.stdout().trim()).expect("a report, passed or not");
    let v = &report["variants"][0];
    assert_eq!(v["variant"], "q8_0");
    let agreement = v["accuracy"]["top1_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement) && v["accuracy"]["steps"].as_u64().unwrap() > 0, "{v}");
    // From Q4_1 to Q8_0 every weight is re-expressed, none is lost beyond the source's rounding: it passes.
    assert_eq!(v["passed"], true, "{v}");
    let file = lab.p("llm").join(v["file"].as_str().unwrap());
    assert_eq!(std::fs::metadata(file).unwrap().len(), v["bytes"].as_u64().unwrap());
    assert!(v["bytes"].as_u64().unwrap() > report["reference"]["bytes"].as_u64().unwrap(), "q8_0 is bigger than q4_1");
}
