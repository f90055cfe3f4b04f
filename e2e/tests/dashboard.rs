//! The built-in web dashboard in a real browser: Debian's headless Chromium, driven by playwright-core
//! (`dashboards/web/tests/browser.mjs`), against a real `edgefleet-server` and a real `edgefleet-daemon`.
//! The browser script asks for what it needs on stdout (`need: fleet`, `need: stop-server`, ...) and this test
//! does it with the CLI and real processes, then answers on the script's stdin.
//!
//! What it shows: a bad token is refused with a clear message; an empty fleet says so; a device that checked
//! in appears in the fleet table; a device without a power sensor shows "no sensor", not zero; HTML in a
//! release description or a token's name is shown as text and never runs; an expired token is refused saying so; a rollout whose gate failed shows that gate with its
//! numbers; a viewer is offered no pause button, and an operator's pause takes effect on the server; the
//! server going away and coming back; a revoked token. Screenshots of each page land in
//! `build/screenshots/dashboard/`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgefleet_e2e::{
    ServerProcess, Workdir, classify, daemon_command, eventually, http, magika_features, repo, server_again,
    server_and_token, spawn_daemon, spawn_with_stdout, x86_server,
};

/// How long the whole browser run may take (each of its waits is bounded on its own, too).
const BROWSER_RUN: Duration = Duration::from_secs(600);

#[test]
fn the_dashboard_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let web = repo().join("dashboards/web");
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: scripts/setup.sh installs Debian's chromium");
    assert!(
        web.join("node_modules/playwright-core").exists(),
        "run scripts/setup.sh: it installs the dashboard's npm packages"
    );

    let w = Workdir::new();
    w.trust(&["alice"], 1);
    w.pack_magika("1", "cpu", "model.onnx", "fp32", None);
    // Release 2 gives magika's answers with about three times the work: genuinely slower.
    w.pack_magika("2", "cpu", "model-slow.onnx", "fp32", None);
    let html =
        r#"Same as release 1. <img src=x onerror="window.__owned=1;alert('owned')"><script>window.__owned=2</script>"#;
    w.pack_magika_with("3", "cpu", "model.onnx", "fp32", None, &["--description", html]);
    x86_server(&w, "hw");
    let config = "rollout_eval_secs = 0.5\ntelemetry_flush_ms = 200\ntelemetry_window_secs = 5\n";
    let (server, enroll) = server_and_token(&w, Some(config));
    let data = server.data_dir.clone();
    let listen = server.url.trim_start_matches("https://").to_owned();
    // A name with HTML in it, shown as text in the page's header.
    let (viewer, operator) = (server.token("sre<b>on-call</b>", "viewer"), server.token("release-captain", "operator"));
    let shift =
        w.edgefleet(&["--json", "tokens", "create", "--name", "shift", "--role", "viewer", "--expires-in-secs", "1"]);
    let expiring = shift.ok().json()["token"].as_str().expect("token").to_owned();
    let shots = repo().join("build/screenshots/dashboard");
    let _ = std::fs::remove_dir_all(&shots);

    let mut cmd = Command::new("node");
    cmd.arg(web.join("tests/browser.mjs"))
        .current_dir(&web)
        .env("EDGEFLEET_URL", &server.url)
        .env("EDGEFLEET_VIEWER_TOKEN", &viewer)
        .env("EDGEFLEET_OPERATOR_TOKEN", &operator)
        .env("EDGEFLEET_EXPIRING_TOKEN", &expiring)
        .env("EDGEFLEET_SCREENSHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped());
    let (mut browser, lines) = spawn_with_stdout(cmd);
    let mut answer = browser.stdin.take().expect("the browser script's stdin");
    let mut server = Some(server);
    let mut daemons = Vec::new();
    let deadline = Instant::now() + BROWSER_RUN;
    let mut passed = false;
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        println!("{line}");
        if line == "browser: all passed" {
            passed = true;
        }
        let Some(what) = line.strip_prefix("need: ") else { continue };
        let reply = match what.split_once(' ').unwrap_or((what, "")) {
            ("fleet", _) => {
                let s = server.as_ref().expect("the server runs");
                fleet(&w, s, &enroll, &viewer, &mut daemons)
            }
            ("paused", id) => {
                let status = w.edgefleet(&["--json", "rollout", "status", id]).ok().json();
                assert_eq!(status["state"]["state"], "paused", "the operator's pause reached the server: {status}");
                let audit = w.edgefleet(&["--json", "audit", "--limit", "50"]).ok().json();
                let by = audit.as_array().and_then(|a| {
                    a.iter().find(|e| e["action"] == "rollout.pause" && e["target"] == id).map(|e| e["actor"].clone())
                });
                assert_eq!(
                    by,
                    Some("token:release-captain (operator)".into()),
                    "the pause is audited as the operator's"
                );
                serde_json::json!({})
            }
            ("stop-server", _) => {
                assert!(server.take().expect("the server runs").stop().success());
                serde_json::json!({})
            }
            ("start-server", _) => {
                server = Some(server_again(&w, &data, &listen));
                serde_json::json!({})
            }
            ("revoke-operator", _) => {
                let tokens = w.edgefleet(&["--json", "tokens", "list"]).ok().json();
                let id = tokens
                    .as_array()
                    .and_then(|t| t.iter().find(|t| t["name"] == "release-captain"))
                    .and_then(|t| t["id"].as_i64())
                    .expect("the operator token's id");
                w.edgefleet(&["tokens", "revoke", &id.to_string()]).ok();
                serde_json::json!({})
            }
            (other, _) => panic!("the browser script asked for {other:?}"),
        };
        writeln!(answer, "done {reply}").expect("answer the browser script");
    }
    let status = browser.wait().expect("the browser script exits");
    assert!(
        passed && status.success(),
        "the browser tests failed (see the lines above; a screenshot is in {})",
        shots.display()
    );
    for page in
        ["01-signin-refused", "03-fleet", "04-device", "05-releases", "07-rollout-failed-gate", "08-latency-energy"]
    {
        assert!(shots.join(format!("{page}.png")).exists(), "screenshot {page}");
    }
    drop(daemons);
    if let Some(s) = server {
        assert!(s.stop().success());
    }
}

/// A demo fleet: releases 1-3 pushed, a device serving release 1, a rollout of release 2 (genuinely slower)
/// rolled back by its p95-latency gate under a steady load, and a running rollout of release 3. Answers the
/// device's id, the two rollouts' ids and the failed gate's measured value as the page shows it.
fn fleet(
    w: &Workdir,
    server: &ServerProcess,
    enroll: &str,
    viewer: &str,
    daemons: &mut Vec<edgefleet_e2e::Daemon>,
) -> serde_json::Value {
    for v in ["1", "2", "3"] {
        w.edgefleet(&["release", "push", &format!("magika-{v}")]).ok();
    }
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();
    let mut cmd = daemon_command(w, server, "edge-a", Some(enroll));
    // The device's own health watch tolerates any latency: what rolls release 2 back is the fleet's gate.
    cmd.args(["--metrics-interval-secs", "1", "--bake-max-latency-ratio", "1000"]);
    let daemon = spawn_daemon(cmd);
    let client = http();
    eventually("release 1 serving", Duration::from_secs(90), || classify(&client, &daemon).filter(|(v, _)| v == "1"));
    let body = serde_json::json!({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32",
        "data": magika_features(edgefleet_e2e::PYTHON_SOURCE)}]});
    let infer = || {
        let r = client.post(format!("{}/v2/models/magika/infer", daemon.url)).json(&body).send().expect("infer");
        assert_eq!(r.status(), 200, "a request failed");
    };
    // The baseline's numbers reach the server (through the JSON API the dashboard charts from).
    let to_server = server.client();
    let reported = |release: u64| -> u64 {
        let t: serde_json::Value = to_server
            .get(format!("{}/api/v1/models/magika/telemetry", server.url))
            .bearer_auth(viewer)
            .send()
            .and_then(|r| r.json())
            .unwrap_or_default();
        let windows = t["windows"].as_array().cloned().unwrap_or_default();
        windows.iter().filter(|w| w["release"] == release).filter_map(|w| w["requests"].as_u64()).sum()
    };
    for _ in 0..60 {
        infer();
    }
    eventually("release 1's requests reported", Duration::from_secs(60), || (reported(1) >= 60).then_some(()));

    let start = |release: &str, waves: &[&str]| -> String {
        let mut args = vec![release, "--selector", "site=lab"];
        for wave in waves {
            args.extend(["--wave", wave]);
        }
        args.extend(["--gate", "p95-ratio=1.5", "--gate", "error-rate=0.05", "--min-samples", "30"]);
        args.extend(["--on-failure", "rollback"]);
        w.rollout(&args)
    };
    let failed = start("2", &["100:10m"]);
    // A steady load, one request at a time, until the gate has judged (bounded in count and time).
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut rolled_back = None;
    for i in 0..20_000 {
        infer();
        if i % 20 == 0 {
            let s = w.edgefleet(&["--json", "rollout", "status", &failed]).ok().json();
            if s["state"]["state"] == "rolled_back" {
                rolled_back = Some(s);
                break;
            }
        }
        assert!(Instant::now() < deadline, "the p95 gate did not roll release 2 back within 180 s");
    }
    let rolled_back = rolled_back.expect("rolled back within 20,000 requests");
    let gate = rolled_back["gate_results"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["verdict"] == "fail"))
        .expect("the failed gate")
        .clone();
    let value = format!("{:.3}", gate["value"].as_f64().expect("a measured value"));
    eventually("release 1 serving again", Duration::from_secs(90), || {
        classify(&client, &daemon).filter(|(v, _)| v == "1")
    });
    let running = start("3", &["50:10m", "100:10m"]);
    daemons.push(daemon);
    serde_json::json!({"device": "edge-a", "failed": failed, "running": running, "value": value})
}
