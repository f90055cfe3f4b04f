//! A device offline through two releases comes back and converges: it skips release 2 (never served while it
//! was away) and goes straight to release 3, with its identity and committed state from before.

use std::time::Duration;

use edgefleet_e2e::{Workdir, classify, daemon_command, eventually, http, server_and_token, spawn_daemon, x86_server};

#[test]
fn a_device_offline_through_two_releases_converges() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    for v in ["1", "2", "3"] {
        w.pack_magika(v, "cpu", "model.onnx", "fp32", None);
    }
    x86_server(&w, "hw");
    let (server, token) = server_and_token(&w, None);
    for v in ["1", "2", "3"] {
        w.edgefleet(&["release", "push", &format!("magika-{v}")]).ok();
    }
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();
    let client = http();
    let daemon = spawn_daemon(daemon_command(&w, &server, "edge-away", Some(&token)));
    eventually("release 1 serving", Duration::from_secs(90), || classify(&client, &daemon).filter(|(v, _)| v == "1"));
    daemon.kill_9();

    // Two releases while it is away.
    w.edgefleet(&["assign", "magika", "2", "--selector", "site=lab"]).ok();
    w.edgefleet(&["assign", "magika", "3", "--selector", "site=lab"]).ok();
    let back = spawn_daemon(daemon_command(&w, &server, "edge-away", None));
    let served = eventually("back, on release 3", Duration::from_secs(90), || {
        classify(&client, &back).filter(|(v, _)| v == "3")
    });
    assert_eq!(served.1, "python");
    let d = eventually("its events reported", Duration::from_secs(30), || {
        let d = w.edgefleet(&["--json", "devices", "show", "edge-away"]).ok().json();
        let events = d["events"].as_array()?.clone();
        events.iter().any(|e| e["kind"] == "committed" && e["release"] == 3).then_some(events)
    });
    assert!(!d.iter().any(|e| e["release"] == 2), "release 2 was never installed: {d:?}");
    drop(back);
    assert!(server.stop().success());
}
