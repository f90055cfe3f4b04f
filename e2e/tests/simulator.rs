//! The fleet simulator against a real `edgefleet-server` process: a reduced fleet (the full-scale runs are
//! benchmarks) enrolls over the real protocol, checks in, exports metrics and reports events over mutual TLS,
//! while some check-ins are malformed, a foreign CA's certificate knocks, and two devices flood the OTLP
//! receiver. The server refuses exactly those, keeps serving everyone else, and its fleet overview counts
//! every simulated device.

use std::process::Command;

use edgefleet_e2e::{Workdir, bin, server_and_token};

/// Simulated devices here; `scripts/bench_sim.sh` runs the large fleets.
const DEVICES: usize = 300;

#[test]
fn a_simulated_fleet_is_served_and_its_misbehaviour_refused() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    let (server, _) = server_and_token(&w, None);
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
