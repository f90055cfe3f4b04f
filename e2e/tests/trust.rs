//! Root rotation and release-key revocation reaching a running fleet, over real processes: a server, a
//! daemon, the CLI. Root v1 trusts alice and bob (one signature suffices); release 1 is alice's, release 2
//! bob's. While the device runs bob's release 2 in a rollout, the root is rotated to v2 — bob revoked, carol
//! added. A second device provisioned with root v2 before the control plane has it refuses bob's release
//! itself. Pushed to the control plane, the root reaches the first device without a restart, the rollout of
//! bob's release is aborted as withdrawn and the device goes back to release 1; a new release of bob's is
//! refused by the server, and so is assigning bob's old one; carol's release 3 is taken by both devices.

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
    let rollout = w.rollout(&["2", "--selector", "site=lab", "--wave", "100:1h"]);
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
    // Unsigned, the server refuses it.
    w.edgefleet(&["trust", "push", "root-2.json"]).fails_with("root_refused");
    w.edgefleet(&["trust", "sign", "root-2.json", "--key", "root.key"]).ok();

    // A second device, provisioned with root v2 before the control plane has it: the server (still on v1)
    // offers it bob's release 2, and the device itself refuses the document — what protects a fleet from a
    // control plane that is behind, or compromised. It serves nothing, and says why.
    std::fs::create_dir_all(w.path("edge-2/trust")).expect("mkdir");
    std::fs::copy(w.path("root-2.json"), w.path("edge-2/trust/root.json")).expect("provision root v2");
    let second = start_daemon(&w, &server, "edge-2", Some(&w.enroll_token(&["site=lab"])));
    let refused = eventually("the v2 device refuses bob's release", Duration::from_secs(60), || {
        let e = device(&w, "edge-2")["report"]["last_error"].as_str().unwrap_or_default().to_owned();
        e.contains("refused").then_some(e)
    });
    assert!(refused.contains("valid release key(s) of the trusted root"), "{refused}");
    assert!(classify(&client, &second).is_none(), "the v2 device serves nothing it does not trust");

    // Signed, the server takes it.
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

    // Bob's release 2 is still in the registry from before the rotation, but the server will not hand it out.
    w.edgefleet(&["assign", "magika", "2", "--selector", "site=lab"]).fails_with("release_untrusted");
    // The v2 device, refused nothing now, runs alice's release 1.
    eventually("the v2 device on release 1", Duration::from_secs(90), || {
        classify(&client, &second).filter(|(v, _)| v == "1")
    });

    // Carol's key counts under v2: her release 3 is taken by the server and the device.
    w.edgefleet(&["release", "sign", "magika-3", "--key", "carol.key"]).ok();
    w.edgefleet(&["release", "push", "magika-3"]).ok();
    w.edgefleet(&["assign", "magika", "3", "--selector", "site=lab"]).ok();
    eventually("release 3 serving", Duration::from_secs(90), on("3"));
    eventually("release 3 serving on the v2 device", Duration::from_secs(90), || {
        classify(&client, &second).filter(|(v, _)| v == "3")
    });

    // The audit log has the rotation and the abort.
    let audit = w.edgefleet(&["--json", "audit", "--limit", "100"]).ok().json();
    let entries = audit.as_array().cloned().unwrap_or_default();
    assert!(entries.iter().any(|e| e["action"] == "trust.root.add" && e["target"] == "2"), "{audit}");
    assert!(entries.iter().any(|e| e["action"] == "rollout.aborted" && e["target"] == rollout.as_str()), "{audit}");
    drop((daemon, second));
    assert!(server.stop().success());
}
