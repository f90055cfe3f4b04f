//! The release side of the CLI, run as a real process on real files, with real ONNX Runtime and the real
//! magika and silero-vad models from `.cache/` (fetched by `scripts/setup.sh`, which the README's test command
//! runs first). Missing models are a loud failure, never a skip.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod common;

use common::{Lab, Run};
use edgefleet_e2e::cache;
use std::process::Command;

impl Lab {
    fn keys(&self, names: &[&str]) {
        for n in names {
            self.run(&["keys", "generate", "-o", &format!("{n}.key")]).ok();
        }
    }
    /// Root key r1 (threshold 1), release keys a, b (threshold 2), fleet key f.
    fn root(&self) {
        self.keys(&["r1", "a", "b", "f"]);
        self.run(&[
            "trust",
            "init",
            "--root-key",
            "r1.pub",
            "--release-key",
            "a.pub",
            "--release-key",
            "b.pub",
            "--release-threshold",
            "2",
            "--fleet-key",
            "f.pub",
            "-o",
            "root.json",
        ])
        .ok();
        self.run(&["trust", "sign", "root.json", "-k", "r1.key"]).ok();
    }
    fn pack_magika(&self, out: &str, version: &str) -> Run {
        let fp32 = format!(
            "id=cpu-fp32,file={},precision=fp32,providers=CPUExecutionProvider",
            cache("models/magika/model.onnx").display()
        );
        let int8 = format!(
            "id=cpu-int8,file={},precision=int8,arch=x86_64+aarch64",
            cache("models/magika/model-int8.onnx").display()
        );
        let samples = cache("samples/magika.safetensors");
        self.run(&[
            "release",
            "pack",
            "--model",
            "magika",
            "--version",
            version,
            "--variant",
            &fp32,
            "--variant",
            &int8,
            "--samples",
            samples.to_str().expect("utf-8"),
            "-o",
            out,
        ])
    }
}

#[test]
fn keys_are_private_and_refused_when_readable_by_others() {
    let lab = Lab::new();
    let j = lab.run(&["--json", "keys", "generate", "-o", "k.key"]).ok().json();
    let mode = std::fs::metadata(lab.p("k.key")).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let shown = lab.run(&["--json", "keys", "show", "k.pub"]).ok().json();
    assert_eq!(shown["keyid"], j["keyid"]);
    lab.run(&["keys", "generate", "-o", "k.key"]).fails(1, "already exists");

    std::fs::set_permissions(lab.p("k.key"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    lab.run(&[
        "trust",
        "init",
        "--root-key",
        "k.pub",
        "--release-key",
        "k.pub",
        "--fleet-key",
        "k.pub",
        "-o",
        "root.json",
    ])
    .ok();
    lab.run(&["trust", "sign", "root.json", "-k", "k.key"])
        .fails(1, "permissions 644 let others read this private key");
    std::fs::write(lab.p("junk.key"), "{not json").expect("write");
    std::fs::set_permissions(lab.p("junk.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    lab.run(&["trust", "sign", "root.json", "-k", "junk.key"]).fails(1, "junk.key: not an edgefleet private key file");
    lab.run(&["trust", "sign", "root.json", "-k", "absent.key"]).fails(1, "absent.key");
}

#[test]
fn root_rotation_through_the_cli() {
    let lab = Lab::new();
    lab.root();
    lab.keys(&["r2", "c"]);
    // v2: root key r1 -> r2, release key b revoked and c added. Signed by the old root key and the new.
    lab.run(&[
        "trust",
        "rotate",
        "--from",
        "root.json",
        "--add-root-key",
        "r2.pub",
        "--revoke",
        "r1.pub",
        "--revoke",
        "b.pub",
        "--add-release-key",
        "c.pub",
        "-o",
        "root-2.json",
    ])
    .ok();
    lab.run(&["trust", "sign", "root-2.json", "-k", "r2.key"]).ok();
    lab.run(&["trust", "verify", "--trusted", "root.json", "root-2.json"]).fails(3, "0 valid root key(s)");
    lab.run(&["trust", "sign", "root-2.json", "-k", "r1.key"]).ok();
    let j = lab.run(&["--json", "trust", "verify", "--trusted", "root.json", "root-2.json"]).ok().json();
    assert_eq!(j["version"], 2);
    let shown = lab.run(&["--json", "trust", "show", "root-2.json"]).ok().json();
    assert_eq!(shown["roles"]["release"]["keyids"].as_array().map(Vec::len), Some(2));
    // Skipping a version, or going back, is refused.
    lab.run(&["trust", "rotate", "--from", "root-2.json", "-o", "root-3.json"]).ok();
    lab.run(&["trust", "sign", "root-3.json", "-k", "r2.key"]).ok();
    lab.run(&["trust", "verify", "--trusted", "root.json", "root-3.json"]).fails(3, "key-compromise");
    lab.run(&["trust", "verify", "--trusted", "root.json", "root-2.json", "root-3.json"]).ok();
}

#[test]
fn pack_sign_verify_magika_and_refuse_tampering() {
    let lab = Lab::new();
    lab.root();
    let packed = lab.pack_magika("magika-1", "1").ok();
    assert!(packed.stdout().contains("cpu-int8"), "{}", packed.stdout());

    // Unsigned, then one short of the threshold of two, then enough.
    lab.run(&["release", "verify", "magika-1", "--root", "root.json"]).fails(3, "0 valid release key(s)");
    lab.run(&["release", "sign", "magika-1", "-k", "a.key"]).ok();
    lab.run(&["release", "verify", "magika-1", "--root", "root.json"])
        .fails(3, "1 valid release key(s) of the trusted root; 2 needed");
    lab.run(&["release", "sign", "magika-1", "-k", "b.key"]).ok();
    let v = lab.run(&["--json", "release", "verify", "magika-1", "--root", "root.json"]).ok().json();
    assert_eq!(v["verified"], true);
    assert_eq!(v["variants"].as_array().map(Vec::len), Some(2));
    // The fleet key signing as well changes nothing, and cannot stand in for a release key.
    lab.run(&["release", "sign", "magika-1", "-k", "f.key"]).ok();
    lab.run(&["release", "verify", "magika-1", "--root", "root.json"]).ok();
    // A security floor above this release refuses it.
    lab.run(&["release", "verify", "magika-1", "--root", "root.json", "--floor", "2"]).fails(3, "rollback");

    let copy = |name: &str| {
        let dst = lab.p(name);
        std::fs::create_dir_all(dst.join("blobs")).expect("mkdir");
        for e in std::fs::read_dir(lab.p("magika-1/blobs")).expect("blobs") {
            let e = e.expect("entry");
            std::fs::copy(e.path(), dst.join("blobs").join(e.file_name())).expect("copy");
        }
        std::fs::copy(lab.p("magika-1/manifest.json"), dst.join("manifest.json")).expect("copy");
        dst
    };
    let manifest = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("read")).expect("json")
    };
    let blob_of = |dir: &Path, variant: usize, kind: &str| {
        dir.join("blobs").join(manifest(dir)["signed"]["variants"][variant][kind]["sha256"].as_str().expect("digest"))
    };

    // A zstd blob with one byte appended: endless data.
    let d = copy("longer");
    let mut bytes = std::fs::read(blob_of(&d, 1, "zstd")).expect("read");
    bytes.push(0);
    std::fs::write(blob_of(&d, 1, "zstd"), &bytes).expect("write");
    lab.run(&["release", "verify", "longer", "--root", "root.json"]).fails(3, "endless-data");

    // A flipped byte in a blob: refused (zstd checksum or digest).
    let d = copy("flipped");
    let mut bytes = std::fs::read(blob_of(&d, 0, "zstd")).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(blob_of(&d, 0, "zstd"), &bytes).expect("write");
    lab.run(&["release", "verify", "flipped", "--root", "root.json"]).fails(3, "REFUSED");

    // The int8 variant's blob swapped in for the fp32 one: mix-and-match.
    let d = copy("swapped");
    std::fs::copy(blob_of(&d, 1, "zstd"), blob_of(&d, 0, "zstd")).expect("swap");
    lab.run(&["release", "verify", "swapped", "--root", "root.json"]).fails(3, "REFUSED");

    // A changed description after signing: arbitrary model.
    let d = copy("edited");
    let mut m = manifest(&d);
    m["signed"]["description"] = serde_json::json!("edited after signing");
    std::fs::write(d.join("manifest.json"), serde_json::to_vec(&m).expect("json")).expect("write");
    lab.run(&["release", "verify", "edited", "--root", "root.json"]).fails(3, "arbitrary-model");

    // A missing blob, malformed JSON, a truncated manifest: clear errors naming the file.
    let d = copy("missing");
    std::fs::remove_file(blob_of(&d, 1, "golden")).expect("rm");
    lab.run(&["release", "verify", "missing", "--root", "root.json"]).fails(1, "is missing");
    let d = copy("malformed");
    std::fs::write(d.join("manifest.json"), "{\"signed\": {").expect("write");
    lab.run(&["release", "verify", "malformed", "--root", "root.json"]).fails(3, "malformed");
    lab.run(&["release", "sign", "malformed", "-k", "a.key"])
        .fails(1, "manifest.json: not a signed edgefleet document");
}

#[test]
fn golden_vectors_on_magika_int8_within_tolerance_and_a_wrong_model_fails() {
    let lab = Lab::new();
    lab.pack_magika("magika-1", "1").ok();
    let r = lab.run(&["--json", "release", "golden", "magika-1", "--variant", "cpu-int8"]).ok().json();
    assert_eq!(r["passed"], true);
    let out = &r["report"]["outputs"][0];
    let err = out["max_abs_error"].as_f64().expect("number");
    assert!(err > 0.0 && err < 0.1, "int8 is close to fp32 but not identical: {err}");
    assert_eq!(out["top1"].as_f64(), Some(1.0));

    // A deliberately wrong model (a weight tensor reversed) is refused at pack time with its numbers...
    let wrong = format!("id=bad,file={},precision=int8", cache("models/magika/model-wrong.onnx").display());
    let fp32 = format!("id=cpu-fp32,file={},precision=fp32", cache("models/magika/model.onnx").display());
    let samples = cache("samples/magika.safetensors");
    let r = lab.run(&[
        "release",
        "pack",
        "--model",
        "magika",
        "--version",
        "2",
        "--variant",
        &fp32,
        "--variant",
        &wrong,
        "--samples",
        samples.to_str().expect("utf-8"),
        "-o",
        "magika-2",
    ]);
    r.fails(1, "variant bad fails its golden vectors");
    assert!(!lab.p("magika-2").exists(), "a failed pack left output behind");
    let leftovers: Vec<_> = std::fs::read_dir(lab.dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".pack-"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

    // ...and, smuggled into a release as the int8 variant's model, fails the golden check a device would run.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.p("magika-1/manifest.json")).expect("read")).expect("json");
    let mut wrong_release = m.clone();
    let z = lab.p("wrong.zst");
    let mut zst = Vec::new();
    let (raw, zref) = model_registry::compress(
        std::fs::File::open(cache("models/magika/model-wrong.onnx")).expect("open"),
        &mut zst,
        3,
        u64::MAX,
    )
    .expect("compress");
    std::fs::write(&z, &zst).expect("write");
    std::fs::copy(&z, lab.p("magika-1/blobs").join(zref.sha256.to_hex())).expect("copy");
    wrong_release["signed"]["variants"][1]["zstd"] = serde_json::to_value(zref).expect("json");
    wrong_release["signed"]["variants"][1]["raw"] = serde_json::to_value(raw).expect("json");
    std::fs::write(lab.p("magika-1/manifest.json"), serde_json::to_vec(&wrong_release).expect("json")).expect("write");
    let r = lab.run(&["--json", "release", "golden", "magika-1", "--variant", "cpu-int8"]);
    assert_eq!(r.code(), Some(1));
    assert!(r.stdout().contains("\"passed\":false"), "{}", r.stdout());
}

#[test]
fn silero_vad_with_state_inputs_packs_with_an_int8_variant() {
    let lab = Lab::new();
    let fp32 = format!("id=cpu-fp32,file={},precision=fp32", cache("models/silero_vad.onnx").display());
    let int8 = format!("id=cpu-int8,file={},precision=int8", cache("models/silero_vad-int8.onnx").display());
    let samples = cache("samples/silero_vad.safetensors");
    let pack = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "--json",
            "release",
            "pack",
            "--model",
            "silero-vad",
            "--version",
            "1",
            "--variant",
            &fp32,
            "--variant",
            &int8,
            "--samples",
            samples.to_str().expect("utf-8"),
            "-o",
            out,
        ];
        args.extend_from_slice(extra);
        lab.run(&args)
    };
    // Quantized, the recurrent state drifts far from fp32's although the speech probability stays close: with
    // default tolerances the pack is refused, naming the output.
    let r = pack("vad-0", &[]);
    assert_eq!(r.code(), Some(1));
    assert!(r.stdout().contains("FAIL stateN"), "{}", r.stdout());
    assert!(r.stdout().contains("ok   output"), "{}", r.stdout());
    // The packer decides that only the probability is the contract.
    let j = pack("vad-1", &["--tolerance", "int8:stateN=skip", "--tolerance", "output=max_abs:0.01"]).ok().json();
    assert_eq!(j["variants"].as_array().map(Vec::len), Some(2));
    lab.run(&["release", "golden", "vad-1", "--variant", "cpu-int8"]).ok();
    // The manifest carries the model's real signature, state input included.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.p("vad-1/manifest.json")).expect("read")).expect("json");
    let inputs: Vec<&str> = m["signed"]["variants"][0]["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| i["name"].as_str().expect("name"))
        .collect();
    assert_eq!(inputs, ["input", "state", "sr"]);
}

#[test]
fn pack_refuses_bad_input_clearly() {
    let lab = Lab::new();
    let samples = cache("samples/magika.safetensors");
    let s = samples.to_str().expect("utf-8");
    let model = cache("models/magika/model.onnx");
    let fp32 = format!("id=cpu-fp32,file={},precision=fp32", model.display());
    lab.run(&[
        "release",
        "pack",
        "--model",
        "../evil",
        "--version",
        "1",
        "--variant",
        &fp32,
        "--samples",
        s,
        "-o",
        "x",
    ])
    .fails(1, "model name");
    lab.run(&["release", "pack", "--model", "m", "--version", "0", "--variant", &fp32, "--samples", s, "-o", "x"])
        .fails(1, "at least 1");
    lab.run(&[
        "release",
        "pack",
        "--model",
        "m",
        "--version",
        "1",
        "--variant",
        "id=a,file=nope.onnx,precision=fp32",
        "--samples",
        s,
        "-o",
        "x",
    ])
    .fails(1, "nope.onnx is not a file");
    std::fs::write(lab.p("trunc.safetensors"), &std::fs::read(&samples).expect("read")[..100]).expect("write");
    lab.run(&[
        "release",
        "pack",
        "--model",
        "m",
        "--version",
        "1",
        "--variant",
        &fp32,
        "--samples",
        "trunc.safetensors",
        "-o",
        "x",
    ])
    .fails(1, "trunc.safetensors");
    std::fs::write(lab.p("garbage.onnx"), b"this is not a model").expect("write");
    lab.run(&[
        "release",
        "pack",
        "--model",
        "m",
        "--version",
        "1",
        "--variant",
        "id=a,file=garbage.onnx,precision=fp32",
        "--samples",
        s,
        "-o",
        "x",
    ])
    .fails(1, "garbage.onnx");
    assert!(!lab.p("x").exists());
    let out = Command::new(env!("CARGO_BIN_EXE_edgefleet"))
        .args(["release", "pack", "--model", "m", "--version", "1", "--variant", &fp32, "--samples", s, "-o", "x"])
        .current_dir(lab.dir.path())
        .env_remove("EDGEFLEET_ORT_LIB")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ONNX Runtime library not given"));
}
