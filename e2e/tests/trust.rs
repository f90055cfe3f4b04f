//! Root rotation and release-key revocation reaching a running fleet, over real processes: a server, a
//! daemon, the CLI. Root v1 trusts alice and bob (one signature suffices); release 1 is alice's, release 2
//! bob's. While the device runs bob's release 2 in a rollout, the root is rotated to v2 — bob revoked, carol
//! added — and pushed to the control plane. Without a restart the device walks to root v2, the rollout of
//! bob's release is aborted as withdrawn and the device goes back to release 1; a new release of bob's is
//! refused by the server, and bob's release 2 assigned anyway is refused by the device itself, which keeps
//! serving; carol's release 3 is taken.

use std::time::Duration;

use edgefleet_e2e::{Workdir, classify, eventually, http, server_and_token, start_daemon, x86_server};
use serde_json::Value;

fn device(w: &Workdir, id: &str) -> Value {
    w.edgefleet(&["--json", "devices", "show", id]).ok().json()
}

#[test]
fn a_rotated_root_reaches_running_devices_and_a_revoked_key_is_refused() {
    let w = Workdir::new();
    w.trust(&["alice", "bob"], 1);
    w.pack_magika("1", "cpu", "model.onnx", "fp32", None);
    w.pack_magika_signed("2", "cpu", "model.onnx", "fp32", None, &[], "bob");
    x86_server(&w, "hw");
    let (server, token) = server_and_token(&w, Some("rollout_eval_secs = 0.5\n"));
    w.edgefleet(&["release", "push", "magika-1"]).ok();
    w.edgefleet(&["release", "push", "magika-2"]).ok();
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();
    let daemon = start_daemon(&w, &server, "edge-1", Some(&token));
    let client = http();
    let on = |release: &'static str| {
        let (client, daemon) = (&client, &daemon);
        move || classify(client, daemon).filter(|(v, _)| v == release)
    };
    eventually("release 1 serving", Duration::from_secs(90), on("1"));
    eventually("the device reports root v1", Duration::from_secs(30), || {
        (device(&w, "edge-1")["report"]["root_version"] == 1).then_some(())
    });

    // Bob's release 2, rolled out to everyone, with an hour's bake: it stays running until something stops it.
    let rollout = w
        .edgefleet(&["--json", "rollout", "create", "magika", "2", "--selector", "site=lab", "--wave", "100:1h"])
        .ok()
        .json()["id"]
        .as_str()
        .expect("rollout id")
        .to_owned();
    eventually("release 2 serving", Duration::from_secs(90), on("2"));

    // Root v2: bob's key revoked, carol's added; signed by the root key (of v1 and of v2) and pushed.
    w.edgefleet(&["keys", "generate", "-o", "carol.key"]).ok();
    w.edgefleet(&[
        "trust",
        "rotate",
        "--from",
        "root.json",
        "--revoke",
        "bob.pub",
        "--add-release-key",
        "carol.pub",
        "-o",
        "root-2.json",
    ])
    .ok();
    // Unsigned, the server refuses it; signed, it takes it.
    w.edgefleet(&["trust", "push", "root-2.json"]).fails_with("root_refused");
    w.edgefleet(&["trust", "sign", "root-2.json", "--key", "root.key"]).ok();
    w.edgefleet(&["trust", "push", "root-2.json"]).ok();

    // The running device walks to v2 (it says so in its report, and keeps the file), and the rollout of a
    // release no longer signed by a threshold of the root's release keys is aborted: back to release 1.
    eventually("the device reports root v2", Duration::from_secs(60), || {
        (device(&w, "edge-1")["report"]["root_version"] == 2).then_some(())
    });
    let stored: Value =
        serde_json::from_slice(&std::fs::read(w.path("edge-1/trust/root.json")).expect("the device's root"))
            .expect("JSON");
    assert_eq!(stored["signed"]["version"], 2, "the device stored root v2");
    let status = eventually("the rollout aborted", Duration::from_secs(60), || {
        let s = w.edgefleet(&["--json", "rollout", "status", &rollout]).ok().json();
        (s["state"]["state"] == "aborted").then_some(s)
    });
    assert!(status["state"]["reason"].as_str().is_some_and(|r| r.contains("withdrawn")), "{status}");
    eventually("back on release 1", Duration::from_secs(90), on("1"));

    // Bob can no longer publish: the server refuses his release 3.
    w.pack_magika_signed("3", "cpu", "model.onnx", "fp32", None, &[], "bob");
    w.edgefleet(&["release", "push", "magika-3"]).fails_with("is not one of this role's keys");

    // Bob's release 2 is still in the registry from before the rotation; assigned anyway, it reaches the
    // device, which checks it against its own root and refuses the document, and keeps serving release 1.
    w.edgefleet(&["assign", "magika", "2", "--selector", "site=lab"]).ok();
    let refused = eventually("the device refuses bob's release", Duration::from_secs(60), || {
        let d = device(&w, "edge-1");
        let e = d["report"]["last_error"].as_str().unwrap_or_default().to_owned();
        (e.contains("refused")).then_some(e)
    });
    assert!(refused.contains("valid release key(s) of the trusted root"), "{refused}");
    assert_eq!(classify(&client, &daemon).map(|(v, _)| v).as_deref(), Some("1"), "release 1 keeps serving");

    // Carol's key counts under v2: her release 3 is taken by the server and the device.
    w.edgefleet(&["release", "sign", "magika-3", "--key", "carol.key"]).ok();
    w.edgefleet(&["release", "push", "magika-3"]).ok();
    w.edgefleet(&["assign", "magika", "3", "--selector", "site=lab"]).ok();
    eventually("release 3 serving", Duration::from_secs(90), on("3"));

    // The audit log has the rotation and the abort.
    let audit = w.edgefleet(&["--json", "audit", "--limit", "100"]).ok().json();
    let entries = audit.as_array().cloned().unwrap_or_default();
    assert!(entries.iter().any(|e| e["action"] == "trust.root.add" && e["target"] == "2"), "{audit}");
    assert!(entries.iter().any(|e| e["action"] == "rollout.aborted" && e["target"] == rollout.as_str()), "{audit}");
    drop(daemon);
    assert!(server.stop().success());
}
