//! The release path end to end over real processes: keys and a root, a real magika release packed and signed
//! with the CLI, `edgefleet-server` started as a process, login pinned to its certificate fingerprint, push,
//! listings, roles, enrollment tokens, assignment, and the audit log telling the story.

use edgefleet_e2e::{ServerProcess, Workdir, cache};

#[test]
fn push_a_signed_release_to_a_real_server_and_operate_it() {
    let w = Workdir::new();
    w.trust(&["alice", "bob"], 2);
    let fp32 = format!("id=cpu-fp32,file={},precision=fp32", cache("models/magika/model.onnx").display());
    let int8 = format!("id=cpu-int8,file={},precision=int8", cache("models/magika/model-int8.onnx").display());
    let samples = cache("samples/magika.safetensors");
    w.edgefleet(&[
        "release",
        "pack",
        "--model",
        "magika",
        "--version",
        "1",
        "--variant",
        &fp32,
        "--variant",
        &int8,
        "--samples",
        samples.to_str().expect("utf-8"),
        "-o",
        "magika-1",
    ])
    .ok();

    let data = w.path("server-data");
    let server = ServerProcess::start(
        &data,
        &[("EDGEFLEET_TRUST_ROOT", &w.path("root.json")), ("EDGEFLEET_FLEET_KEY", &w.path("fleet.key"))],
    );
    assert_eq!(server.fingerprint.len(), 64, "fingerprint {:?}", server.fingerprint);
    let admin = server.token("ci", "admin");
    let admin = admin.as_str();

    // A wrong fingerprint is refused at the TLS layer; the right one logs in.
    let wrong = "0".repeat(64);
    w.edgefleet(&["login", "--server", &server.url, "--token", admin, "--fingerprint", &wrong])
        .fails_with("fingerprint");
    w.edgefleet(&["login", "--server", &server.url, "--token", admin, "--fingerprint", &server.fingerprint]).ok();
    assert_eq!(w.edgefleet(&["--json", "models"]).ok().json(), serde_json::json!([]));

    // Pushing an unsigned release: the blobs go up, the manifest is refused with the server's reason.
    w.edgefleet(&["release", "push", "magika-1"]).fails_with("release_refused");
    w.edgefleet(&["release", "sign", "magika-1", "--key", "alice.key", "--key", "bob.key"]).ok();
    let pushed = w.edgefleet(&["--json", "release", "push", "magika-1"]).ok().json();
    assert_eq!(pushed["uploaded"], 0, "blobs were already uploaded by the refused push: {pushed}");
    assert_eq!(pushed["skipped"], 4);
    let models = w.edgefleet(&["--json", "models"]).ok().json();
    assert_eq!(models[0]["model"], "magika");
    assert_eq!(models[0]["latest_version"], 1);
    w.edgefleet(&["release", "push", "magika-1"]).fails_with("version_not_newer");
    let releases = w.edgefleet(&["releases", "magika"]).ok().stdout();
    assert!(releases.contains("cpu-fp32,cpu-int8"), "{releases}");

    // Operations as the admin: an enrollment token with labels, an assignment, a viewer token.
    let et = w.edgefleet(&["--json", "enroll-token", "create", "--label", "region=eu"]).ok().json();
    assert!(et["token"].as_str().is_some_and(|t| t.starts_with("efe_")));
    w.edgefleet(&["assign", "magika", "1", "--selector", "region=eu"]).ok();
    w.edgefleet(&["assign", "magika", "7"]).fails_with("not_found");
    let viewer = w.edgefleet(&["--json", "tokens", "create", "--name", "sre", "--role", "viewer"]).ok().json();
    let viewer = viewer["token"].as_str().expect("token").to_owned();
    let audit = w.edgefleet(&["--json", "audit"]).ok().json();
    let actions: Vec<&str> = audit.as_array().expect("array").iter().filter_map(|e| e["action"].as_str()).collect();
    for expected in ["release.publish", "enroll_token.create", "assignment.create", "token.create", "blob.upload"] {
        assert!(actions.contains(&expected), "audit lacks {expected}: {actions:?}");
    }

    // A viewer can look but not publish or assign.
    w.edgefleet(&["login", "--server", &server.url, "--token", &viewer, "--fingerprint", &server.fingerprint]).ok();
    w.edgefleet(&["models"]).ok();
    w.edgefleet(&["assign", "magika", "1"]).fails_with("forbidden");
    let devices = w.edgefleet(&["--json", "devices", "list"]).ok().json();
    assert_eq!(devices["devices"], serde_json::json!([]));

    assert!(server.stop().success(), "edgefleet-server did not exit cleanly on SIGTERM");
}
