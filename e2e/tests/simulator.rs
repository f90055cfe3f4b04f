//! The fleet simulator against a real `edgefleet-server` process: a reduced fleet (the full-scale runs are
//! benchmarks) enrolls over the real protocol, checks in, exports metrics and reports events over mutual TLS,
//! while some check-ins are malformed, a foreign CA's certificate knocks, and two devices flood the OTLP
//! receiver. The server refuses exactly those, keeps serving everyone else, and its fleet overview counts
//! every simulated device.

use std::process::Command;

use edgefleet_e2e::{Workdir, bin, server_and_token};

/// The server's per-device check-in limit and per-address enrollment limit, lifted: the simulator's devices
/// check in far more often than a device does (each session is a burst of check-ins on one device), and hundreds
/// of them enroll from one address in a second.
const SIMULATED: &str =
    "checkins_per_sec = 1e9\ncheckin_burst = 1e9\nenrollments_per_sec = 1e9\nenrollment_burst = 1e9\n";

/// Simulated devices here; `scripts/bench_sim.sh` runs the large fleets.
const DEVICES: usize = 300;

#[test]
fn a_simulated_fleet_is_served_and_its_misbehaviour_refused() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    let (server, _) = server_and_token(&w, Some(SIMULATED));
    let operator = server.token("sim", "operator");
    let out = Command::new(bin("edgefleet-sim"))
        .args(["--server", &server.url, "--server-ca"])
        .arg(server.data_dir.join("tls/server.crt"))
        .args(["--token", &operator, "--devices", &DEVICES.to_string(), "--concurrency", "8"])
        .args(["--duration-secs", "8", "--max-requests", "50000", "--malformed-rate", "0.02"])
        .args(["--bad-cert-attempts", "5", "--flood-devices", "2", "--json"])
        .output()
        .expect("run edgefleet-sim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the summary as JSON");
    let n = |k: &str| s["outcomes"][k].as_u64().unwrap_or(0);
    assert_eq!(s["devices"], DEVICES, "{s}");
    assert_eq!(s["unexpected"], 0, "{s}");
    assert!(n("check-in 200 (new document)") >= 1 && n("check-in 304 (unchanged)") > 100, "{s}");
    assert!(n("check-in refused 400 malformed_json (malformed, as sent)") > 0, "{s}");
    assert_eq!(n("bad certificate: refused at the TLS handshake"), 5, "{s}");
    assert!(n("flood: OTLP export refused 429 (rate limited)") > 0, "{s}");
    assert!(n("OTLP export 200") > 0 && n("event 200") > 0, "{s}");
    assert!(s["latency"]["check-in"]["p99_ms"].as_f64().is_some(), "{s}");

    // The server counts every simulated device, and what the refusals were, in its own metrics.
    let client = server.client();
    let viewer = server.token("v", "viewer");
    let fleet: serde_json::Value = client
        .get(format!("{}/api/v1/fleet", server.url))
        .bearer_auth(&viewer)
        .send()
        .and_then(|r| r.json())
        .expect("fleet");
    assert_eq!(fleet["devices"], DEVICES, "{fleet}");
    let text = client
        .get(format!("{}/metrics", server.url))
        .bearer_auth(&viewer)
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    assert!(text.lines().any(|l| l.starts_with("edgefleet_otlp_") && l.contains("rate_limited")), "{text}");
    assert!(server.stop().success());
}

/// Convergence: every simulated device holds a long-poll with its document's ETag; a release assigned to the
/// fleet reaches every one of them as a new signed document, and the run says how long that took.
#[test]
fn a_simulated_fleet_converges_on_an_assignment() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    w.pack_magika("1", "cpu", "model.onnx", "fp32", None);
    let (server, _) = server_and_token(&w, Some(SIMULATED));
    w.edgefleet(&["release", "push", "magika-1"]).ok();
    let operator = server.token("sim", "operator");
    let identities = w.path("identities.jsonl");
    let converge = |secs: &str, wait: &str| -> (bool, serde_json::Value) {
        let out = Command::new(bin("edgefleet-sim"))
            .args(["--server", &server.url, "--server-ca"])
            .arg(server.data_dir.join("tls/server.crt"))
            .args(["--token", &operator, "--devices", "200", "--concurrency", "16", "--duration-secs", secs])
            .args(["--converge-to", "magika:1", "--converge-wait-secs", wait, "--json", "--identities"])
            .arg(&identities)
            .output()
            .expect("run edgefleet-sim");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("no JSON summary ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), summary)
    };
    let (ok, s) = converge("60", "5");
    assert!(ok, "{s}");
    assert_eq!(s["converged"], 200, "{s}");
    assert_eq!(s["outcomes"]["converge: new document received"], 200, "{s}");
    assert!(s["to_99_percent_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{s}");
    // The same fleet again: the release is assigned already, so no document changes and nobody converges — the
    // run says so and fails, rather than timing what did not happen.
    let (ok, s) = converge("8", "2");
    assert!(!ok, "{s}");
    assert_eq!(s["converged"], 0, "{s}");
    assert!(server.stop().success());
}
