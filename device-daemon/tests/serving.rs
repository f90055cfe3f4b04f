//! Serving real models over the Open Inference Protocol: magika names the type of known files, bad requests
//! are refused before ONNX Runtime sees them, and releases swap under a steady load with no failed request.
//! Needs `.cache/` from `scripts/setup.sh` (the README's test command runs it); missing files fail loudly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use edgefleet_daemon::serving::{ModelTable, Served};
use edgefleet_daemon::v2::{V2State, router};
use edgefleet_e2e::{PYTHON_SOURCE, cache, magika_features, magika_labels as labels};
use edgefleet_runtime::{Options, Runtime};

/// A plain-HTTP client (local inference is on loopback); reqwest still wants a TLS provider chosen.
fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn runtime() -> &'static Runtime {
    Runtime::shared(Some(&cache("lib/libonnxruntime.so.1.31.1"))).expect("ONNX Runtime loads")
}

fn load(file: &str, release: u64, variant: &str, slot: &str) -> Served {
    Served::load(
        runtime(),
        &cache(file),
        &Options { providers: vec!["CPUExecutionProvider".into()], intra_threads: Some(1) },
        2,
        "magika".parse().expect("name"),
        edgefleet_protocol::ReleaseVersion::new(release).expect("version"),
        variant.parse().expect("variant"),
        slot,
    )
    .expect("model loads")
}

async fn serve(models: Arc<ModelTable>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(listener, router(V2State { models }, 8 << 20)).await.expect("serve");
    });
    url
}

fn request(features: &[i32]) -> serde_json::Value {
    serde_json::json!({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": features}]})
}

fn top(resp: &serde_json::Value, labels: &[String]) -> String {
    let out = &resp["outputs"][0];
    assert_eq!(out["name"], "target_label");
    assert_eq!(out["shape"], serde_json::json!([1, 214]));
    let scores: Vec<f64> = out["data"].as_array().expect("data").iter().map(|v| v.as_f64().expect("f64")).collect();
    let best = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).expect("scores");
    labels[best].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magika_names_known_files_over_the_v2_api() {
    let models = Arc::new(ModelTable::default());
    let client = http();
    let url = serve(models.clone()).await;
    // Nothing loaded: live, not ready.
    assert_eq!(client.get(format!("{url}/v2/health/live")).send().await.expect("live").status(), 200);
    assert_eq!(client.get(format!("{url}/v2/health/ready")).send().await.expect("ready").status(), 503);

    models.install(load("models/magika/model.onnx", 1, "cpu-fp32", "a"));
    assert_eq!(client.get(format!("{url}/v2/health/ready")).send().await.expect("ready").status(), 200);
    let meta: serde_json::Value =
        client.get(format!("{url}/v2/models/magika")).send().await.expect("meta").json().await.expect("json");
    assert_eq!(meta["inputs"][0], serde_json::json!({"name": "bytes", "datatype": "INT32", "shape": [-1, 2048]}));
    assert_eq!(meta["edgefleet"]["provider"], "CPUExecutionProvider");

    let labels = labels();
    let python = PYTHON_SOURCE;
    let json = serde_json::to_vec_pretty(&serde_json::json!({
        "name": "edgefleet", "models": [{"name": "magika", "versions": [1, 2, 3]}, {"name": "silero-vad", "versions": [6]}],
        "waves": [1, 10, 50, 100], "gates": {"p95_latency_ratio": 1.2, "error_rate": 0.01}, "owner": "sre@example.com",
    }))
    .expect("json");
    for (content, expected) in [(python, "python"), (&json[..], "json")] {
        let r: serde_json::Value = client
            .post(format!("{url}/v2/models/magika/infer"))
            .json(&request(&magika_features(content)))
            .send()
            .await
            .expect("infer")
            .json()
            .await
            .expect("json");
        assert_eq!(top(&r, &labels), expected, "{r}");
        assert_eq!(r["model_version"], "1");
    }

    // Bad requests: each a 400 in the protocol's error shape; none reaches ONNX Runtime.
    let features = magika_features(python);
    let post = |body: serde_json::Value| client.post(format!("{url}/v2/models/magika/infer")).json(&body).send();
    for (body, says) in [
        (
            serde_json::json!({"inputs": [{"name": "bytes", "shape": [1, 2047], "datatype": "INT32", "data": &features[..2047]}]}),
            "does not fit",
        ),
        (
            serde_json::json!({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "FP32", "data": features}]}),
            "datatype FP32",
        ),
        (
            serde_json::json!({"inputs": [{"name": "pixels", "shape": [1, 2048], "datatype": "INT32", "data": features}]}),
            "no input",
        ),
        (
            serde_json::json!({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": &features[..100]}]}),
            "100 values",
        ),
        (
            serde_json::json!({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": vec![1.5; 2048]}]}),
            "not an integer",
        ),
        (serde_json::json!({"inputs": []}), "missing"),
        (
            serde_json::json!({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": features}], "outputs": [{"name": "nope"}]}),
            "no output",
        ),
    ] {
        let r = post(body).await.expect("post");
        assert_eq!(r.status(), 400);
        let e: serde_json::Value = r.json().await.expect("json");
        assert!(e["error"].as_str().is_some_and(|m| m.contains(says)), "{e} should say {says}");
    }
    let r = client
        .post(format!("{url}/v2/models/magika/infer"))
        .header("content-type", "application/json")
        .body("{\"inputs\": [")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    assert!(r.json::<serde_json::Value>().await.expect("json")["error"].is_string());
    let r = client.post(format!("{url}/v2/models/unknown/infer")).json(&request(&features)).send().await.expect("post");
    assert_eq!(r.status(), 404);
    let huge = vec![0u8; 9 << 20];
    let r = client
        .post(format!("{url}/v2/models/magika/infer"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
}

/// A request in the binary tensor data extension: the JSON header, then the raw input bytes.
fn binary_request(header: serde_json::Value, data: &[u8]) -> (usize, Vec<u8>) {
    let mut body = serde_json::to_vec(&header).expect("json");
    let n = body.len();
    body.extend_from_slice(data);
    (n, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensors_in_and_out() {
    let models = Arc::new(ModelTable::default());
    models.install(load("models/magika/model.onnx", 1, "cpu-fp32", "a"));
    let (client, url) = (http(), serve(models).await);
    let infer = format!("{url}/v2/models/magika/infer");
    let raw: Vec<u8> = magika_features(PYTHON_SOURCE).iter().flat_map(|x| x.to_le_bytes()).collect();
    let input = |size: usize| {
        serde_json::json!({"name": "bytes", "shape": [1, 2048], "datatype": "INT32",
        "parameters": {"binary_data_size": size}})
    };

    // Binary in, binary out: the answer is the same model's, and names a Python file.
    let (n, body) = binary_request(
        serde_json::json!({"inputs": [input(raw.len())], "parameters": {"binary_data_output": true}}),
        &raw,
    );
    let r = client.post(&infer).header("inference-header-content-length", n).body(body).send().await.expect("infer");
    assert_eq!(r.status(), 200);
    let header_len: usize = r.headers()["inference-header-content-length"].to_str().expect("str").parse().expect("n");
    let bytes = r.bytes().await.expect("body");
    let head: serde_json::Value = serde_json::from_slice(&bytes[..header_len]).expect("json part");
    let out = &head["outputs"][0];
    assert_eq!(out["datatype"], "FP32");
    assert!(out.get("data").is_none(), "{out}");
    let scores: Vec<f32> =
        bytes[header_len..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect();
    assert_eq!(out["parameters"]["binary_data_size"].as_u64(), Some(scores.len() as u64 * 4));
    let best = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("scores").0;
    assert_eq!(labels()[best], "python");

    // Binary in, JSON out (the default): the same top class.
    let (n, body) = binary_request(serde_json::json!({"inputs": [input(raw.len())]}), &raw);
    let r: serde_json::Value = client
        .post(&infer)
        .header("inference-header-content-length", n)
        .body(body)
        .send()
        .await
        .expect("infer")
        .json()
        .await
        .expect("json");
    assert_eq!(top(&r, &labels()), "python");

    // Bad binary requests: a 400 in the protocol's error shape each. (A header value to send instead of the JSON
    // part's true length, the JSON part, the binary part, what the error says.)
    let whole = serde_json::json!({"inputs": [input(raw.len())]});
    let cases: Vec<(Option<&str>, serde_json::Value, Vec<u8>, &str)> = vec![
        (Some("99999"), whole.clone(), raw.clone(), "the body only"),
        (Some("ten"), whole.clone(), raw.clone(), "not a length"),
        (None, whole.clone(), raw[..100].to_vec(), "short"),
        (None, whole.clone(), [raw.clone(), vec![0; 4]].concat(), "no input claims"),
        (None, serde_json::json!({"inputs": [input(100)]}), raw[..100].to_vec(), "8192 expected"),
    ];
    for (header, json, data, says) in cases {
        let (n, body) = binary_request(json, &data);
        let len = header.map_or(n.to_string(), str::to_owned);
        let r =
            client.post(&infer).header("inference-header-content-length", len).body(body).send().await.expect("post");
        assert_eq!(r.status(), 400, "{says}");
        let e: serde_json::Value = r.json().await.expect("json");
        assert!(e["error"].as_str().is_some_and(|m| m.contains(says)), "{e} should say {says}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_releases_under_load_fails_no_request() {
    let models = Arc::new(ModelTable::default());
    models.install(load("models/magika/model.onnx", 1, "cpu-fp32", "a"));
    let url = serve(models.clone()).await;
    let body = Arc::new(request(&magika_features(b"#!/bin/sh\nset -eu\necho hello\nexit 0\n")));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, body, stop, ok, failed) = (url.clone(), body.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let client = http();
            let mut versions = std::collections::BTreeSet::new();
            // Bounded: at most 100,000 requests per client even if the swaps were to stall.
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client.post(format!("{url}/v2/models/magika/infer")).json(&*body).send().await {
                    Ok(r) if r.status() == 200 => {
                        let v: serde_json::Value = r.json().await.expect("json");
                        assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 214]));
                        versions.insert(v["model_version"].as_str().unwrap_or_default().to_owned());
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            versions
        }));
    }
    // 30 swaps between release 1 (fp32, slot a) and release 2 (int8, slot b), each after requests went by.
    for i in 0..30u64 {
        let seen = ok.load(Ordering::Relaxed);
        let (file, variant, slot) = if i % 2 == 0 {
            ("models/magika/model-int8.onnx", "cpu-int8", "b")
        } else {
            ("models/magika/model.onnx", "cpu-fp32", "a")
        };
        let old = models.install(load(file, 2 + i, variant, slot));
        assert!(old.is_some());
        // Wait (bounded) until requests went by on the new release.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while ok.load(Ordering::Relaxed) < seen + 20 {
            assert!(std::time::Instant::now() < deadline, "no progress: {} failed", failed.load(Ordering::Relaxed));
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut versions = std::collections::BTreeSet::new();
    for c in clients {
        versions.extend(c.await.expect("client"));
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during swaps");
    assert!(ok.load(Ordering::Relaxed) >= 600, "{} requests", ok.load(Ordering::Relaxed));
    assert!(versions.len() > 10, "requests saw only {versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v2_api_also_serves_on_a_unix_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("v2.sock");
    // A stale socket file from a previous run is replaced.
    std::fs::write(&sock, b"stale").expect("stale");
    let models = Arc::new(ModelTable::default());
    models.install(load("models/magika/model-int8.onnx", 4, "cpu-int8", "b"));
    let (_running, stop) = tokio::sync::watch::channel(false);
    edgefleet_daemon::run::serve_v2(&format!("unix:{}", sock.display()), router(V2State { models }, 1 << 20), stop)
        .await
        .expect("serve on a socket");
    let mut stream = tokio::net::UnixStream::connect(&sock).await.expect("connect");
    stream
        .write_all(b"GET /v2/models/magika/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"ready\":true"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvidia_tritonclient_talks_to_the_daemon_unmodified() {
    let models = Arc::new(ModelTable::default());
    models.install(load("models/magika/model.onnx", 1, "cpu-fp32", "a"));
    let url = serve(models).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let features = dir.path().join("features.bin");
    let raw: Vec<u8> = magika_features(PYTHON_SOURCE).iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&features, raw).expect("features");
    let mut python = std::process::Command::new(cache("venv/bin/python"));
    python.arg(edgefleet_e2e::repo().join("scripts/triton_client_check.py")).arg(url.trim_start_matches("http://"));
    python.arg(&features);
    // The client blocks; the server keeps running on the test's runtime meanwhile.
    let out = tokio::task::spawn_blocking(move || python.output()).await.expect("join").expect("python");
    assert!(out.status.success(), "tritonclient failed: {}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|i| labels()[i.trim().parse::<usize>().expect("index")].clone())
        .collect();
    assert_eq!(answers, ["python", "python"], "binary tensors, then JSON tensors");
}
