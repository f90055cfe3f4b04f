//! The whole lifecycle over real processes: a server and five daemons, each believing it is another device
//! (a Snapdragon phone, a Jetson, a Core Ultra laptop, a Raspberry Pi 5, an x86 server — fixture files from
//! `fixtures/hardware/`), driven only through the CLI and the public APIs.
//!
//! Keys and a root whose release role needs two signatures → magika packed with fp32 and int8 variants per
//! hardware → signed by alice (refused alone) and bob → pushed → assigned → every device gets the variant for
//! its class and answers through its v2 API → telemetry arrives per class (energy where a sensor exists,
//! never where none does) → release 2 rolled out in three waves (an explicit canary cohort, half, all) that
//! advance on the devices' numbers → done, and the audit log tells the story. Then release 3, whose Pi variant
//! was built from the wrong weights, is halted by its install-failure gate on that one class and rolled back
//! while every device keeps serving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgefleet_e2e::{
    Daemon, Fixture, Load, ServerProcess, Workdir, cache, classify, daemon_command_on, eventually, http, rapl_ticking,
    server_and_token, spawn_daemon,
};
use serde_json::Value;

/// The variants of every release, best first: (id, file, precision, requirements), and the class each is for.
const VARIANTS: [(&str, &str, &str, &str, Fixture); 5] = [
    ("hexagon-int8", "model-int8.onnx", "int8", "providers=QNNExecutionProvider", Fixture::HexagonPhone),
    ("openvino-int8", "model-int8.onnx", "int8", "providers=OpenVINOExecutionProvider", Fixture::IntelNpuLaptop),
    (
        "jetson-fp32",
        "model.onnx",
        "fp32",
        "providers=TensorrtExecutionProvider+CUDAExecutionProvider",
        Fixture::JetsonOrin,
    ),
    ("arm-int8", "model-int8.onnx", "int8", "arch=aarch64", Fixture::RaspberryPi5),
    ("cpu-fp32", "model.onnx", "fp32", "", Fixture::X86Server),
];

/// The accelerator each class's variant asks for, which this CPU-only ONNX Runtime lacks.
fn accelerator(f: Fixture) -> Option<&'static str> {
    match f {
        Fixture::HexagonPhone => Some("QNNExecutionProvider"),
        Fixture::IntelNpuLaptop => Some("OpenVINOExecutionProvider"),
        Fixture::JetsonOrin => Some("TensorrtExecutionProvider"),
        Fixture::RaspberryPi5 | Fixture::X86Server => None,
    }
}

fn device_id(f: Fixture) -> String {
    format!("edge-{}", f.class())
}

/// Packs magika release `version` with every variant into `magika-<version>/` (unsigned).
fn pack(w: &Workdir, version: &str, description: &str) {
    let files: Vec<String> = VARIANTS
        .iter()
        .map(|(id, file, precision, req, _)| {
            let mut v =
                format!("id={id},file={},precision={precision}", cache(&format!("models/magika/{file}")).display());
            if !req.is_empty() {
                v = format!("{v},{req}");
            }
            v
        })
        .collect();
    let (samples, reference) = (cache("samples/magika.safetensors"), cache("models/magika/model.onnx"));
    let (samples, reference) = (samples.display().to_string(), reference.display().to_string());
    let out = format!("magika-{version}");
    let mut args = vec!["release", "pack", "--model", "magika", "--version", version, "--description", description];
    for v in &files {
        args.extend(["--variant", v.as_str()]);
    }
    args.extend(["--samples", &samples, "--reference", &reference, "-o", &out]);
    w.edgefleet(&args).ok();
}

/// Release 3: release 2's variants, but the Pi's model blob replaced by a deliberately wrong magika while its
/// golden vectors stay the true ones — what a broken build pipeline could hand over. The packer refuses to
/// make such a variant itself (it checks every variant against the reference), so the manifest is edited
/// before the two engineers sign it, as they would sign whatever their pipeline produced.
fn pack_broken_for_pi(w: &Workdir) {
    pack(w, "3", "release 3: the Pi variant's weights are wrong");
    // The wrong weights, packed on their own (checked against themselves) to get their blob and digests.
    let wrong = cache("models/magika/model-wrong.onnx").display().to_string();
    let samples = cache("samples/magika.safetensors").display().to_string();
    let variant = format!("id=arm-int8,file={wrong},precision=int8,arch=aarch64");
    w.edgefleet(&[
        "release",
        "pack",
        "--model",
        "magika",
        "--version",
        "3",
        "--variant",
        &variant,
        "--samples",
        &samples,
        "--reference",
        &wrong,
        "-o",
        "wrong-weights",
    ])
    .ok();
    let read = |p: &str| -> Value {
        serde_json::from_slice(&std::fs::read(w.path(p)).expect("manifest")).expect("manifest JSON")
    };
    let wrong_variant = read("wrong-weights/manifest.json")["signed"]["variants"][0].clone();
    let mut manifest = read("magika-3/manifest.json");
    let pi = manifest["signed"]["variants"]
        .as_array_mut()
        .and_then(|vs| vs.iter_mut().find(|v| v["id"] == "arm-int8"))
        .expect("the Pi variant");
    for part in ["raw", "zstd"] {
        pi[part] = wrong_variant[part].clone();
    }
    for entry in std::fs::read_dir(w.path("wrong-weights/blobs")).expect("blobs").flatten() {
        std::fs::copy(entry.path(), w.path("magika-3/blobs").join(entry.file_name())).expect("copy blob");
    }
    std::fs::write(w.path("magika-3/manifest.json"), serde_json::to_vec_pretty(&manifest).expect("JSON"))
        .expect("write manifest");
    w.edgefleet(&["release", "sign", "magika-3", "--key", "alice.key", "--key", "bob.key"]).ok();
}

/// A device's served magika: (release, variant, provider, fallbacks as text).
fn served(client: &reqwest::blocking::Client, d: &Daemon) -> Option<(String, String, String, String)> {
    let v: Value = client.get(format!("{}/v2/models/magika", d.url)).send().ok()?.json().ok()?;
    let e = &v["edgefleet"];
    Some((
        e["release"].to_string(),
        e["variant"].as_str()?.to_owned(),
        e["provider"].as_str()?.to_owned(),
        e["fallbacks"].to_string(),
    ))
}

/// Requests reported per (release, class), and whether any window of that pair carried energy.
fn reported(server: &ServerProcess, viewer: &str) -> BTreeMap<(u64, String), (u64, bool)> {
    let mut out = BTreeMap::new();
    let Some(t) = server
        .client()
        .get(format!("{}/api/v1/models/magika/telemetry", server.url))
        .bearer_auth(viewer)
        .send()
        .ok()
        .and_then(|r| r.json::<Value>().ok())
    else {
        return out;
    };
    for win in t["windows"].as_array().into_iter().flatten() {
        let key = (win["release"].as_u64().unwrap_or(0), win["device_class"].as_str().unwrap_or("").to_owned());
        let e: &mut (u64, bool) = out.entry(key).or_default();
        e.0 += win["requests"].as_u64().unwrap_or(0);
        e.1 |= win["joules_per_inference"].is_f64();
    }
    out
}

/// Waits for rollout `id` to reach `state`; fails at once if it ends otherwise, and shows where it stood.
fn rollout_ends(w: &Workdir, id: &str, state: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = w.edgefleet(&["--json", "rollout", "status", id]).ok().json();
        let now = s["state"]["state"].as_str().unwrap_or_default().to_owned();
        if now == state {
            return s;
        }
        assert!(matches!(now.as_str(), "running" | "paused"), "rollout {id} ended {now}: {s}");
        assert!(Instant::now() < deadline, "rollout {id} not {state} within {within:?}: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn five_kinds_of_device_get_their_variant_through_waves_and_a_bad_variant_is_halted() {
    let w = Workdir::new();
    w.trust(&["alice", "bob"], 2);
    pack(&w, "1", "magika standard_v3_3");
    pack(&w, "2", "magika standard_v3_3, release 2");
    for f in Fixture::ALL {
        f.write(&w, &format!("hw-{}", f.class()));
    }
    let config = "rollout_eval_secs = 0.5\ntelemetry_flush_ms = 200\ntelemetry_window_secs = 5\n";
    let (server, _) = server_and_token(&w, Some(config));
    let viewer = server.token("watcher", "viewer");

    // The root needs two release signatures: alice's alone is refused by the server, as by any device.
    w.edgefleet(&["release", "sign", "magika-1", "--key", "alice.key"]).ok();
    w.edgefleet(&["release", "push", "magika-1"])
        .fails_with("signed by 1 valid release key(s) of the trusted root; 2 needed");
    w.edgefleet(&["release", "sign", "magika-1", "--key", "bob.key"]).ok();
    w.edgefleet(&["release", "sign", "magika-2", "--key", "alice.key", "--key", "bob.key"]).ok();
    w.edgefleet(&["release", "push", "magika-1"]).ok();
    w.edgefleet(&["release", "push", "magika-2"]).ok();
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();

    // Five devices, each with its own one-time enrollment token; the phone is the canary.
    let daemons: Vec<(Fixture, Daemon)> = Fixture::ALL
        .into_iter()
        .map(|f| {
            let canary = if f == Fixture::HexagonPhone { &["site=lab", "ring=canary"][..] } else { &["site=lab"] };
            let token = w.enroll_token(canary);
            let id = device_id(f);
            let mut cmd = daemon_command_on(&w, &server, &server.url, &id, Some(&token), &format!("hw-{}", f.class()));
            // The device's own health watch stays on, with room for two shared cores under load.
            cmd.args(["--metrics-interval-secs", "1", "--bake-max-latency-ratio", "10"]);
            (f, spawn_daemon(cmd))
        })
        .collect();

    // Each device runs the variant for its class: the accelerator's provider tried, missing from this ONNX
    // Runtime build, and fallen back from to the CPU — said so, not hidden.
    let client = http();
    for (f, d) in &daemons {
        let want = VARIANTS.iter().find(|v| v.4 == *f).expect("a variant per class").0;
        let (release, variant, provider, fallbacks) =
            eventually(&format!("{} serving release 1", f.class()), Duration::from_secs(120), || {
                served(&client, d).filter(|s| s.0 == "1")
            });
        assert_eq!((release.as_str(), variant.as_str()), ("1", want), "{}", f.class());
        assert_eq!(provider, "CPUExecutionProvider", "{}", f.class());
        if let Some(acc) = accelerator(*f) {
            assert!(fallbacks.contains(acc), "{}: the fallback from {acc} is reported: {fallbacks}", f.class());
        }
        let (_, label) = classify(&client, d).expect("an answer");
        assert_eq!(label, "python", "{} classifies a Python file", f.class());
        let shown = w.edgefleet(&["--json", "devices", "show", &device_id(*f)]).ok().json();
        assert_eq!(shown["hardware"]["device_class"], f.class(), "{shown}");
    }

    // A steady load on every device, bounded in count and time; the laptop's RAPL counter counts meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let rapl = rapl_ticking(&w, &format!("hw-{}", Fixture::IntelNpuLaptop.class()), 12.0, stop.clone());
    // About 100 requests a second in all: enough samples, and room for five daemons on two cores.
    let urls = daemons.iter().map(|(_, d)| d.url.clone()).collect();
    let load = Load::start(urls, Duration::from_millis(10), 200_000, Duration::from_secs(400));

    // Release 1's numbers reach the server from every class before release 2 starts.
    eventually("release 1 reported by every class", Duration::from_secs(120), || {
        let r = reported(&server, &viewer);
        Fixture::ALL.iter().all(|f| r.get(&(1, f.class().to_owned())).is_some_and(|e| e.0 >= 30)).then_some(())
    });

    let id = w.rollout(&[
        "2",
        "--selector",
        "site=lab",
        "--wave",
        "ring=canary:2s",
        "--wave",
        "50:2s",
        "--wave",
        "100:2s",
        "--gate",
        "error-rate=0.05",
        "--gate",
        "p95-ratio=10",
        "--gate",
        "energy-ratio=10",
        "--gate",
        "install-failures=0.2",
        "--min-samples",
        "20",
        "--on-failure",
        "rollback",
    ]);
    rollout_ends(&w, &id, "done", Duration::from_secs(240));
    for (f, d) in &daemons {
        let want = VARIANTS.iter().find(|v| v.4 == *f).expect("variant").0;
        let s = eventually(&format!("{} on release 2", f.class()), Duration::from_secs(90), || {
            served(&client, d).filter(|s| s.0 == "2")
        });
        assert_eq!(s.1, want, "{}", f.class());
    }

    // The audit log tells the story: created, the canary wave judged on the phone alone (every other class
    // not reached yet), advanced twice, done.
    let audit = w.edgefleet(&["--json", "audit", "--target", &id, "--limit", "50"]).ok().json();
    let entries = audit.as_array().cloned().unwrap_or_default();
    let actions: Vec<&str> = entries.iter().rev().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["rollout.create", "rollout.advance", "rollout.advance", "rollout.done"], "{audit}");
    let first_advance = entries.iter().rev().find(|e| e["action"] == "rollout.advance").expect("an advance");
    assert_eq!(first_advance["actor"], "rollout-engine");
    let gates = first_advance["detail"]["gates"].as_array().cloned().unwrap_or_default();
    for g in &gates {
        let want = match (g["class"].as_str(), g["gate"]["kind"].as_str()) {
            (Some("qualcomm-hexagon"), _) => "pass",
            _ => "not_reached",
        };
        assert_eq!(g["verdict"], want, "{g}");
    }
    assert!(gates.iter().any(|g| g["class"] == "qualcomm-hexagon" && g["samples_new"].as_u64() >= Some(20)));
    let done = entries.iter().find(|e| e["action"] == "rollout.done").expect("done");
    let classes: Vec<&str> = done["detail"]["gates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["verdict"] == "pass")
        .filter_map(|g| g["class"].as_str())
        .collect();
    for f in Fixture::ALL {
        assert!(classes.contains(&f.class()), "the last wave judged {}: {done}", f.class());
    }

    // Energy where a sensor exists (battery power, INA3221 rails, RAPL), none where none does (the Pi; the VM).
    let r = reported(&server, &viewer);
    for f in Fixture::ALL {
        let energy = r.get(&(2, f.class().to_owned())).map(|e| e.1);
        let sensor = matches!(f, Fixture::HexagonPhone | Fixture::JetsonOrin | Fixture::IntelNpuLaptop);
        assert_eq!(energy, Some(sensor), "{}: energy reported iff a sensor exists: {r:?}", f.class());
    }

    // Release 3: the Pi variant fails its golden vectors on the Pi, which refuses it and keeps release 2; the
    // install-failure gate on that class rolls the rollout back; every device serves release 2 again.
    pack_broken_for_pi(&w);
    w.edgefleet(&["release", "push", "magika-3"]).ok();
    let bad = w.rollout(&[
        "3",
        "--selector",
        "site=lab",
        "--wave",
        "100:10m",
        "--gate",
        "install-failures=0.2",
        "--on-failure",
        "rollback",
    ]);
    let s = rollout_ends(&w, &bad, "rolled_back", Duration::from_secs(120));
    let reason = s["state"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("install failure ratio on raspberry-pi"), "{s}");
    let pi = w.edgefleet(&["--json", "devices", "show", &device_id(Fixture::RaspberryPi5)]).ok().json();
    let events = pi["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events.iter().any(|e| e["release"] == 3 && e["kind"].as_str().is_some_and(|k| k.contains("fail"))),
        "the Pi reported why it refused release 3: {pi}"
    );
    assert!(!events.iter().any(|e| e["release"] == 3 && e["kind"] == "swapped"), "the Pi never served release 3");
    for (f, d) in &daemons {
        let deadline = Instant::now() + Duration::from_secs(90);
        while classify(&client, d).is_none_or(|(v, label)| v != "2" || label != "python") {
            assert!(
                Instant::now() < deadline,
                "{} not back on release 2 within 90 s: serving {:?}; {}",
                f.class(),
                served(&client, d),
                w.edgefleet(&["--json", "devices", "show", &device_id(*f)]).ok().stdout()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let (answered, failed) = load.finish();
    stop.store(true, Ordering::Relaxed);
    rapl.join().expect("RAPL thread");
    assert!(answered > 0);
    assert_eq!(failed, 0, "requests failed across the swaps");
    drop(daemons);
    assert!(server.stop().success());
}
