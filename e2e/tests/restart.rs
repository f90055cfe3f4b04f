//! The control plane restarted mid-rollout, on SQLite and on PostgreSQL: the rollout resumes where it was.
//! Two real daemons; a rollout whose first wave is an explicit canary cohort (one device) with a long bake.
//! The server is stopped while the canary runs the new release and the other device the old one, started again
//! on the same database and address, and then: the same state, the same wave, the canary still on the new
//! release, the other device still on the old one after checking in again; an operator's promote completes it.

use std::process::Command;
use std::time::{Duration, Instant};

use edgefleet_e2e::{
    Workdir, classify, daemon_command, eventually, http, server_again, server_and_token, spawn_daemon, x86_server,
};

fn rollout_resumes_after_a_restart(database_url: Option<String>) {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    w.pack_magika("1", "cpu", "model.onnx", "fp32", None);
    w.pack_magika("2", "cpu", "model.onnx", "fp32", None);
    x86_server(&w, "hw");
    let mut config = "rollout_eval_secs = 0.5\n".to_owned();
    if let Some(url) = &database_url {
        config.push_str(&format!("database_url = {url:?}\n"));
    }
    let (server, token) = server_and_token(&w, Some(&config));
    w.edgefleet(&["release", "push", "magika-1"]).ok();
    w.edgefleet(&["release", "push", "magika-2"]).ok();
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();
    let canary_token = w.enroll_token(&["site=lab", "canary=true"]);
    let canary = spawn_daemon(daemon_command(&w, &server, "edge-canary", Some(&canary_token)));
    let other = spawn_daemon(daemon_command(&w, &server, "edge-other", Some(&token)));
    let client = http();
    let on = |d: &edgefleet_e2e::Daemon, release: &'static str, what: &str| {
        eventually(what, Duration::from_secs(90), || classify(&client, d).filter(|(v, _)| v == release));
    };
    on(&canary, "1", "the canary on release 1");
    on(&other, "1", "the other device on release 1");

    let id = w.rollout(&[
        "2",
        "--selector",
        "site=lab",
        "--wave",
        "canary=true:1h",
        "--wave",
        "100:1h",
        "--gate",
        "error-rate=0.5",
        "--min-samples",
        "1000000",
        "--on-failure",
        "pause",
    ]);
    on(&canary, "2", "the canary on release 2");
    let status = |w: &Workdir| w.edgefleet(&["--json", "rollout", "status", &id]).ok().json();
    let before = status(&w);
    assert_eq!(
        (before["state"]["state"].as_str(), before["state"]["wave"].as_u64()),
        (Some("running"), Some(0)),
        "{before}"
    );

    // Stop the control plane and start it again on the same database, at the same address.
    let (data, listen) = (server.data_dir.clone(), server.url.trim_start_matches("https://").to_owned());
    assert!(server.stop().success());
    let restarted_at = Instant::now();
    let server = server_again(&w, &data, &listen);
    let after = status(&w);
    assert_eq!(after["state"], before["state"], "the same state and wave, since the same moment: {after}");
    assert_eq!(after["share_percent"], before["share_percent"]);
    // Both devices check in with the restarted server; the canary keeps release 2, the other device release 1.
    for id in ["edge-canary", "edge-other"] {
        eventually(&format!("{id} checks in again"), Duration::from_secs(60), || {
            let d = w.edgefleet(&["--json", "devices", "show", id]).ok().json();
            let seen = chrono_ms(d["last_seen"].as_str()?)?;
            (seen > now_ms() - restarted_at.elapsed().as_millis() as i64).then_some(())
        });
    }
    assert_eq!(classify(&client, &canary).map(|c| c.0).as_deref(), Some("2"));
    assert_eq!(classify(&client, &other).map(|c| c.0).as_deref(), Some("1"));
    assert_eq!(status(&w)["state"]["state"], "running");

    // An operator promotes after the restart: everyone gets release 2.
    w.edgefleet(&["rollout", "promote", &id]).ok();
    on(&other, "2", "the other device on release 2 after the promote");
    assert_eq!(status(&w)["state"]["state"], "done");
    let audit = w.edgefleet(&["--json", "audit", "--limit", "100"]).ok().json();
    let actions: Vec<&str> = audit
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["target"] == id.as_str())
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"rollout.create") && actions.contains(&"rollout.promote"), "{actions:?}");
    drop((canary, other));
    assert!(server.stop().success());
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64
}

/// Milliseconds since the epoch of an RFC 3339 time as the server writes it (`2026-11-28T00:31:28.641Z`).
fn chrono_ms(t: &str) -> Option<i64> {
    let out = Command::new("date").args(["-u", "-d", t, "+%s%3N"]).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

#[test]
fn on_sqlite() {
    rollout_resumes_after_a_restart(None);
}

#[test]
fn on_postgres() {
    let name = format!("edgefleet_e2e_restart_{}", std::process::id());
    let psql = |sql: &str| {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql (PostgreSQL's client) runs");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    };
    psql(&format!("DROP DATABASE IF EXISTS {name}"));
    psql(&format!("CREATE DATABASE {name}"));
    rollout_resumes_after_a_restart(Some(format!("postgres://postgres@127.0.0.1:5432/{name}")));
    psql(&format!("DROP DATABASE {name} WITH (FORCE)"));
}
