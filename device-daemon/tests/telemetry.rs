//! The daemon's OpenTelemetry metrics, decoded by a collector of the test's own with the OpenTelemetry protobuf
//! definitions (`opentelemetry-proto`): inference counts by outcome and durations per release, cumulative;
//! resource attributes; process memory; power where a sensor exists and nothing where none does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use edgefleet_daemon::serving::Served;
use edgefleet_daemon::telemetry::{Config, start};
use edgefleet_e2e::cache;
use edgefleet_runtime::{Options, Runtime};
use model_registry::golden::HostTensor;
use model_registry::manifest::ElementType;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use prost::Message;

type Exports = Arc<Mutex<Vec<ExportMetricsServiceRequest>>>;
type Attrs = BTreeMap<String, String>;
/// Per metric name: each point's attributes, value (a histogram's count) and temporality (0 for gauges).
type Points = BTreeMap<String, Vec<(Attrs, f64, i32)>>;

async fn collect(State(seen): State<Exports>, body: Bytes) -> axum::http::StatusCode {
    match ExportMetricsServiceRequest::decode(body) {
        Ok(req) => {
            seen.lock().expect("lock").push(req);
            axum::http::StatusCode::OK
        }
        Err(_) => axum::http::StatusCode::BAD_REQUEST,
    }
}

async fn collector() -> (String, Exports) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seen = Exports::default();
    let app = axum::Router::new().route("/v1/metrics", axum::routing::post(collect)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1/metrics", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (url, seen)
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(kv: &[KeyValue]) -> Attrs {
    kv.iter().map(|k| (k.key.clone(), text(&k.value))).collect()
}

/// The points of the newest export, by metric name: (attributes, value, temporality); histograms give their count.
fn latest(seen: &Exports) -> (Attrs, Points) {
    let seen = seen.lock().expect("lock");
    let Some(req) = seen.last() else { return Default::default() };
    let mut resource = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for rm in &req.resource_metrics {
        if let Some(r) = &rm.resource {
            resource = attrs(&r.attributes);
        }
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let num = |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
                    Some(number_data_point::Value::AsInt(i)) => i as f64,
                    Some(number_data_point::Value::AsDouble(d)) => d,
                    None => f64::NAN,
                };
                let points = out.entry(m.name.clone()).or_default();
                match &m.data {
                    Some(Data::Sum(s)) => points.extend(
                        s.data_points.iter().map(|p| (attrs(&p.attributes), num(p), s.aggregation_temporality)),
                    ),
                    Some(Data::Gauge(g)) => {
                        points.extend(g.data_points.iter().map(|p| (attrs(&p.attributes), num(p), 0)))
                    }
                    Some(Data::Histogram(h)) => points.extend(
                        h.data_points.iter().map(|p| (attrs(&p.attributes), p.count as f64, h.aggregation_temporality)),
                    ),
                    _ => {}
                }
            }
        }
    }
    (resource, out)
}

fn config(endpoint: String) -> Config {
    Config {
        endpoint,
        interval: Duration::from_millis(200),
        device_id: "edge-7".into(),
        device_class: "x86-server".into(),
        arch: "x86_64".into(),
    }
}

fn magika() -> Arc<Served> {
    let runtime = Runtime::shared(Some(&cache("lib/libonnxruntime.so.1.31.1"))).expect("ONNX Runtime");
    let options = Options { providers: vec!["CPUExecutionProvider".into()], intra_threads: Some(1) };
    Arc::new(
        Served::load(
            runtime,
            &cache("models/magika/model.onnx"),
            &options,
            1,
            "magika".parse().expect("m"),
            edgefleet_protocol::ReleaseVersion::new(4).expect("v"),
            "cpu-fp32".parse().expect("v"),
            "a",
        )
        .expect("load"),
    )
}

fn input(len: usize) -> BTreeMap<String, HostTensor> {
    let data: Vec<u8> = std::iter::repeat_n(7i32, len).flat_map(|x| x.to_le_bytes()).collect();
    BTreeMap::from([(
        "bytes".into(),
        HostTensor::new("bytes", ElementType::Int32, vec![1, len], data).expect("tensor"),
    )])
}

/// Waits (bounded, 20 s) for an export that satisfies `ok`.
async fn until<T>(seen: &Exports, what: &str, mut ok: impl FnMut(&Points) -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(t) = ok(&latest(seen).1) {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no export showed {what}: {:#?}", latest(seen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_metrics_and_power_reach_an_otlp_collector() {
    let (url, seen) = collector().await;
    let hw = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(hw.path().join("sys/class/hwmon/hwmon2")).expect("mkdir");
    std::fs::write(hw.path().join("sys/class/hwmon/hwmon2/power1_input"), "176000\n").expect("power");
    let power = edgefleet_daemon::power::discover(hw.path());
    let telemetry =
        start(&config(url), edgefleet_daemon::telemetry::shared(reqwest::Client::new()), power).expect("telemetry");
    let served = magika();
    for _ in 0..5 {
        served.infer(input(2048)).await.expect("inference");
    }
    // A request ONNX Runtime refuses (the wrong length reaches it directly here): counted as an error.
    assert!(served.infer(input(100)).await.is_err());

    let counts = until(&seen, "5 ok and 1 error", |m| {
        let points = m.get("edgefleet.inference.count")?;
        let by: BTreeMap<String, (f64, i32)> =
            points.iter().map(|(a, v, t)| (a.get("outcome").cloned().unwrap_or_default(), (*v, *t))).collect();
        (by.get("ok")?.0 == 5.0 && by.get("error")?.0 == 1.0).then_some(points.clone())
    })
    .await;
    let (a, _, temporality) = &counts[0];
    assert_eq!(*temporality, 2, "cumulative (AGGREGATION_TEMPORALITY_CUMULATIVE)");
    for (k, v) in [("model", "magika"), ("release", "4"), ("variant", "cpu-fp32"), ("provider", "CPUExecutionProvider")]
    {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "{a:?}");
    }
    let m = latest(&seen).1;
    let durations = &m["edgefleet.inference.duration"];
    assert_eq!((durations[0].1, durations[0].2), (5.0, 2), "5 answered requests in a cumulative histogram");
    assert!(m["process.memory.usage"][0].1 > 10e6, "{:?}", m["process.memory.usage"]);
    let watts = until(&seen, "hw.power", |m| m.get("hw.power").map(|p| p[0].1)).await;
    assert!((watts - 0.176).abs() < 1e-9, "{watts}");
    assert!(latest(&seen).1.contains_key("hw.energy"), "hw.energy is exported beside hw.power");
    let (resource, _) = latest(&seen);
    assert_eq!(resource.get("device.id").map(String::as_str), Some("edge-7"));
    assert_eq!(resource.get("edgefleet.device.class").map(String::as_str), Some("x86-server"));
    assert_eq!(resource.get("service.name").map(String::as_str), Some("edgefleet-daemon"));
    telemetry.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_a_power_sensor_exports_no_power_at_all() {
    let (url, seen) = collector().await;
    let telemetry =
        start(&config(url), edgefleet_daemon::telemetry::shared(reqwest::Client::new()), None).expect("telemetry");
    let served = magika();
    served.infer(input(2048)).await.expect("inference");
    let m = until(&seen, "an inference", |m| m.contains_key("edgefleet.inference.count").then(|| m.clone())).await;
    assert!(!m.keys().any(|k| k.starts_with("hw.")), "no sensor, no number: {:?}", m.keys().collect::<Vec<_>>());
    telemetry.shutdown();
}
