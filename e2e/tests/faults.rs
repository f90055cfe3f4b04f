//! Network faults between a real daemon and a real server, through the test's own fault-injecting TCP proxy
//! (`edgefleet_e2e::proxy`): connections cut mid-download, a byte flipped on the wire, and connections that
//! stall mid-download (nothing more sent, held open: only the daemon's read timeout, here 5 s, notices). The
//! daemon retries,
//! resumes its download with Range from the bytes it already verified-as-received (it does not start over),
//! and serves the genuine model; nothing corrupt is ever used.

use std::time::Duration;

use edgefleet_e2e::proxy::{Fault, FaultProxy};
use edgefleet_e2e::{
    Workdir, classify, daemon_command_via, eventually, http, server_and_token, spawn_daemon, x86_server,
};

/// Faulty connections per run, and where the fault strikes (bytes from the server into the connection).
const FAULTY: u64 = 4;
const AFTER: u64 = 600_000;

#[test]
fn downloads_survive_cut_corrupted_and_stalled_connections() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    w.pack_magika("1", "cpu", "model.onnx", "fp32", None);
    x86_server(&w, "hw");
    let (server, first_token) = server_and_token(&w, None);
    w.edgefleet(&["release", "push", "magika-1"]).ok();
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path("magika-1/manifest.json")).expect("manifest")).expect("json");
    let variant = &manifest["signed"]["variants"][0];
    let payload = variant["zstd"]["size"].as_u64().expect("size") + variant["golden"]["size"].as_u64().expect("size");
    let upstream = server.url.trim_start_matches("https://").to_owned();
    let client = http();
    for (i, fault) in [Fault::Cut, Fault::Corrupt, Fault::Stall].into_iter().enumerate() {
        let token = if i == 0 {
            first_token.clone()
        } else {
            let t = w.edgefleet(&["--json", "enroll-token", "create", "--label", "site=lab"]).ok().json();
            t["token"].as_str().expect("token").to_owned()
        };
        let proxy = FaultProxy::start(&upstream, fault, AFTER, FAULTY);
        let id = format!("edge-{fault:?}").to_lowercase();
        let mut cmd = daemon_command_via(&w, &server, &proxy.url(), &id, Some(&token));
        cmd.args(["--read-timeout-secs", "5"]);
        let daemon = spawn_daemon(cmd);
        let served = eventually(&format!("{fault:?}: release 1 serving"), Duration::from_secs(120), || {
            classify(&client, &daemon).filter(|(v, _)| v == "1")
        });
        assert_eq!(served.1, "python", "{fault:?}: the genuine model answers");
        assert!(proxy.faults() >= 2, "{fault:?}: the proxy struck {} times", proxy.faults());
        // Resumed, not restarted: what came down through cut or stalled connections is the payload plus little,
        // not a fresh copy per failure. (After a flipped byte the proxy keeps sending into socket buffers until
        // the client hangs up, so its byte count says nothing there.)
        let down = proxy.counts.bytes_down.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            fault == Fault::Corrupt || down < payload + AFTER,
            "{fault:?}: {down} bytes came down for {payload} bytes of blobs after {} faults",
            proxy.faults()
        );
        let kinds = eventually(&format!("{fault:?}: the install reported"), Duration::from_secs(30), || {
            let d = w.edgefleet(&["--json", "devices", "show", &id]).ok().json();
            let kinds: Vec<String> =
                d["events"].as_array()?.iter().filter_map(|e| e["kind"].as_str().map(String::from)).collect();
            kinds.iter().any(|k| k == "committed").then_some(kinds)
        });
        assert!(kinds.iter().any(|k| k == "download_failed"), "{fault:?}: the faults were seen: {kinds:?}");
        assert!(
            !kinds.iter().any(|k| k == "verification_failed"),
            "{fault:?}: nothing corrupt was verified: {kinds:?}"
        );
        drop(daemon);
    }
    assert!(server.stop().success());
}
