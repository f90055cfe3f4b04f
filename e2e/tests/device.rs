//! A device end to end, over real processes: `edgefleet-server`, the CLI, and `edgefleet-daemon` on an x86
//! server hardware fixture. A release is pushed and assigned; the daemon enrolls, installs it through its
//! verified pipeline and serves it over the v2 API; a second release swaps in; a third whose blob was corrupted
//! in the server's store is refused while the second keeps serving; killed with SIGKILL, the daemon comes back
//! serving what it had committed. A second device is killed with SIGKILL at three points of an install (mid
//! download, mid decompression, right after the rename into its slot): each restart serves the committed
//! release, resumes the download, never loads a half-written file, and finally installs the new release.

use std::process::Command;
use std::time::Duration;

use edgefleet_e2e::{
    Daemon, ServerProcess, Workdir, bin, cache, classify, daemon_command, eventually, http, server_and_token,
    spawn_daemon, start_daemon, x86_server,
};

/// The same daemon configured by a TOML file alone.
fn start_daemon_from_config(w: &Workdir, server: &ServerProcess) -> Daemon {
    let config = format!(
        "server = {:?}\nserver_ca = {:?}\ndata_dir = {:?}\ntrust_root = {:?}\ndevice_id = \"edge-1\"\n\
         ort_lib = {:?}\nlisten = \"127.0.0.1:0\"\nwait = 2\nbake_secs = 1\nhardware_root = {:?}\n",
        server.url,
        server.data_dir.join("tls/server.crt"),
        w.path("edge-1"),
        w.path("root.json"),
        cache("lib/libonnxruntime.so.1.31.1"),
        w.path("hw"),
    );
    std::fs::write(w.path("device.toml"), config).expect("config");
    let mut cmd = Command::new(bin("edgefleet-daemon"));
    cmd.arg("run").arg("--config").arg(w.path("device.toml")).env("RUST_LOG", "warn");
    spawn_daemon(cmd)
}

#[test]
fn a_daemon_installs_serves_swaps_refuses_and_survives_kill_9() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    w.pack_magika("1", "cpu-fp32", "model.onnx", "fp32", None);
    w.pack_magika("2", "cpu-int8", "model-int8.onnx", "int8", Some("model.onnx"));
    w.pack_magika("3", "cpu-int8", "model-int8.onnx", "int8", Some("model.onnx"));
    x86_server(&w, "hw");
    let data = w.path("server-data");
    let (server, token) = server_and_token(&w, None);
    w.edgefleet(&["release", "push", "magika-1"]).ok();
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();

    // Enroll, install release 1, serve it: magika says the Python file is Python.
    let client = http();
    let daemon = start_daemon(&w, &server, "edge-1", Some(&token));
    let (version, label) = eventually("release 1 serving", Duration::from_secs(90), || classify(&client, &daemon));
    assert_eq!((version.as_str(), label.as_str()), ("1", "python"));
    let device = w.edgefleet(&["--json", "devices", "show", "edge-1"]).ok().json();
    assert_eq!(device["device_class"], "x86-server");
    assert_eq!(device["labels"]["site"], "lab");

    // Release 2 (int8) swaps in.
    w.edgefleet(&["release", "push", "magika-2"]).ok();
    w.edgefleet(&["assign", "magika", "2", "--selector", "site=lab"]).ok();
    eventually("release 2 serving", Duration::from_secs(90), || classify(&client, &daemon).filter(|(v, _)| v == "2"));

    // Release 3 with its model blob corrupted in the server's store: refused, release 2 keeps serving.
    w.edgefleet(&["release", "push", "magika-3"]).ok();
    let m3: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path("magika-3/manifest.json")).expect("manifest")).expect("json");
    let sha = m3["signed"]["variants"][0]["zstd"]["sha256"].as_str().expect("sha").to_owned();
    let blob = data.join("blobs/sha256").join(&sha[..2]).join(&sha);
    let mut bytes = std::fs::read(&blob).expect("stored blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, &bytes).expect("corrupt");
    w.edgefleet(&["assign", "magika", "3", "--selector", "site=lab"]).ok();
    eventually("the refusal reported", Duration::from_secs(90), || {
        let d = w.edgefleet(&["--json", "devices", "show", "edge-1"]).json();
        d["events"].as_array()?.iter().find(|e| e["kind"] == "verification_failed" && e["release"] == 3).cloned()
    });
    let (version, label) = classify(&client, &daemon).expect("still serving");
    assert_eq!((version.as_str(), label.as_str()), ("2", "python"));
    let status = status(&w);
    assert_eq!(status["committed"]["magika"]["release"], 2);
    assert!(status["last_error"].as_str().is_some_and(|e| e.contains("not the signed")), "{status}");

    // kill -9, restart (no token needed now, configured by a TOML file): the committed release 2 serves again.
    daemon.kill_9();
    let daemon = start_daemon_from_config(&w, &server);
    let (version, _) = eventually("release 2 after restart", Duration::from_secs(60), || classify(&client, &daemon));
    assert_eq!(version, "2");
    drop(daemon);
    assert!(server.stop().success());
}

/// `edgefleet-daemon status --json` of the device in `w`.
fn status(w: &Workdir) -> serde_json::Value {
    let out = Command::new(bin("edgefleet-daemon"))
        .args(["status", "--json", "--data-dir"])
        .arg(w.path("edge-1"))
        .output()
        .expect("status");
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// The daemon paused (by `EDGEFLEET_PAUSE_AT`) at `point` of installing release 2, its log in `log`.
fn paused_daemon(w: &Workdir, server: &ServerProcess, point: &str, log: &str) -> Daemon {
    let mut cmd = daemon_command(w, server, "edge-1", None);
    cmd.env("EDGEFLEET_PAUSE_AT", point)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(w.path(log)).expect("log file"));
    let daemon = spawn_daemon(cmd);
    daemon.paused_at(point);
    daemon
}

fn temporary_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kill_9_mid_download_mid_decompression_and_after_the_rename() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    w.pack_magika("1", "cpu", "model-int8.onnx", "fp32", None);
    w.pack_magika("2", "cpu", "model.onnx", "fp32", None);
    x86_server(&w, "hw");
    let (server, token) = server_and_token(&w, None);
    w.edgefleet(&["release", "push", "magika-1"]).ok();
    w.edgefleet(&["release", "push", "magika-2"]).ok();
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();
    let client = http();
    let daemon = start_daemon(&w, &server, "edge-1", Some(&token));
    eventually("release 1 serving", Duration::from_secs(90), || classify(&client, &daemon).filter(|(v, _)| v == "1"));
    // Serving is not committed: a kill during the bake window would bring back nothing. Wait for the commit.
    eventually("release 1 committed", Duration::from_secs(30), || {
        (status(&w)["committed"]["magika"]["release"] == 1).then_some(())
    });
    daemon.kill_9();
    w.edgefleet(&["assign", "magika", "2", "--selector", "site=lab"]).ok();
    let m2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path("magika-2/manifest.json")).expect("manifest")).expect("json");
    let zstd = &m2["signed"]["variants"][0]["zstd"];
    let (sha, size) = (zstd["sha256"].as_str().expect("sha"), zstd["size"].as_u64().expect("size"));
    let raw_size = m2["signed"]["variants"][0]["raw"]["size"].as_u64().expect("raw size");
    let partial = w.path(&format!("edge-1/downloads/{sha}.partial"));
    let slot_b = w.path("edge-1/models/magika/b");

    // 1. Killed mid download: a partial file is on disk; release 1 served all along.
    let daemon = paused_daemon(&w, &server, "download", "log-1");
    assert_eq!(classify(&client, &daemon).expect("serving while paused").0, "1");
    let had = std::fs::metadata(&partial).expect("partial").len();
    assert!(had > 0 && had < size, "partial of {had} bytes of {size}");
    daemon.kill_9();

    // 2. Restarted: release 1 serves at once, the download resumes from the partial; killed mid decompression,
    //    where the slot holds only a temporary file.
    let daemon = paused_daemon(&w, &server, "decompress", "log-2");
    assert_eq!(classify(&client, &daemon).expect("serving while paused").0, "1");
    let log = std::fs::read_to_string(w.path("log-2")).expect("log");
    assert!(log.contains("resuming a partial download") && log.contains(&format!("have={had}")), "had {had}: {log}");
    assert!(!slot_b.join("model.onnx").exists(), "a model file in slot b before its decompression finished");
    assert_eq!(temporary_files(&slot_b).len(), 1, "the half-written temporary file");
    daemon.kill_9();

    // 3. Restarted: the half-written file is removed, never loaded; killed right after the rename, before the
    //    new model is loaded or committed.
    let daemon = paused_daemon(&w, &server, "renamed", "log-3");
    assert_eq!(classify(&client, &daemon).expect("serving while paused").0, "1");
    assert_eq!(std::fs::metadata(slot_b.join("model.onnx")).expect("renamed").len(), raw_size);
    assert!(temporary_files(&slot_b).is_empty(), "{:?}", temporary_files(&slot_b));
    assert_eq!(status(&w)["committed"]["magika"]["release"], 1, "renamed is not committed");
    daemon.kill_9();

    // 4. Restarted without a pause: the committed release 1 serves, then release 2 installs and is committed.
    let daemon = start_daemon(&w, &server, "edge-1", None);
    eventually("release 2 serving", Duration::from_secs(90), || classify(&client, &daemon).filter(|(v, _)| v == "2"));
    eventually("release 2 committed", Duration::from_secs(30), || {
        (status(&w)["committed"]["magika"]["release"] == 2).then_some(())
    });
    drop(daemon);
    assert!(server.stop().success());
}
