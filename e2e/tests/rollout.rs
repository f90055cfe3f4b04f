//! A bad release halts itself, over real processes: `edgefleet-server`, the CLI and two `edgefleet-daemon`s
//! exporting OpenTelemetry metrics to the server's OTLP receiver. Release 1 is magika; release 2 is a magika
//! that gives the same answers with about three times the work (genuinely slower, nothing injected). Under a
//! steady request load, a rollout of release 2 with a p95-latency gate moves both devices, the gate fires on
//! the numbers the devices reported, the rollout rolls back, both devices serve release 1 again, and the audit
//! log says why.

use std::time::Duration;

use edgefleet_e2e::{
    Load, Workdir, classify, daemon_command, eventually, http, server_and_token, spawn_daemon, x86_server,
};

#[test]
fn a_slower_release_is_rolled_back_by_its_latency_gate() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    w.pack_magika("1", "cpu", "model.onnx", "fp32", None);
    w.pack_magika("2", "cpu", "model-slow.onnx", "fp32", None);
    x86_server(&w, "hw");
    let config = "rollout_eval_secs = 0.5\ntelemetry_flush_ms = 200\ntelemetry_window_secs = 5\n";
    let (server, token) = server_and_token(&w, Some(config));
    w.edgefleet(&["release", "push", "magika-1"]).ok();
    w.edgefleet(&["release", "push", "magika-2"]).ok();
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();

    // Two devices that export metrics (to the control plane, by default) every second; their own health watch
    // is told to tolerate any latency, so what rolls release 2 back is the fleet's gate, not the device.
    let daemons: Vec<_> = ["edge-a", "edge-b"]
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            // Enrollment tokens are one-time: the second device gets one of its own.
            let token = if i == 0 { token.clone() } else { w.enroll_token(&["site=lab"]) };
            let mut cmd = daemon_command(&w, &server, id, Some(&token));
            cmd.args(["--metrics-interval-secs", "1"]);
            cmd.args(["--bake-max-latency-ratio", "1000"]);
            spawn_daemon(cmd)
        })
        .collect();
    let client = http();
    for d in &daemons {
        eventually("release 1 serving", Duration::from_secs(90), || classify(&client, d).filter(|(v, _)| v == "1"));
    }

    // A steady load on both devices, one request at a time, bounded in count and time.
    let load =
        Load::start(daemons.iter().map(|d| d.url.clone()).collect(), Duration::ZERO, 40_000, Duration::from_secs(240));

    // The baseline's numbers reach the server before the rollout starts.
    let viewer = server.token("t", "viewer");
    let to_server = server.client();
    let prometheus = || -> String {
        to_server
            .get(format!("{}/metrics", server.url))
            .bearer_auth(&viewer)
            .send()
            .ok()
            .and_then(|r| r.text().ok())
            .unwrap_or_default()
    };
    let ok_count = |text: &str, release: &str| -> u64 {
        let prefix = format!(
            "edgefleet_inference_requests_total{{model=\"magika\",release=\"{release}\",device_class=\"x86-server\",outcome=\"ok\"}} "
        );
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64
    };
    eventually("release 1's requests reported", Duration::from_secs(90), || {
        (ok_count(&prometheus(), "1") >= 60).then_some(())
    });

    let id = w.rollout(&[
        "2",
        "--selector",
        "site=lab",
        "--wave",
        "100:10m",
        "--gate",
        "p95-ratio=1.5",
        "--gate",
        "error-rate=0.05",
        "--min-samples",
        "30",
        "--on-failure",
        "rollback",
    ]);

    // The gate fires on what the devices report, and the rollout rolls back.
    let rolled_back = eventually("the latency gate rolls the rollout back", Duration::from_secs(150), || {
        let s = w.edgefleet(&["--json", "rollout", "status", &id]).ok().json();
        (s["state"]["state"] == "rolled_back").then_some(s)
    });
    let reason = rolled_back["state"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("p95 latency ratio on x86-server"), "{rolled_back}");
    let gate = rolled_back["gate_results"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["gate"]["kind"] == "p95_latency_ratio" && g["verdict"] == "fail"))
        .expect("the failed gate with its numbers")
        .clone();
    assert!(gate["value"].as_f64().expect("value") > 1.5, "{gate}");
    assert!(gate["samples_new"].as_u64().expect("samples") >= 30, "{gate}");
    assert!(ok_count(&prometheus(), "2") > 0, "release 2 served requests that were reported");

    // Both devices go back to release 1 and keep serving.
    for d in &daemons {
        eventually("back on release 1", Duration::from_secs(90), || classify(&client, d).filter(|(v, _)| v == "1"));
    }
    let (answered, failed) = load.finish();
    // Both devices had swapped release 2 in (the wave is 100 %), and no request failed across both swaps.
    for id in ["edge-a", "edge-b"] {
        eventually("the swap to release 2 reported", Duration::from_secs(30), || {
            let d = w.edgefleet(&["--json", "devices", "show", id]).ok().json();
            d["events"].as_array()?.iter().any(|e| e["kind"] == "swapped" && e["release"] == 2).then_some(())
        });
    }
    assert!(answered > 0);
    assert_eq!(failed, 0, "requests failed during the swaps");

    // The audit log tells the story, with the numbers.
    let audit = w.edgefleet(&["--json", "audit", "--limit", "200"]).ok().json();
    let entries = audit.as_array().cloned().unwrap_or_default();
    let entry = entries.iter().find(|e| e["action"] == "rollout.rolled_back").expect("a rolled_back entry");
    assert_eq!(entry["actor"], "rollout-engine");
    assert!(entry["detail"]["gates"].as_array().is_some_and(|g| g.iter().any(|g| g["verdict"] == "fail")), "{entry}");
    assert!(entries.iter().any(|e| e["action"] == "rollout.create" && e["target"] == id.as_str()));
    let text = w.edgefleet(&["rollout", "status", &id]).ok().stdout();
    assert!(text.contains("rolled back") && text.contains("FAIL"), "{text}");
    drop(daemons);
    assert!(server.stop().success());
}
