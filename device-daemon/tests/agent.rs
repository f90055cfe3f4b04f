//! The agent against a control plane of the test's own (plain HTTP on loopback, so each answer can be made
//! wrong on purpose), with the real magika models and ONNX Runtime: refused documents, a variant that misses
//! its golden vectors, a good install, and a resumed download. After every failure the previous release is
//! still the one serving, and the device state says why.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{Duration, Utc};
use edgefleet_daemon::agent::{Agent, DeviceState, Layout, download};
use edgefleet_daemon::health::Bake;
use edgefleet_daemon::serving::{ModelTable, Served};
use edgefleet_e2e::cache;
use edgefleet_protocol::api::HardwareProfile;
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
    /// When set, the events endpoint answers 503 and keeps nothing.
    refuse_events: std::sync::atomic::AtomicBool,
}

async fn checkin(State(f): State<Arc<Fake>>) -> impl IntoResponse {
    let (status, body) = f.checkin.lock().expect("lock").clone();
    (StatusCode::from_u16(status).expect("status"), [("etag", "\"1\"")], body)
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
    };
    let manifest = ReleaseManifest {
        doc_type: DocType::Release,
        model: "magika".parse().expect("model"),
        version: ReleaseVersion::new(version).expect("version"),
        security_floor: ReleaseVersion::new(1).expect("floor"),
        created: Utc::now(),
        description: String::new(),
        variants: vec![variant.clone()],
    };
    let mut env = Envelope::new(&manifest).expect("envelope");
    env.sign(&key(10)).expect("sign");
    (env, variant)
}

fn desired(sequence: u64, expires: chrono::DateTime<Utc>, release: &Envelope, signer: &KeyPair) -> Vec<u8> {
    let doc = DesiredState {
        doc_type: DocType::DesiredState,
        device: "edge-1".parse().expect("device"),
        sequence,
        issued: Utc::now(),
        expires,
        models: vec![ModelAssignment {
            model: "magika".parse().expect("model"),
            variant: "cpu-int8".parse().expect("variant"),
            release: release.clone(),
        }],
    };
    let mut env = Envelope::new(&doc).expect("envelope");
    env.sign(signer).expect("sign");
    serde_json::to_vec(&env).expect("json")
}

fn serving(models: &ModelTable) -> u64 {
    models.get("magika").map(|s| s.release.get()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_golden_failures_installs_and_resumed_downloads() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = Arc::new(Fake::default());
    let app = axum::Router::new()
        .route("/api/v1/device/checkin", axum::routing::post(checkin))
        .route("/api/v1/blobs/{sha}", axum::routing::get(blob))
        .route("/api/v1/device/events", axum::routing::post(events))
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
    let mut agent = Agent {
        device: "edge-1".parse().expect("device"),
        server: server.clone(),
        client: reqwest::Client::new(),
        layout: Layout { root: dir.path().to_owned() },
        root,
        ort_lib: cache("lib/libonnxruntime.so.1.31.1"),
        options: options(),
        sessions: 1,
        models: models.clone(),
        hardware: HardwareProfile::default(),
        limits: Limits::default(),
        bake: Bake {
            window: std::time::Duration::from_millis(300),
            max_error_rate: 0.2,
            max_latency_ratio: 100.0,
            min_requests: 5,
        },
        memory_budget: None,
        pause: None,
    };
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

    // A model that loads and then fails at run time: its golden run fails with ONNX Runtime's own reason.
    let (fails, _) = release(&fake, 3, "models/magika/model-fails.onnx", "models/magika/model.onnx");
    set(200, desired(4, Utc::now() + Duration::hours(1), &fails, &key(20)));
    agent.reconcile(&mut state, 0).await.expect("the document itself is fine");
    assert_eq!(serving(&models), 1, "a model that fails at inference must never serve");
    assert!(state.last_error.as_deref().is_some_and(|m| m.contains("Reshape")), "{:?}", state.last_error);

    // The good release installs into slot a, serves, and is committed.
    set(200, desired(5, Utc::now() + Duration::hours(1), &good, &key(20)));
    agent.reconcile(&mut state, 0).await.expect("install");
    assert_eq!(serving(&models), 2);
    assert_eq!(state.committed.get(&"magika".parse().expect("m")).map(|i| i.release.get()), Some(2));
    assert!(dir.path().join("models/magika/a/model.onnx").exists());
    let kinds: Vec<String> = fake
        .events
        .lock()
        .expect("lock")
        .iter()
        .filter(|e| e["release"] == 2)
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(kinds, ["download_started", "verified", "swapped", "committed", "installed"], "every step is reported");
    let saved = Layout { root: dir.path().to_owned() }.load_state().expect("state on disk");
    assert_eq!(saved.last_seen.desired_sequence, Some(5));
    // The same document again is a replay (the device remembers sequence 5).
    let e = agent.reconcile(&mut state, 0).await.expect_err("replay");
    assert!(format!("{e:#}").contains("freeze"), "{e:#}");

    // A download resumes from what a previous run left: only the rest crosses the wire.
    let z = fake.blobs.lock().expect("lock")[&good_variant.zstd.sha256.to_string()].clone();
    let partial = agent.layout.partial(&good_variant.zstd);
    std::fs::create_dir_all(partial.parent().expect("dir")).expect("mkdir");
    std::fs::write(&partial, &z[..z.len() / 2]).expect("partial");
    let before = fake.served_bytes.load(Ordering::Relaxed);
    let path = download(&agent.client, &server, &agent.layout, &good_variant.zstd, None).await.expect("resumed");
    assert_eq!(fake.served_bytes.load(Ordering::Relaxed) - before, (z.len() - z.len() / 2) as u64);
    assert_eq!(std::fs::read(&path).expect("read"), z);
    // A partial with wrong bytes fails its digest, is removed, and the next try starts clean.
    let mut bad = z[..z.len() / 2].to_vec();
    bad[10] ^= 1;
    std::fs::write(&partial, &bad).expect("bad partial");
    assert!(download(&agent.client, &server, &agent.layout, &good_variant.zstd, None).await.is_err());
    assert!(!partial.exists(), "a partial that failed its digest must not be resumed from");
    let path = download(&agent.client, &server, &agent.layout, &good_variant.zstd, None).await.expect("clean retry");
    assert_eq!(std::fs::read(&path).expect("read"), z);

    // A release that passes its golden vectors but fails real requests during the bake window is rolled back.
    // The failing requests reach ONNX Runtime directly (past the v2 API's checks) with a shape it refuses.
    agent.bake = Bake {
        window: std::time::Duration::from_secs(5),
        max_error_rate: 0.2,
        max_latency_ratio: 100.0,
        min_requests: 5,
    };
    let (five, _) = release(&fake, 5, "models/magika/model-int8.onnx", "models/magika/model.onnx");
    set(200, desired(6, Utc::now() + Duration::hours(1), &five, &key(20)));
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
