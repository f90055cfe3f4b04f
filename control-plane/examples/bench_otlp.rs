//! OTLP ingest and rollout evaluation for BENCHMARKS.md.
//!
//!     cargo run --release -p edgefleet-server --example bench_otlp -- ingest [DEVICES] [ROUNDS] [DATABASE_URL]
//!     cargo run --release -p edgefleet-server --example bench_otlp -- evaluate [DEVICES] [DATABASE_URL]
//!
//! `ingest`: every device sends ROUNDS exports shaped as edgefleet-daemon's (inference count ok and error, a
//! duration histogram, an install-events counter, energy, power, memory: 7 points), pre-encoded as protobuf.
//! Two threads do what the receiver does per export (protobuf decode, check, cumulative-to-delta, rollup)
//! while the flusher writes rollups and series to the database every second, as the server does; the clock
//! stops when the last flush has committed. HTTP and TLS are not in it (see the check-in benchmark for those).
//!
//! `evaluate`: DEVICES devices' rollups (half on the baseline, half on the new release, over 3 device classes)
//! are written, then one rollout evaluation is timed: the per-class aggregation query and the planner.
//!
//! SQLite goes to a temporary directory unless a URL is given; for Postgres create the database first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_protocol::telemetry::{self as names, DURATION_BUCKETS};
use edgefleet_protocol::{DeviceId, ReleaseVersion};
use edgefleet_server::rollout::{Gate, OnFailure, Rollout, State, Wave, engine, evaluate};
use edgefleet_server::store::Store;
use edgefleet_server::telemetry::otlp::{self, NBUCKETS, Target};
use edgefleet_server::telemetry::{Batch, Ingest, Rollup, RollupKey, Settings};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn s(k: &str, v: &str) -> KeyValue {
    kv(k, any_value::Value::StringValue(v.into()))
}

fn point(start: u64, time: u64, attrs: Vec<KeyValue>, v: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

fn sum(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    let data = Sum {
        data_points: points,
        aggregation_temporality: AggregationTemporality::Cumulative as i32,
        is_monotonic: true,
    };
    Metric { name: name.into(), data: Some(Data::Sum(data)), ..Default::default() }
}

/// Device `d`'s export of round `r`: 7 points.
fn export(d: usize, r: u64, start: u64, time: u64) -> Vec<u8> {
    let target = || {
        vec![
            s(names::ATTR_MODEL, "magika"),
            kv(names::ATTR_RELEASE, any_value::Value::IntValue(1)),
            s(names::ATTR_VARIANT, "cpu-fp32"),
            s(names::ATTR_PROVIDER, "CPUExecutionProvider"),
        ]
    };
    let with = |k: &str, v: &str| {
        let mut a = target();
        a.push(s(k, v));
        a
    };
    let n = 100 * (r + 1);
    let mut counts = vec![0u64; NBUCKETS];
    counts[6] = n;
    let hist = HistogramDataPoint {
        attributes: target(),
        start_time_unix_nano: start,
        time_unix_nano: time,
        count: n,
        sum: Some(n as f64 * 0.008),
        bucket_counts: counts,
        explicit_bounds: DURATION_BUCKETS.to_vec(),
        ..Default::default()
    };
    let gauge = |name: &str, v: f64| Metric {
        name: name.into(),
        data: Some(Data::Gauge(Gauge { data_points: vec![point(0, time, vec![], v)] })),
        ..Default::default()
    };
    let metrics = vec![
        sum(
            names::INFERENCE_COUNT,
            vec![
                point(start, time, with("outcome", "ok"), n as f64),
                point(start, time, with("outcome", "error"), 1.0),
            ],
        ),
        Metric {
            name: names::INFERENCE_DURATION.into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![hist],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        },
        sum(
            names::INSTALL_EVENTS,
            vec![point(
                start,
                time,
                vec![s("kind", "committed")].into_iter().chain(target().into_iter().take(3)).collect(),
                1.0,
            )],
        ),
        sum(names::HW_ENERGY, vec![point(start, time, vec![s("hw.id", "rapl")], (r + 1) as f64 * 30.0)]),
        gauge(names::HW_POWER, 4.5),
        gauge(names::PROCESS_MEMORY, 50e6),
    ];
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    s(names::RES_DEVICE_ID, &format!("dev-{d:07}")),
                    s(names::RES_DEVICE_CLASS, "x86-server"),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            ..Default::default()
        }],
    };
    req.encode_to_vec()
}

async fn store(url: Option<String>) -> anyhow::Result<(Store, Option<tempfile::TempDir>)> {
    Ok(match url {
        Some(u) => (Store::connect(&u).await?, None),
        None => {
            let dir = tempfile::tempdir()?;
            let u = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
            (Store::connect(&u).await?, Some(dir))
        }
    })
}

async fn flush(store: &Store, ingest: &Ingest) -> anyhow::Result<(usize, usize)> {
    let batch = ingest.take();
    let n = (batch.rollups.len(), batch.series.len());
    store.write_telemetry(&batch, 0).await?;
    Ok(n)
}

async fn ingest_bench(devices: usize, rounds: u64, url: Option<String>) -> anyhow::Result<()> {
    let (store, _dir) = store(url).await?;
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    let start = now_ns - 3_600_000_000_000;
    let t = Instant::now();
    let exports: Vec<Vec<Vec<u8>>> = (0..rounds)
        .map(|r| (0..devices).map(|d| export(d, r, start, start + (r + 1) * 60_000_000_000)).collect())
        .collect();
    let ids: Vec<DeviceId> = (0..devices).map(|d| format!("dev-{d:07}").parse()).collect::<Result<_, _>>()?;
    let bytes: usize = exports.iter().flatten().map(Vec::len).sum();
    println!(
        "encoded {} exports ({:.0} MB) in {:.1} s",
        devices as u64 * rounds,
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let ingest =
        Arc::new(Ingest::new(Settings { window_ms: 60_000, exports_per_sec: 1e9, burst: 1e9, recent_ms: 300_000 }));
    let exports = Arc::new(exports);
    let ids = Arc::new(ids);
    let now_ms = (now_ns / 1_000_000) as i64;
    let t = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (ingest, exports, ids) = (ingest.clone(), exports.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut refused = 0usize;
                for round in exports.iter() {
                    for d in (w..devices).step_by(2) {
                        let req = ExportMetricsServiceRequest::decode(round[d].as_slice()).expect("decode");
                        let decoded = otlp::decode(&req, &ids[d], now_ns);
                        refused += ingest.apply(&ids[d], decoded, |_, _| true, now_ms).refused.len();
                    }
                }
                (refused, Instant::now())
            })
        })
        .collect();
    let mut flushes = 0;
    let mut written = (0, 0);
    while workers.iter().any(|w| !w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let n = flush(&store, &ingest).await?;
        written = (written.0 + n.0, written.1 + n.1);
        flushes += 1;
    }
    let done: Vec<(usize, Instant)> = workers.into_iter().map(|w| w.join().expect("worker")).collect();
    let refused: usize = done.iter().map(|d| d.0).sum();
    let applied = done.iter().map(|d| d.1).max().unwrap_or(t) - t;
    let n = flush(&store, &ingest).await?;
    written = (written.0 + n.0, written.1 + n.1);
    let total = t.elapsed();
    let points = devices as u64 * rounds * 7;
    println!(
        "{points} points from {devices} devices x {rounds} exports: decoded, checked and rolled up in {:.2} s; \
         written ({} rollup rows, {} series rows, {} flushes) by {:.2} s: {:.0} points/s into {:?}; {refused} refused",
        applied.as_secs_f64(),
        written.0,
        written.1,
        flushes + 1,
        total.as_secs_f64(),
        points as f64 / total.as_secs_f64(),
        store.backend
    );
    Ok(())
}

async fn evaluate_bench(devices: usize, url: Option<String>) -> anyhow::Result<()> {
    let (store, _dir) = store(url).await?;
    let classes = ["x86-server", "jetson-orin", "raspberry-pi"];
    let t = Instant::now();
    let window = 1_000_000;
    for chunk in (0..devices).collect::<Vec<_>>().chunks(50_000) {
        let mut batch = Batch::default();
        for &d in chunk {
            let release = ReleaseVersion::new(1 + (d % 2) as u64)?;
            let mut buckets = [0u64; NBUCKETS];
            buckets[6 + d % 2] = 100;
            batch.rollups.push((
                RollupKey {
                    device: format!("dev-{d:07}").parse()?,
                    target: Target {
                        model: "magika".parse()?,
                        release,
                        variant: "cpu".parse()?,
                        provider: "CPU".into(),
                    },
                    window_start: window,
                },
                Rollup {
                    class: classes[d % 3].into(),
                    ok: 100,
                    errors: (d % 7 == 0) as u64,
                    buckets,
                    ..Rollup::default()
                },
            ));
        }
        store.write_telemetry(&batch, 0).await?;
    }
    println!("wrote {devices} devices' rollups in {:.1} s", t.elapsed().as_secs_f64());
    let r = Rollout {
        id: "bench".into(),
        model: "magika".parse()?,
        selector: Default::default(),
        baseline: ReleaseVersion::new(1)?,
        release: ReleaseVersion::new(2)?,
        waves: vec![
            Wave { percent: 50.0, cohort: None, bake_secs: 0 },
            Wave { percent: 100.0, cohort: None, bake_secs: 0 },
        ],
        gates: vec![Gate::ErrorRate { max_increase: 0.01 }, Gate::P95LatencyRatio { max: 1.2 }],
        min_samples: 100,
        on_failure: OnFailure::Pause,
        choose_variant: Default::default(),
    };
    for run in 0..3 {
        let t = Instant::now();
        let rows = store.release_stats(&r.model, [(r.release, 0), (r.baseline, 0)]).await?;
        let queried = t.elapsed();
        let e = evaluate(&r, &State::Running { wave: 0, since: 0 }, &engine::observations(&r, &rows), false, 1);
        println!(
            "run {run}: aggregation over {devices} devices {:.0} ms, planner {:.1} µs; {} gates, next state {}",
            queried.as_secs_f64() * 1e3,
            (t.elapsed() - queried).as_secs_f64() * 1e6,
            e.gates.len(),
            e.state.name()
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("ingest") => {
            let devices = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100_000);
            let rounds = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
            rt.block_on(ingest_bench(devices, rounds, args.get(3).cloned()))
        }
        Some("evaluate") => {
            let devices = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
            rt.block_on(evaluate_bench(devices, args.get(2).cloned()))
        }
        _ => anyhow::bail!("usage: bench_otlp ingest [DEVICES] [ROUNDS] [URL] | evaluate [DEVICES] [URL]"),
    }
}
