//! Serving benchmarks for BENCHMARKS.md: the v2 API's per-request overhead over a direct ONNX Runtime call on
//! magika, and hot swaps under load (failed requests, p99 before and during, RSS after 1 and after N swaps).
//!
//!     scripts/setup.sh && cargo run --release -p edgefleet-daemon --example bench_v2 -- [REQUESTS] [SWAPS]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgefleet_daemon::serving::{ModelTable, Served};
use edgefleet_daemon::v2::{V2State, router};
use edgefleet_e2e::{PYTHON_SOURCE, cache, magika_features};
use edgefleet_runtime::{Options, Runtime};
use model_registry::ElementType;
use model_registry::golden::HostTensor;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let swaps: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!("RSS before ONNX Runtime is loaded: {:.1} MiB (this benchmark process)", rss_mib());
    let rt = Runtime::shared(Some(&cache("lib/libonnxruntime.so.1.31.1")))?;
    let opts = Options { providers: vec!["CPUExecutionProvider".into()], intra_threads: Some(1) };
    let features = magika_features(PYTHON_SOURCE);
    let data: Vec<u8> = features.iter().flat_map(|x| x.to_le_bytes()).collect();
    let input =
        BTreeMap::from([("bytes".to_owned(), HostTensor::new("bytes", ElementType::Int32, vec![1, 2048], data)?)]);

    // Direct: one session, called in a loop.
    let mut model = rt.open_with(&cache("models/magika/model.onnx"), &opts)?;
    for _ in 0..50 {
        model.run(&input)?;
    }
    let mut direct = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        model.run(&input)?;
        direct.push(t.elapsed());
    }
    drop(model);

    let load = |path: &str, release: u64, slot: &str| {
        Served::load(
            rt,
            &cache(path),
            &opts,
            1,
            "magika".parse().expect("m"),
            edgefleet_protocol::ReleaseVersion::new(release).expect("v"),
            "cpu".parse().expect("v"),
            slot,
        )
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let models = Arc::new(ModelTable::default());
    models.install(load("models/magika/model.onnx", 1, "a")?);
    println!("RSS with magika loaded (1 session): {:.1} MiB", rss_mib());
    let url = tokio.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/v2/models/magika/infer", l.local_addr()?);
        let app = router(V2State { models: models.clone() }, 8 << 20);
        tokio::spawn(async move { axum::serve(l, app).await });
        anyhow::Ok(url)
    })?;
    let body = serde_json::to_vec(
        &serde_json::json!({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": features}]}),
    )?;
    let client = reqwest::Client::new();
    let mut v2 = tokio.block_on(async {
        for _ in 0..50 {
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await?
                .bytes()
                .await?;
        }
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let r = client.post(&url).header("content-type", "application/json").body(body.clone()).send().await?;
            anyhow::ensure!(r.status() == 200);
            r.bytes().await?;
            lat.push(t.elapsed());
        }
        anyhow::Ok(lat)
    })?;
    let (d50, d99, v50, v99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99), pct(&mut v2, 0.5), pct(&mut v2, 0.99));
    println!("magika, batch 1, {n} sequential requests:");
    println!("  direct ort Session::run        p50 {d50:.3} ms  p99 {d99:.3} ms");
    println!("  v2 JSON over HTTP (loopback)   p50 {v50:.3} ms  p99 {v99:.3} ms");
    println!("  overhead                       p50 {:.3} ms  p99 {:.3} ms", v50 - d50, v99 - d99);

    // Swaps under load: 2 clients, a swap whenever 10 more requests went by.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(std::sync::Mutex::new(Vec::<(Instant, Duration)>::new()));
    let mut handles = Vec::new();
    for _ in 0..2 {
        let (client, url, body, stop, failed, done, lat) =
            (client.clone(), url.clone(), body.clone(), stop.clone(), failed.clone(), done.clone(), lat.clone());
        handles.push(tokio.spawn(async move {
            for _ in 0..10_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                let ok = match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                match ok {
                    true => {
                        lat.lock().expect("lock").push((t, t.elapsed()));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    false => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(3));
    let swaps_start = Instant::now();
    let mut rss_after_one = 0.0;
    for i in 0..swaps {
        let seen = done.load(Ordering::Relaxed);
        // The same fp32 model in every release, so the numbers measure the swap, not a slower variant (int8
        // magika is about 3x slower than fp32 on this CPU). Each new release answers one request before it is
        // swapped in, as the daemon's golden-vector run does: ONNX Runtime's first run of a session is slow.
        let slot = if i % 2 == 0 { "b" } else { "a" };
        let next = Arc::new(load("models/magika/model.onnx", 2 + i, slot)?);
        tokio.block_on(next.infer(input.clone()))?;
        models.install_arc(next);
        if i == 1 {
            rss_after_one = rss_mib();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::Relaxed) < seen + 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let swaps_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        tokio.block_on(h)?;
    }
    let all = lat.lock().expect("lock").clone();
    let mut before: Vec<Duration> = all.iter().filter(|(t, _)| *t < swaps_start).map(|(_, d)| *d).collect();
    let mut during: Vec<Duration> =
        all.iter().filter(|(t, _)| *t >= swaps_start && *t < swaps_end).map(|(_, d)| *d).collect();
    println!("{swaps} swaps (fp32 release to fp32 release, each warmed by one request) under load from 2 clients:");
    println!("  failed requests {} of {}", failed.load(Ordering::Relaxed), all.len());
    println!(
        "  p99 before {:.3} ms ({} requests), during {:.3} ms ({} requests)",
        pct(&mut before, 0.99),
        before.len(),
        pct(&mut during, 0.99),
        during.len()
    );
    println!("  RSS after the second swap {rss_after_one:.1} MiB, after {swaps} swaps {:.1} MiB", rss_mib());
    Ok(())
}
