//! Production shape, over real processes: two `edgefleet-server` replicas over one PostgreSQL database and
//! moto's S3 server (from PyPI, on loopback) as the blob store, behind the test's own TCP load balancer.
//! Devices enroll and check in through the balancer and download their blobs from the object store by
//! redirect, verifying every byte. A root rotation and a revocation made through one replica are honoured by
//! the other within a second. A rollout moves through its waves while the store hands out wrong bytes for its
//! release: devices refuse them and fetch again once the store is right; the replica that leads the rollout's
//! evaluation is killed mid-rollout and the other finishes it. With the object store down, the survivor is
//! not ready; cut off from its database, it answers check-ins 503 rather than from what it cached.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use edgefleet_e2e::balancer::Balancer;
use edgefleet_e2e::{
    ServerProcess, Workdir, cache, classify, daemon_command_via, eventually, http, spawn_daemon, x86_server,
};
use serde_json::Value;

/// moto's S3 server on a free loopback port, killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let child = Command::new(cache("venv/bin/python"))
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto's server (scripts/setup.sh installs it)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = http();
        eventually("moto answers", Duration::from_secs(60), || client.get(&endpoint).send().ok().map(drop));
        Self { child, endpoint }
    }
}

impl Moto {
    /// Writes `bytes` to `key` of the bucket as a credentialed client would (boto3, which moto's server brings:
    /// an anonymous request may not overwrite an object).
    fn put(&self, w: &Workdir, key: &str, bytes: &[u8]) {
        let file = w.path("object.tmp");
        std::fs::write(&file, bytes).expect("object file");
        let script = "import boto3, sys\n\
                      s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='edgefleet-test',\n\
                      aws_secret_access_key='edgefleet-test-secret', region_name='us-east-1')\n\
                      s3.upload_file(sys.argv[3], 'fleet-blobs', sys.argv[2])\n";
        let out = Command::new(cache("venv/bin/python"))
            .args(["-c", script, &self.endpoint, key])
            .arg(&file)
            .output()
            .expect("python with boto3");
        assert!(out.status.success(), "writing {key}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql (PostgreSQL's client) runs");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A client that presents device `id`'s certificate (from its data directory) and trusts the servers' one.
fn as_device(w: &Workdir, server_cert: &Path, id: &str) -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut pem = std::fs::read(w.path(&format!("{id}/identity/device.crt"))).expect("device certificate");
    pem.extend(std::fs::read(w.path(&format!("{id}/identity/device.key"))).expect("device key"));
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(server_cert).expect("cert")).expect("pem"))
        .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
        .build()
        .expect("client")
}

/// One check-in of a device that reports nothing: (status, the root version the server answered with).
fn checkin(client: &reqwest::blocking::Client, server: &str) -> (u16, Option<u64>) {
    match client.post(format!("{server}/api/v1/device/checkin")).json(&serde_json::json!({})).send() {
        Ok(r) => (
            r.status().as_u16(),
            r.headers().get("x-edgefleet-root-version").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()),
        ),
        Err(_) => (0, None),
    }
}

/// Polls `done` every 10 ms for at most 10 s; answers how long it took to become true.
fn time_until(mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "not seen within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn two_replicas_over_postgres_and_s3_serve_one_fleet_and_survive_losing_one() {
    let db = format!("edgefleet_replicas_{}", std::process::id());
    psql(&format!("DROP DATABASE IF EXISTS {db}"));
    psql(&format!("CREATE DATABASE {db}"));
    let moto = Moto::start();
    let client = http();
    let bucket = format!("{}/fleet-blobs", moto.endpoint);
    assert!(client.put(&bucket).send().expect("create the bucket").status().is_success());

    let w = Workdir::new();
    w.trust(&["alice"], 1);
    w.pack_magika("1", "cpu", "model.onnx", "fp32", None);
    w.pack_magika("2", "cpu", "model-int8.onnx", "int8", Some("model.onnx"));
    x86_server(&w, "hw");
    let config = w.path("replica.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"postgres://postgres@127.0.0.1:5432/{db}\"\nblobs = \"s3://fleet-blobs/edgefleet\"\n\
             blob_endpoint = \"{}\"\nblob_allow_http = true\nblob_downloads = \"redirect\"\n\
             rollout_eval_secs = 0.5\ntelemetry_flush_ms = 200\nreplica_stale_secs = 2\n",
            moto.endpoint
        ),
    )
    .expect("config");
    let (root, fleet) = (w.path("root.json"), w.path("fleet.key"));
    // Each replica reaches the database through a proxy of its own, which the test can cut.
    let (db_a, db_b) = (Balancer::start(vec!["127.0.0.1:5432".into()]), Balancer::start(vec!["127.0.0.1:5432".into()]));
    let leak = |s: String| -> &'static Path { Path::new(Box::leak(s.into_boxed_str())) };
    let url_a = leak(format!("postgres://postgres@{}/{db}", db_a.host_port()));
    let url_b = leak(format!("postgres://postgres@{}/{db}", db_b.host_port()));
    let env: Vec<(&str, &Path)> = vec![
        ("EDGEFLEET_CONFIG", &config),
        ("EDGEFLEET_TRUST_ROOT", &root),
        ("EDGEFLEET_FLEET_KEY", &fleet),
        ("AWS_ACCESS_KEY_ID", Path::new("edgefleet-test")),
        ("AWS_SECRET_ACCESS_KEY", Path::new("edgefleet-test-secret")),
        ("AWS_REGION", Path::new("us-east-1")),
    ];
    // Replica a starts first, so it is the first to take rollout evaluation; b shares its CA and identity
    // through the database rather than making its own.
    let with_db = |url: &'static Path| {
        let mut e = env.clone();
        e.push(("EDGEFLEET_DATABASE_URL", url));
        e
    };
    let a = ServerProcess::start(&w.path("replica-a"), &with_db(url_a));
    let b = ServerProcess::start(&w.path("replica-b"), &with_db(url_b));
    assert_eq!(a.fingerprint, b.fingerprint, "both replicas present the one shared server identity");
    assert_eq!(
        std::fs::read(a.data_dir.join("tls/server.crt")).expect("a's cert"),
        std::fs::read(b.data_dir.join("tls/server.crt")).expect("b's cert")
    );
    let lb =
        Balancer::start([&a, &b].iter().map(|s| s.url.trim_start_matches("https://").to_owned()).collect::<Vec<_>>());
    let admin = a.token("ci", "admin");
    w.edgefleet(&["login", "--server", &lb.url(), "--token", &admin, "--fingerprint", &a.fingerprint]).ok();
    let keys = || -> Vec<String> {
        let listing = client
            .get(format!("{bucket}?list-type=2&prefix=edgefleet/sha256/"))
            .send()
            .and_then(|r| r.text())
            .expect("list the bucket");
        listing.split("<Key>").skip(1).filter_map(|k| k.split("</Key>").next()).map(str::to_owned).collect()
    };
    w.edgefleet(&["release", "push", "magika-1"]).ok();
    let release_1 = keys();
    w.edgefleet(&["release", "push", "magika-2"]).ok();
    let keys = keys();
    let release_2: Vec<&String> = keys.iter().filter(|k| !release_1.contains(k)).collect();
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();

    // Blobs went to the object store, not to a replica's disk.
    assert!(release_1.len() >= 2 && !release_2.is_empty(), "the releases' blobs are in the bucket: {keys:?}");
    for s in [&a, &b] {
        let local = s.data_dir.join("blobs/sha256");
        assert!(
            !local.exists() || std::fs::read_dir(&local).expect("dir").next().is_none(),
            "no blob on a replica's disk"
        );
    }
    // A download is a redirect to a presigned URL of the store, whose bytes are the blob.
    let digest = keys[0].rsplit('/').next().expect("digest").to_owned();
    let no_redirects = reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(a.data_dir.join("tls/server.crt")).expect("cert"))
                .expect("pem"),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let viewer = a.token("v", "viewer");
    let resp =
        no_redirects.get(format!("{}/api/v1/blobs/{digest}", lb.url())).bearer_auth(&viewer).send().expect("get");
    assert_eq!(resp.status().as_u16(), 307);
    let location = resp.headers()["location"].to_str().expect("location").to_owned();
    assert!(location.starts_with(&moto.endpoint), "{location}");
    let bytes = client.get(&location).send().expect("presigned get").bytes().expect("bytes");
    let got = sha256_hex(&bytes);
    assert_eq!(got, digest, "the presigned URL serves the blob");

    // Devices through the balancer, following blob redirects to the store over plain HTTP (loopback).
    let token = |w: &Workdir| w.enroll_token(&["site=lab"]);
    let daemon = |id: &str| {
        let mut cmd = daemon_command_via(&w, &a, &lb.url(), id, Some(&token(&w)));
        cmd.arg("--blob-allow-http");
        spawn_daemon(cmd)
    };
    let (edge_a, edge_b, edge_c) = (daemon("edge-a"), daemon("edge-b"), daemon("edge-c"));
    for d in [&edge_a, &edge_b, &edge_c] {
        eventually("release 1 serving", Duration::from_secs(120), || classify(&client, d).filter(|(v, _)| v == "1"));
    }
    // edge-c now only lends its certificate to the test, which checks in as it to each replica directly.
    edge_c.kill_9();
    let cert = a.data_dir.join("tls/server.crt");
    let device_c = as_device(&w, &cert, "edge-c");
    assert_eq!(checkin(&device_c, &a.url), (200, Some(1)), "a knows edge-c (and caches its credentials)");
    assert_eq!(checkin(&device_c, &b.url).0, 200);

    // A root rotation pushed through b: a answers with the new root version within a second.
    w.edgefleet(&["keys", "generate", "-o", "carol.key"]).ok();
    w.edgefleet(&["trust", "rotate", "--from", "root.json", "--add-release-key", "carol.pub", "-o", "root-2.json"])
        .ok();
    w.edgefleet(&["trust", "sign", "root-2.json", "--key", "root.key"]).ok();
    let root2 = std::fs::read(w.path("root-2.json")).expect("root 2");
    let pushed = no_redirects
        .post(format!("{}/api/v1/trust/roots", b.url))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(root2)
        .send()
        .expect("push root 2 to b");
    assert_eq!(pushed.status().as_u16(), 201, "{:?}", pushed.text());
    let took = time_until(|| checkin(&device_c, &a.url).1 == Some(2));
    println!("root v2 pushed through b, answered by a after {took:?}");
    assert!(took <= Duration::from_secs(1), "a took {took:?} to see root v2");

    // A revocation through b: a refuses the device within a second.
    let operator = a.token("op", "operator");
    let revoked = no_redirects
        .post(format!("{}/api/v1/devices/edge-c/revoke", b.url))
        .bearer_auth(&operator)
        .send()
        .expect("revoke");
    assert_eq!(revoked.status().as_u16(), 204);
    let took = time_until(|| checkin(&device_c, &a.url).0 == 403);
    println!("edge-c revoked through b, refused by a after {took:?}");
    assert!(took <= Duration::from_secs(1), "a took {took:?} to honour the revocation");

    // The store goes bad for release 2: every one of its objects one byte off.
    let originals: Vec<(String, Vec<u8>)> = release_2
        .iter()
        .map(|k| {
            let bytes = client.get(format!("{bucket}/{k}")).send().and_then(|r| r.bytes()).expect("object");
            (k.to_string(), bytes.to_vec())
        })
        .collect();
    for (key, bytes) in &originals {
        let mut wrong = bytes.clone();
        let last = wrong.len() - 1;
        wrong[last] ^= 0x01;
        moto.put(&w, key, &wrong);
    }

    // A rollout in two waves (half, then all, each baked 4 s).
    let rollout = w.rollout(&["2", "--selector", "site=lab", "--wave", "50:4s", "--wave", "100:4s"]);
    let status = |w: &Workdir| w.edgefleet(&["--json", "rollout", "status", &rollout]).ok().json();
    // A device the waves reached fetched release 2 and refused its bytes (kept serving release 1); the store is
    // put right at once, and the device's next try installs it.
    let bad = eventually("a device refused the store's wrong bytes", Duration::from_secs(120), || {
        ["edge-a", "edge-b"].into_iter().find(|id| {
            std::fs::read_to_string(w.path(&format!("{id}/state.json"))).is_ok_and(|t| t.contains("bad_downloads"))
        })
    });
    let refusing = if bad == "edge-a" { &edge_a } else { &edge_b };
    assert_eq!(classify(&client, refusing).map(|(v, _)| v).as_deref(), Some("1"), "release 1 keeps serving");
    for (key, bytes) in &originals {
        moto.put(&w, key, bytes);
    }
    eventually("the refusal reported", Duration::from_secs(60), || {
        let shown = w.edgefleet(&["--json", "devices", "show", bad]).ok().json();
        shown["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .any(|e| {
                e["kind"] == "verification_failed"
                    && e["detail"].as_str().is_some_and(|d| d.contains("do not match the signed digest"))
            })
            .then_some(())
    });
    let audit = |w: &Workdir| -> Vec<Value> {
        w.edgefleet(&["--json", "audit", "--limit", "200"]).ok().json().as_array().cloned().unwrap_or_default()
    };
    // The engine's entries name the replica that made them. Whoever leads is killed after the first move.
    let first_move = eventually("a first rollout move by the engine", Duration::from_secs(120), || {
        audit(&w).into_iter().find(|e| e["actor"] == "rollout-engine" && e["target"] == rollout.as_str())
    });
    let leader = first_move["source"].as_str().expect("source").to_owned();
    assert!(leader == a.replica || leader == b.replica, "{leader} is one of {} and {}", a.replica, b.replica);
    let a_name = a.replica.clone();
    let survivor = if leader == a.replica {
        drop(a);
        b
    } else {
        drop(b);
        a
    };
    let done = eventually("the rollout finished by the survivor", Duration::from_secs(180), || {
        let s = status(&w);
        (s["state"]["state"] == "done").then_some(s)
    });
    let finished_by: Vec<String> = audit(&w)
        .into_iter()
        .filter(|e| e["actor"] == "rollout-engine" && e["target"] == rollout.as_str())
        .filter_map(|e| e["source"].as_str().map(str::to_owned))
        .collect();
    println!("rollout moves by {finished_by:?}; {leader} was killed after the first");
    assert!(finished_by.contains(&survivor.replica), "the survivor moved the rollout on: {finished_by:?} {done}");
    for d in [&edge_a, &edge_b] {
        eventually("release 2 serving", Duration::from_secs(120), || classify(&client, d).filter(|(v, _)| v == "2"));
    }

    // With the object store gone, the survivor says it is not ready.
    let readyz = |s: &ServerProcess| no_redirects.get(format!("{}/readyz", s.url)).send().map(|r| r.status().as_u16());
    assert_eq!(readyz(&survivor).expect("readyz"), 200);
    drop(moto);
    eventually("not ready without the object store", Duration::from_secs(30), || {
        (readyz(&survivor).ok() == Some(503)).then_some(())
    });
    assert!(lb.forwarded.iter().all(|n| n.load(std::sync::atomic::Ordering::Relaxed) > 0), "both replicas served");

    // Cut off from its database, the survivor stops answering check-ins from its caches within
    // replica_stale_secs (2 s): 503, so that a balancer sends devices to a replica that can vouch for them.
    let device_a = as_device(&w, &cert, "edge-a");
    assert_eq!(checkin(&device_a, &survivor.url).0, 200);
    if survivor.replica == a_name {
        db_a.cut()
    } else {
        db_b.cut()
    }
    let took = time_until(|| checkin(&device_a, &survivor.url).0 == 503);
    println!("cut off from its database, the survivor refused check-ins after {took:?}");
    drop((edge_a, edge_b, survivor, lb));
    psql(&format!("DROP DATABASE {db} WITH (FORCE)"));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
