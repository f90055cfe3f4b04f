//! Certificate renewal over real processes: a daemon told to renew its certificate at every pass (the hidden
//! `--renew-when-days-left` hook, set above the certificates' lifetime) gets a new one from the real server
//! again and again — the server's audit log has each renewal, the certificate on disk changes, the key stays
//! 0600 — and its check-ins keep working on each new certificate: a release assigned meanwhile is installed and
//! served.

use std::time::Duration;

use edgefleet_e2e::{Workdir, classify, daemon_command, eventually, http, server_and_token, spawn_daemon, x86_server};

#[test]
fn a_daemon_renews_its_certificate_and_keeps_working() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    w.pack_magika("1", "cpu", "model.onnx", "fp32", None);
    w.pack_magika("2", "cpu", "model-int8.onnx", "fp32", None);
    x86_server(&w, "hw");
    let (server, token) = server_and_token(&w, None);
    for r in ["magika-1", "magika-2"] {
        w.edgefleet(&["release", "push", r]).ok();
    }
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();
    let mut cmd = daemon_command(&w, &server, "edge-1", Some(&token));
    cmd.args(["--renew-when-days-left", "100000"]);
    let daemon = spawn_daemon(cmd);
    let client = http();
    eventually("release 1 serving", Duration::from_secs(90), || classify(&client, &daemon).filter(|(v, _)| v == "1"));
    let renewals = || -> usize {
        let audit = w.edgefleet(&["--json", "audit", "--limit", "200"]).ok().json();
        audit
            .as_array()
            .map(|a| a.iter().filter(|e| e["action"] == "device.renew" && e["target"] == "edge-1").count())
            .unwrap_or(0)
    };
    eventually("two renewals", Duration::from_secs(60), || (renewals() >= 2).then_some(()));
    let cert = std::fs::read_to_string(w.path("edge-1/identity/device.crt")).expect("the device's certificate");
    // Check-ins on the renewed certificates still work: release 2 is taken and served.
    w.edgefleet(&["assign", "magika", "2", "--selector", "site=lab"]).ok();
    eventually("release 2 serving", Duration::from_secs(90), || classify(&client, &daemon).filter(|(v, _)| v == "2"));
    // And it goes on renewing: a later certificate replaces the one read before.
    let n = renewals();
    eventually("another renewal", Duration::from_secs(60), || (renewals() > n).then_some(()));
    eventually("a new certificate on disk", Duration::from_secs(10), || {
        let later = std::fs::read_to_string(w.path("edge-1/identity/device.crt")).ok()?;
        (later != cert).then_some(())
    });
    let key = std::fs::metadata(w.path("edge-1/identity/device.key")).expect("key");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777, 0o600);
    drop(daemon);
    assert!(server.stop().success());
}
