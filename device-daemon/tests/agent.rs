//! The agent against a control plane of the test's own (plain HTTP on loopback, so each answer can be made
//! wrong on purpose), with the real magika models and ONNX Runtime: refused documents, a variant that misses
//! its golden vectors or fails at run time, a good install, a resumed download, rollbacks on errors and on
//! latency, swaps that drain under a memory budget. After every failure the previous release is
//! still the one serving, and the device state says why.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{Duration, Utc};
use edgefleet_daemon::agent::Agent;
use edgefleet_daemon::download::download;
use edgefleet_daemon::health::Bake;
use edgefleet_daemon::layout::{DeviceState, Layout};
use edgefleet_daemon::serving::{ModelTable, Served};
use edgefleet_e2e::cache;
use edgefleet_protocol::api::{EventKind, HardwareProfile};
use edgefleet_runtime::{Options, Runtime};
use model_registry::golden::{GoldenVectors, Tolerance, read_samples};
use model_registry::manifest::ModelFormat;
use model_registry::root::DocType;
use model_registry::*;

fn key(n: u8) -> KeyPair {
    KeyPair::from_seed(&[n; 32])
}

#[derive(Default)]
struct Fake {
    checkin: Mutex<(u16, Vec<u8>)>,
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    served_bytes: AtomicU64,
    events: Mutex<Vec<serde_json::Value>>,
    /// When set, check-ins are accepted and never answered.
    hang: std::sync::atomic::AtomicBool,
    /// When set, the events endpoint answers 503 and keeps nothing.
    refuse_events: std::sync::atomic::AtomicBool,
    /// When set, check-ins are answered with a body that never ends.
    endless: std::sync::atomic::AtomicBool,
    /// The root version check-in answers say the server is on, and the roots it serves by version.
    root_version: Mutex<Option<u64>>,
    roots: Mutex<HashMap<u64, Vec<u8>>>,
}

async fn root(State(f): State<Arc<Fake>>, Path(v): Path<u64>) -> axum::response::Response {
    match f.roots.lock().expect("lock").get(&v).cloned() {
        Some(b) => (StatusCode::OK, b).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn checkin(State(f): State<Arc<Fake>>) -> axum::response::Response {
    if f.hang.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
    if f.endless.load(Ordering::Relaxed) {
        let spaces = futures_util::stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 64 << 10])));
        return (StatusCode::OK, axum::body::Body::from_stream(spaces)).into_response();
    }
    let (status, body) = f.checkin.lock().expect("lock").clone();
    let mut r = (StatusCode::from_u16(status).expect("status"), [("etag", "\"1\"")], body).into_response();
    if let Some(v) = *f.root_version.lock().expect("lock") {
        r.headers_mut().insert(edgefleet_protocol::api::ROOT_VERSION_HEADER, v.into());
    }
    r
}

async fn blob(State(f): State<Arc<Fake>>, Path(sha): Path<String>, headers: HeaderMap) -> impl IntoResponse {
    let Some(data) = f.blobs.lock().expect("lock").get(&sha).cloned() else {
        return (StatusCode::NOT_FOUND, Vec::new());
    };
    let start: usize = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    let part = data[start.min(data.len())..].to_vec();
    f.served_bytes.fetch_add(part.len() as u64, Ordering::Relaxed);
    (if start > 0 { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK }, part)
}

async fn events(State(f): State<Arc<Fake>>, body: Bytes) -> StatusCode {
    if f.refuse_events.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(&body) {
        f.events.lock().expect("lock").extend(items);
    }
    StatusCode::OK
}

fn runtime() -> &'static Runtime {
    Runtime::shared(Some(&cache("lib/libonnxruntime.so.1.31.1"))).expect("ONNX Runtime")
}

fn options() -> Options {
    Options { providers: vec!["CPUExecutionProvider".into()], intra_threads: Some(1) }
}

/// A release of magika with one variant built from `model`, whose golden vectors are `reference`'s outputs.
fn release(fake: &Fake, version: u64, model: &str, reference: &str) -> (Envelope, Variant) {
    release_of(fake, "magika", version, 1, model, reference)
}

/// Release `version` of model `name` with security floor `floor`, its blobs served by `fake`.
fn release_of(fake: &Fake, name: &str, version: u64, floor: u64, model: &str, reference: &str) -> (Envelope, Variant) {
    let raw = std::fs::read(cache(model)).expect("model");
    let mut z = Vec::new();
    let (raw_ref, zstd_ref) = compress(raw.as_slice(), &mut z, 3, u64::MAX).expect("compress");
    let samples = read_samples(&std::fs::read(cache("samples/magika.safetensors")).expect("samples")).expect("parse");
    let mut m = runtime().open_with(&cache(reference), &options()).expect("reference");
    let outputs = m.run_cases(&samples).expect("reference outputs");
    let golden = GoldenVectors {
        inputs: samples,
        outputs,
        tolerances: [("target_label".to_owned(), Tolerance::default_for(Precision::Int8))].into(),
    }
    .to_bytes()
    .expect("golden");
    let golden_ref = ArtifactRef { sha256: Sha256Digest::of(&golden), size: golden.len() as u64 };
    fake.blobs.lock().expect("lock").insert(zstd_ref.sha256.to_string(), z);
    fake.blobs.lock().expect("lock").insert(golden_ref.sha256.to_string(), golden);
    let variant = Variant {
        id: "cpu-int8".parse().expect("id"),
        requirements: Requirements::default(),
        precision: Precision::Int8,
        format: ModelFormat::Onnx,
        raw: raw_ref,
        zstd: zstd_ref,
        golden: golden_ref,
        inputs: m.inputs.clone(),
        outputs: m.outputs.clone(),
        llm: None,
    };
    let manifest = ReleaseManifest {
        doc_type: DocType::Release,
        model: name.parse().expect("model"),
        version: ReleaseVersion::new(version).expect("version"),
        security_floor: ReleaseVersion::new(floor).expect("floor"),
        created: Utc::now(),
        description: String::new(),
        variants: vec![variant.clone()],
        routing: None,
    };
    let mut env = Envelope::new(&manifest).expect("envelope");
    env.sign(&key(10)).expect("sign");
    (env, variant)
}

fn desired(sequence: u64, expires: chrono::DateTime<Utc>, release: &Envelope, signer: &KeyPair) -> Vec<u8> {
    desired_of(sequence, expires, &[("magika", release)], signer)
}

/// A desired state naming each (model, release) of `models`, variant `cpu-int8`.
fn desired_of(
    sequence: u64,
    expires: chrono::DateTime<Utc>,
    models: &[(&str, &Envelope)],
    signer: &KeyPair,
) -> Vec<u8> {
    let doc = DesiredState {
        doc_type: DocType::DesiredState,
        device: "edge-1".parse().expect("device"),
        sequence,
        issued: Utc::now(),
        expires,
        models: models
            .iter()
            .map(|(model, release)| ModelAssignment {
                model: model.parse().expect("model"),
                variant: "cpu-int8".parse().expect("variant"),
                release: (*release).clone(),
                measure: Vec::new(),
            })
            .collect(),
    };
    let mut env = Envelope::new(&doc).expect("envelope");
    env.sign(signer).expect("sign");
    serde_json::to_vec(&env).expect("json")
}

fn serving(models: &ModelTable) -> u64 {
    models.get("magika").map(|s| s.release.get()).unwrap_or(0)
}

/// A fake control plane on loopback and an agent pointed at it, with an empty data directory.
struct Rig {
    fake: Arc<Fake>,
    server: String,
    agent: Agent,
    models: Arc<ModelTable>,
    state: DeviceState,
    sequence: u64,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Rig {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let fake = Arc::new(Fake::default());
        let app = axum::Router::new()
            .route("/api/v1/device/checkin", axum::routing::post(checkin))
            .route("/api/v1/blobs/{sha}", axum::routing::get(blob))
            .route("/api/v1/device/events", axum::routing::post(events))
            .route("/api/v1/trust/roots/{v}", axum::routing::get(root))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Root::new(
            Utc::now() + Duration::days(30),
            [
                (Role::Root, vec![key(1).public().clone()], 1),
                (Role::Release, vec![key(10).public().clone()], 1),
                (Role::Fleet, vec![key(20).public().clone()], 1),
            ],
        )
        .expect("root");
        let models = Arc::new(ModelTable::default());
        let agent = Agent {
            llm: Default::default(),
            device: "edge-1".parse().expect("device"),
            server: server.clone(),
            client: reqwest::Client::new(),
            redirects: edgefleet_daemon::identity::Redirects::none(),
            layout: Layout { root: dir.path().to_owned() },
            root,
            ort_lib: cache("lib/libonnxruntime.so.1.31.1"),
            options: options(),
            sessions: 1,
            models: models.clone(),
            hardware: HardwareProfile::default(),
            limits: Limits::default(),
            bake: bake(300, 100.0),
            memory_budget: None,
            disk_budget: None,
            pause: None,
            checkin_slack: std::time::Duration::from_secs(1),
            power: None,
        };
        Rig { fake, server, agent, models, state: DeviceState::default(), sequence: 0, _dir: dir }
    }

    /// Offers `release` to the device in a newly signed desired state and runs one reconcile pass.
    async fn offer(&mut self, release: &Envelope) -> anyhow::Result<()> {
        self.sequence += 1;
        *self.fake.checkin.lock().expect("lock") =
            (200, desired(self.sequence, Utc::now() + Duration::hours(1), release, &key(20)));
        self.agent.reconcile(&mut self.state, 0).await.map(|_| ())
    }

    fn committed(&self) -> Option<u64> {
        self.state.committed.get(&"magika".parse().expect("m")).map(|i| i.release.get())
    }

    /// The events the control plane received about `release`: (kind, detail).
    fn events(&self, release: u64) -> Vec<(String, String)> {
        let events = self.fake.events.lock().expect("lock");
        events
            .iter()
            .filter(|e| e["release"] == release)
            .map(|e| (e["kind"].as_str().unwrap_or("").to_owned(), e["detail"].as_str().unwrap_or("").to_owned()))
            .collect()
    }
}

/// A health watch of `window_ms` that tolerates 20 % failed requests and `ratio` times the latency.
fn bake(window_ms: u64, ratio: f64) -> Bake {
    Bake {
        window: std::time::Duration::from_millis(window_ms),
        max_error_rate: 0.2,
        max_latency_ratio: ratio,
        min_requests: 5,
    }
}

/// Steady load over the v2 API on `models`: `clients` clients send magika a real file until `stop` (each at most
/// 20,000 requests). Answers (answered, failed, answered by each release).
fn load(
    models: Arc<ModelTable>,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, std::collections::BTreeMap<String, u64>)> {
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/v2/models/magika/infer", listener.local_addr().expect("addr"));
        let app = edgefleet_daemon::v2::router(edgefleet_daemon::v2::V2State { models }, 1 << 20);
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        let body = serde_json::json!({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32",
            "data": edgefleet_e2e::magika_features(edgefleet_e2e::PYTHON_SOURCE)}]});
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (url, body, stop) = (url.clone(), body.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut ok, mut failed, mut by) = (0, 0, std::collections::BTreeMap::new());
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match client.post(&url).json(&body).send().await {
                        Ok(r) if r.status() == 200 => {
                            ok += 1;
                            let v: serde_json::Value = r.json().await.expect("json");
                            *by.entry(v["model_version"].as_str().unwrap_or("?").to_owned()).or_insert(0) += 1;
                        }
                        _ => failed += 1,
                    }
                }
                (ok, failed, by)
            }));
        }
        let (mut ok, mut failed, mut by) = (0, 0, std::collections::BTreeMap::new());
        for t in tasks {
            let (o, f, b) = t.await.expect("client");
            (ok, failed) = (ok + o, failed + f);
            for (k, v) in b {
                *by.entry(k).or_insert(0) += v;
            }
        }
        (ok, failed, by)
    })
}

/// Waits (bounded) until `release` of magika has answered `n` requests.
async fn answered(models: &ModelTable, release: u64, n: u64) {
    for _ in 0..600 {
        if models.get("magika").is_some_and(|s| s.release.get() == release && s.health.snapshot().ok >= n) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("release {release} did not answer {n} requests within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_golden_failures_installs_and_resumed_downloads() {
    let Rig { fake, server, mut agent, models, _dir, .. } = Rig::new().await;
    // Release 1 serves before anything happens.
    models.install(
        Served::load(
            runtime(),
            &cache("models/magika/model.onnx"),
            &options(),
            1,
            "magika".parse().expect("m"),
            ReleaseVersion::new(1).expect("v"),
            "cpu-fp32".parse().expect("id"),
            "a",
        )
        .expect("load"),
    );
    let mut state = DeviceState::default();
    let set = |status: u16, body: Vec<u8>| *fake.checkin.lock().expect("lock") = (status, body);
    let (good, good_variant) = release(&fake, 2, "models/magika/model-int8.onnx", "models/magika/model.onnx");

    // Signed by a key that is not the fleet key: refused, release 1 keeps serving.
    set(200, desired(1, Utc::now() + Duration::hours(1), &good, &key(99)));
    let e = agent.reconcile(&mut state, 0).await.expect_err("foreign fleet key");
    assert!(format!("{e:#}").contains("arbitrary-model"), "{e:#}");
    assert_eq!(serving(&models), 1);
    assert!(state.last_error.as_deref().is_some_and(|m| m.contains("arbitrary-model")));
    // Expired: a freeze.
    set(200, desired(2, Utc::now() - Duration::seconds(1), &good, &key(20)));
    let e = agent.reconcile(&mut state, 0).await.expect_err("expired");
    assert!(format!("{e:#}").contains("freeze"), "{e:#}");
    // Garbage, and an error status: refused, nothing changes.
    set(200, b"<html>proxy error</html>".to_vec());
    assert!(agent.reconcile(&mut state, 0).await.is_err());
    set(502, b"bad gateway".to_vec());
    assert!(agent.reconcile(&mut state, 0).await.is_err());
    // A server that takes the check-in and never answers: given up after the slack, the model still serves.
    fake.hang.store(true, Ordering::Relaxed);
    let e = agent.reconcile(&mut state, 0).await.expect_err("a hung server");
    assert!(format!("{e:#}").contains("check-in"), "{e:#}");
    fake.hang.store(false, Ordering::Relaxed);
    assert_eq!(serving(&models), 1);
    assert!(state.committed.is_empty());

    // A variant whose golden vectors it cannot meet (they were computed from a different model): not served.
    let (wrong, _) = release(&fake, 3, "models/magika/model-int8.onnx", "models/magika/model-wrong.onnx");
    set(200, desired(3, Utc::now() + Duration::hours(1), &wrong, &key(20)));
    agent.reconcile(&mut state, 0).await.expect("the document itself is fine");
    assert_eq!(serving(&models), 1, "a variant that failed its golden vectors must never serve");
    assert!(state.committed.is_empty());
    assert!(state.last_error.as_deref().is_some_and(|m| m.contains("golden")), "{:?}", state.last_error);
    assert!(fake.events.lock().expect("lock").iter().any(|e| e["kind"] == "golden_failed" && e["release"] == 3));
    // The same release in a newer document is not tried again: nothing is downloaded.
    let before = fake.served_bytes.load(Ordering::Relaxed);
    set(200, desired(4, Utc::now() + Duration::hours(1), &wrong, &key(20)));
    agent.reconcile(&mut state, 0).await.expect("the document itself is fine");
    assert_eq!(fake.served_bytes.load(Ordering::Relaxed), before, "a release that failed for good was fetched again");

    // A model that loads and then fails at run time: its golden run fails with ONNX Runtime's own reason.
    let (fails, _) = release(&fake, 7, "models/magika/model-fails.onnx", "models/magika/model.onnx");
    set(200, desired(5, Utc::now() + Duration::hours(1), &fails, &key(20)));
    agent.reconcile(&mut state, 0).await.expect("the document itself is fine");
    assert_eq!(serving(&models), 1, "a model that fails at inference must never serve");
    assert!(state.last_error.as_deref().is_some_and(|m| m.contains("Reshape")), "{:?}", state.last_error);

    // The good release installs into slot a, serves, and is committed.
    set(200, desired(6, Utc::now() + Duration::hours(1), &good, &key(20)));
    agent.reconcile(&mut state, 0).await.expect("install");
    assert_eq!(serving(&models), 2);
    // Its golden vectors ran on it, but they are not requests: nothing counted in its health or telemetry.
    let h = models.get("magika").expect("served").health.snapshot();
    assert_eq!((h.ok, h.errors), (0, 0), "golden runs counted as requests: {h:?}");
    assert_eq!(state.committed.get(&"magika".parse().expect("m")).map(|i| i.release.get()), Some(2));
    assert!(_dir.path().join("models/magika/a/model.onnx").exists());
    let kinds: Vec<String> = fake
        .events
        .lock()
        .expect("lock")
        .iter()
        .filter(|e| e["release"] == 2)
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(kinds, ["download_started", "verified", "swapped", "committed", "installed"], "every step is reported");
    let saved = agent.layout.load_state().expect("state on disk");
    assert_eq!(saved.last_seen.desired_sequence, Some(6));
    // The same document again is a replay (the device remembers sequence 6).
    let e = agent.reconcile(&mut state, 0).await.expect_err("replay");
    assert!(format!("{e:#}").contains("freeze"), "{e:#}");

    // A download resumes from what a previous run left: only the rest crosses the wire.
    let z = fake.blobs.lock().expect("lock")[&good_variant.zstd.sha256.to_string()].clone();
    let partial = agent.layout.partial(&good_variant.zstd);
    std::fs::create_dir_all(partial.parent().expect("dir")).expect("mkdir");
    std::fs::write(&partial, &z[..z.len() / 2]).expect("partial");
    let before = fake.served_bytes.load(Ordering::Relaxed);
    let path = download(&agent.client, &agent.redirects, &server, &agent.layout, &good_variant.zstd, None)
        .await
        .expect("resumed");
    assert_eq!(fake.served_bytes.load(Ordering::Relaxed) - before, (z.len() - z.len() / 2) as u64);
    assert_eq!(std::fs::read(&path).expect("read"), z);
    // A partial with wrong bytes fails its digest, is removed, and the next try starts clean.
    let mut bad = z[..z.len() / 2].to_vec();
    bad[10] ^= 1;
    std::fs::write(&partial, &bad).expect("bad partial");
    assert!(download(&agent.client, &agent.redirects, &server, &agent.layout, &good_variant.zstd, None).await.is_err());
    assert!(!partial.exists(), "a partial that failed its digest must not be resumed from");
    let path = download(&agent.client, &agent.redirects, &server, &agent.layout, &good_variant.zstd, None)
        .await
        .expect("clean retry");
    assert_eq!(std::fs::read(&path).expect("read"), z);

    // A release that passes its golden vectors but fails real requests during the bake window is rolled back.
    // The failing requests reach ONNX Runtime directly (past the v2 API's checks) with a shape it refuses.
    agent.bake = bake(5_000, 100.0);
    let (five, _) = release(&fake, 5, "models/magika/model-int8.onnx", "models/magika/model.onnx");
    set(200, desired(7, Utc::now() + Duration::hours(1), &five, &key(20)));
    let poison = tokio::spawn({
        let models = models.clone();
        async move {
            let bad: Vec<u8> = std::iter::repeat_n(7i32, 100).flat_map(|x| x.to_le_bytes()).collect();
            let input = std::collections::BTreeMap::from([(
                "bytes".to_owned(),
                model_registry::golden::HostTensor::new("bytes", ElementType::Int32, vec![1, 100], bad)
                    .expect("tensor"),
            )]);
            let mut failures = 0;
            // Bounded: 20 s at most; done once release 5 was hit and then replaced.
            for _ in 0..400 {
                let on_five = models.get("magika").filter(|s| s.release.get() == 5);
                match on_five {
                    Some(s) => failures += usize::from(s.infer(input.clone()).await.is_err()),
                    None if failures > 0 => break,
                    None => {}
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            failures
        }
    });
    agent.reconcile(&mut state, 0).await.expect("the document is fine; the install is what fails");
    assert!(poison.await.expect("poison") >= 5, "the bad inputs did not fail on release 5");
    assert_eq!(serving(&models), 2, "release 2 must be back after the rollback");
    assert_eq!(state.committed.get(&"magika".parse().expect("m")).map(|i| i.release.get()), Some(2));
    assert!(state.last_error.as_deref().is_some_and(|m| m.contains("rolled back")), "{:?}", state.last_error);
    let events = fake.events.lock().expect("lock").clone();
    assert!(events.iter().any(|e| e["kind"] == "rolled_back" && e["release"] == 5), "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuinely_slower_release_is_rolled_back_by_the_latency_watch() {
    let mut rig = Rig::new().await;
    let (two, _) = release(&rig.fake, 2, "models/magika/model.onnx", "models/magika/model.onnx");
    rig.offer(&two).await.expect("release 2");
    assert_eq!(rig.committed(), Some(2));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = load(rig.models.clone(), 1, stop.clone());
    // The baseline: release 2's latency under this load.
    answered(&rig.models, 2, 40).await;
    // Release 3 gives the same answers as fp32 release 2 (its golden vectors pass) with ~3x the work per request.
    rig.agent.bake = bake(3_000, 1.5);
    let (slow, _) = release(&rig.fake, 3, "models/magika/model-slow.onnx", "models/magika/model.onnx");
    rig.offer(&slow).await.expect("the document is fine; the install is what fails");
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, by) = traffic.await.expect("load");
    assert_eq!(failed, 0, "a rollback must not fail requests ({ok} answered)");
    assert!(by.get("3").is_some_and(|n| *n >= 5), "release 3 served too little to be judged: {by:?}");
    assert_eq!(rig.committed(), Some(2), "{:?}", rig.events(3));
    assert_eq!(serving(&rig.models), 2, "release 2 must serve again");
    let why = rig.state.last_error.clone().unwrap_or_default();
    assert!(why.contains("rolled back: p95 latency"), "{why}");
    let events = rig.events(3);
    assert!(events.iter().any(|(k, d)| k == "rolled_back" && d.contains("p95 latency")), "{events:?}");
    assert!(!events.iter().any(|(k, _)| k == "committed"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_budget_swaps_drain_and_queue_and_fail_no_request() {
    let mut rig = Rig::new().await;
    let (two, int8) = release(&rig.fake, 2, "models/magika/model-int8.onnx", "models/magika/model.onnx");
    // While the control plane refuses events, they wait in state.json; the next pass delivers them.
    rig.fake.refuse_events.store(true, Ordering::Relaxed);
    rig.offer(&two).await.expect("release 2");
    assert_eq!(rig.committed(), Some(2));
    assert!(rig.events(2).is_empty());
    let kept = rig.agent.layout.load_state().expect("state").pending_events;
    assert!(kept.iter().any(|e| e.kind == EventKind::Installed), "{kept:?}");
    rig.fake.refuse_events.store(false, Ordering::Relaxed);

    // Room for one int8 magika (one session), not two.
    rig.agent.memory_budget = Some(int8.raw.size * 3 / 2);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = load(rig.models.clone(), 4, stop.clone());
    answered(&rig.models, 2, 20).await;
    let (three, _) = release(&rig.fake, 3, "models/magika/model-int8.onnx", "models/magika/model.onnx");
    rig.offer(&three).await.expect("release 3");
    assert!(rig.events(2).iter().any(|(k, _)| k == "installed"), "the queued events arrived: {:?}", rig.events(2));
    assert!(rig.state.pending_events.is_empty());
    assert_eq!(rig.committed(), Some(3));
    let events = rig.events(3);
    assert!(events.iter().any(|(k, d)| k == "swapped" && d.contains("drained")), "{events:?}");
    answered(&rig.models, 3, 20).await;

    // Drained, and then the new release fails its golden vectors: release 3 is loaded back from its slot.
    let (wrong, _) = release(&rig.fake, 4, "models/magika/model-int8.onnx", "models/magika/model-wrong.onnx");
    rig.offer(&wrong).await.expect("the document is fine");
    assert_eq!(serving(&rig.models), 3);
    assert_eq!(rig.committed(), Some(3));
    assert!(rig.events(4).iter().any(|(k, _)| k == "golden_failed"), "{:?}", rig.events(4));
    let before = rig.models.get("magika").expect("serving").health.snapshot().ok;
    answered(&rig.models, 3, before + 20).await;

    // fp32 magika does not fit even alone: refused before anything is unloaded or downloaded.
    let (big, big_variant) = release(&rig.fake, 5, "models/magika/model.onnx", "models/magika/model.onnx");
    let served_before = rig.fake.served_bytes.load(Ordering::Relaxed);
    rig.offer(&big).await.expect("the document is fine");
    assert_eq!(rig.fake.served_bytes.load(Ordering::Relaxed), served_before, "{big_variant:?} was downloaded");
    let events = rig.events(5);
    assert!(events.iter().any(|(k, d)| k == "load_failed" && d.contains("memory budget")), "{events:?}");
    assert_eq!(serving(&rig.models), 3);

    stop.store(true, Ordering::Relaxed);
    let (ok, failed, by) = traffic.await.expect("load");
    assert_eq!(failed, 0, "requests wait through a drain, they never fail ({ok} answered: {by:?})");
    assert!(by.contains_key("2") && by.contains_key("3"), "{by:?}");
}

/// A compromised control plane (it holds the fleet key) cannot lower a security floor: in one document, release 3
/// of magika (floor 3) commits while another model's download is interrupted; the device takes the document
/// again later, but the floor it learnt stays, and a later document offering release 2 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_floor_learnt_in_an_interrupted_pass_is_kept() {
    let mut rig = Rig::new().await;
    let (r3, _) = release_of(&rig.fake, "magika", 3, 3, "models/magika/model.onnx", "models/magika/model.onnx");
    let slow = "models/magika/model-slow.onnx";
    let (other, v) = release_of(&rig.fake, "vad", 1, 1, slow, slow);
    // The other model's compressed weights (other bytes than magika's) are gone from the server: its download
    // fails, a transient failure.
    rig.fake.blobs.lock().expect("lock").remove(&v.zstd.sha256.to_string());
    *rig.fake.checkin.lock().expect("lock") =
        (200, desired_of(1, Utc::now() + Duration::hours(1), &[("magika", &r3), ("vad", &other)], &key(20)));
    let e = rig.agent.reconcile(&mut rig.state, 0).await.expect_err("the interrupted download is reported");
    assert!(e.to_string().contains("interrupted"), "{e}");
    assert_eq!(rig.committed(), Some(3));
    let magika: ModelName = "magika".parse().expect("model");
    assert_eq!(rig.state.last_seen.floors.get(&magika).map(|f| f.get()), Some(3), "{:?}", rig.state.last_seen);
    // What is on disk says so too: a restart cannot forget it.
    let saved = rig.agent.layout.load_state().expect("state on disk");
    assert_eq!(saved.last_seen.floors.get(&magika).map(|f| f.get()), Some(3));
    // The compromised server now offers release 2 of magika, signed, fresh, with a higher sequence: refused.
    let (r2, _) = release_of(&rig.fake, "magika", 2, 1, "models/magika/model.onnx", "models/magika/model.onnx");
    *rig.fake.checkin.lock().expect("lock") = (200, desired(2, Utc::now() + Duration::hours(1), &r2, &key(20)));
    let e = rig.agent.reconcile(&mut rig.state, 0).await.expect_err("below the floor");
    assert!(e.to_string().contains("floor"), "{e}");
    assert_eq!(rig.committed(), Some(3));
    assert_eq!(serving(&rig.models), 3, "release 3 still serves");
}

/// A compromised control plane answers a check-in with a body that never ends: the device reads up to the
/// desired-state limit, no further, and the release it serves keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_cut_off_at_its_limit() {
    let mut rig = Rig::new().await;
    let (r1, _) = release(&rig.fake, 1, "models/magika/model.onnx", "models/magika/model.onnx");
    rig.offer(&r1).await.expect("release 1 installs");
    rig.fake.endless.store(true, Ordering::Relaxed);
    let pass = tokio::time::timeout(std::time::Duration::from_secs(60), rig.agent.reconcile(&mut rig.state, 0));
    let e = pass.await.expect("cut off at the limit, not read for ever").expect_err("refused");
    assert!(format!("{e:#}").contains("limit of 8388608"), "{e:#}");
    assert_eq!(serving(&rig.models), 1);
}

/// The fleet key is rotated: root v2 trusts fleet key 21 only, and the server signs with it. A running device on
/// root v1 refuses the first such document, walks to the server's v2 (checked against v1) and takes the same
/// document, without a restart; the new root is stored for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_refused_for_want_of_a_newer_root_walks_the_root_forward() {
    let mut rig = Rig::new().await;
    let mut v2 = rig.agent.root.next_version(Utc::now() + Duration::days(30));
    v2.revoke_key(&key(20).key_id());
    v2.add_key(Role::Fleet, key(21).public().clone());
    v2.validate().expect("root v2");
    let mut env = Envelope::new(&v2).expect("envelope");
    env.sign(&key(1)).expect("sign");
    rig.fake.roots.lock().expect("lock").insert(2, serde_json::to_vec(&env).expect("json"));
    *rig.fake.root_version.lock().expect("lock") = Some(2);
    let (r1, _) = release(&rig.fake, 1, "models/magika/model.onnx", "models/magika/model.onnx");
    *rig.fake.checkin.lock().expect("lock") = (200, desired(1, Utc::now() + Duration::hours(1), &r1, &key(21)));
    rig.agent.reconcile(&mut rig.state, 0).await.expect("taken once the root is walked");
    assert_eq!(rig.agent.root.version, 2);
    assert_eq!(rig.committed(), Some(1));
    let stored: Envelope =
        serde_json::from_slice(&std::fs::read(rig.agent.layout.trusted_root()).expect("stored root")).expect("json");
    assert_eq!(stored.typed::<Root>().expect("root").version, 2);
    // A document signed by the revoked key 20 is now refused, and no walk helps it.
    *rig.fake.checkin.lock().expect("lock") = (200, desired(2, Utc::now() + Duration::hours(1), &r1, &key(20)));
    let e = rig.agent.reconcile(&mut rig.state, 0).await.expect_err("the old fleet key is revoked");
    assert!(e.to_string().contains("refused"), "{e}");
}

/// A server (compromised, or wrong) picks a variant built for a Qualcomm NPU for this CPU-only device: the
/// device checks the pick against its own hardware, refuses it before downloading a byte, remembers the refusal
/// across restarts, and keeps serving what it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_the_device_cannot_run_is_refused_before_download() {
    let mut rig = Rig::new().await;
    let (r1, _) = release(&rig.fake, 1, "models/magika/model.onnx", "models/magika/model.onnx");
    rig.offer(&r1).await.expect("release 1 installs");
    let (r2, _) = release(&rig.fake, 2, "models/magika/model.onnx", "models/magika/model.onnx");
    let mut m: ReleaseManifest = r2.typed().expect("manifest");
    m.variants[0].requirements.execution_providers = vec!["QNNExecutionProvider".into()];
    let mut npu = Envelope::new(&m).expect("envelope");
    npu.sign(&key(10)).expect("sign");
    let before = rig.fake.served_bytes.load(Ordering::Relaxed);
    rig.offer(&npu).await.expect("the pass itself succeeds");
    assert_eq!(rig.fake.served_bytes.load(Ordering::Relaxed), before, "nothing downloaded");
    assert_eq!((rig.committed(), serving(&rig.models)), (Some(1), 1));
    assert!(rig.events(2).iter().any(|(k, d)| k == "no_variant_fits" && d.contains("QNNExecutionProvider")));
    let saved = rig.agent.layout.load_state().expect("state");
    assert_eq!(saved.failed.get(&"magika".parse().expect("m")).map(|f| f.0.get()), Some(2), "remembered");
}

/// A release whose model the daemon died while loading three times (what a model that crashes the runtime leaves
/// on disk: three loads begun, no install ended) is not loaded a fourth time; the device says why. Crashes
/// before the load (a download, a decompression) do not count: those resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_crashed_the_daemon_three_times_is_not_loaded_again() {
    let mut rig = Rig::new().await;
    let (r1, _) = release(&rig.fake, 1, "models/magika/model.onnx", "models/magika/model.onnx");
    rig.offer(&r1).await.expect("release 1 installs");
    let magika: ModelName = "magika".parse().expect("m");
    let (v1, cpu): (ReleaseVersion, VariantId) = (ReleaseVersion::new(1).expect("v"), "cpu-int8".parse().expect("id"));
    assert_eq!(rig.agent.layout.loads_begun(&magika, v1, &cpu), 0, "an install that ended leaves no count behind");
    let (r2, _) = release(&rig.fake, 2, "models/magika/model.onnx", "models/magika/model.onnx");
    let v2 = ReleaseVersion::new(2).expect("v");
    for _ in 0..3 {
        rig.agent.layout.begin_load(&magika, v2, &cpu);
    }
    rig.offer(&r2).await.expect("the pass itself succeeds");
    assert_eq!(serving(&rig.models), 1);
    assert!(rig.events(2).iter().any(|(k, d)| k == "refused" && d.contains("3 attempts")), "{:?}", rig.events(2));
    assert_eq!(rig.state.failed.get(&magika).map(|f| f.0), Some(v2));
}

/// The desired state stops naming magika: the device unloads it (requests in flight finish), deletes its slots
/// and forgets it; a partial download nothing asks for any more is deleted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_dropped_from_the_desired_state_is_unloaded_and_its_files_removed() {
    let mut rig = Rig::new().await;
    let (r1, _) = release(&rig.fake, 1, "models/magika/model.onnx", "models/magika/model.onnx");
    rig.offer(&r1).await.expect("release 1 installs");
    let magika: ModelName = "magika".parse().expect("m");
    let dir = rig.agent.layout.model_dir(&magika);
    assert!(dir.join("a").exists());
    let stale = rig.agent.layout.downloads().join(format!("{}.partial", Sha256Digest::of(b"an old release")));
    std::fs::write(&stale, b"half of something").expect("stale partial");
    rig.sequence += 1;
    *rig.fake.checkin.lock().expect("lock") =
        (200, desired_of(rig.sequence, Utc::now() + Duration::hours(1), &[], &key(20)));
    rig.agent.reconcile(&mut rig.state, 0).await.expect("an empty document is taken");
    assert_eq!(serving(&rig.models), 0, "magika no longer serves");
    assert!(!dir.exists(), "its slots are gone");
    assert!(!stale.exists(), "the stale partial download is gone");
    assert_eq!(rig.committed(), None);
    assert!(rig.events(1).iter().any(|(k, _)| k == "removed"), "{:?}", rig.events(1));
}

/// With a disk budget too small for the release's download and staged model, it is refused before a byte is
/// fetched, and the device says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_over_the_disk_budget_is_refused_before_download() {
    let mut rig = Rig::new().await;
    rig.agent.disk_budget = Some(64 << 10);
    let (r1, _) = release(&rig.fake, 1, "models/magika/model.onnx", "models/magika/model.onnx");
    rig.offer(&r1).await.expect("the pass itself succeeds");
    assert_eq!(rig.fake.served_bytes.load(Ordering::Relaxed), 0, "nothing downloaded");
    assert_eq!(serving(&rig.models), 0);
    assert!(rig.events(1).iter().any(|(k, d)| k == "refused" && d.contains("disk budget")), "{:?}", rig.events(1));
}
