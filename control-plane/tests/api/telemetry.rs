//! The OTLP receiver over real TLS: cumulative points become rollups, duplicates and reordered exports add
//! nothing, a restarted daemon (new start time) and a restarted server (series read back) lose and double
//! nothing, bad input is refused by reason, floods are limited per device, and `/metrics` shows the fleet.

use edgefleet_protocol::telemetry as names;
use edgefleet_protocol::{ModelName, ReleaseVersion};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::helpers::*;
use edgefleet_protocol::api::TokenRole;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn target(model: &str, release: i64) -> Vec<KeyValue> {
    vec![
        kv(names::ATTR_MODEL, model),
        KeyValue {
            key: names::ATTR_RELEASE.into(),
            value: Some(AnyValue { value: Some(any_value::Value::IntValue(release)) }),
            ..Default::default()
        },
        kv(names::ATTR_VARIANT, "cpu-fp32"),
        kv(names::ATTR_PROVIDER, "CPUExecutionProvider"),
    ]
}

fn number(start: u64, time: u64, attrs: Vec<KeyValue>, v: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

fn sum(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

/// What a daemon would export at `time`: `ok` and `err` requests so far, all of them in the 5–10 ms bucket,
/// and `joules` from its energy counter, all since `start`.
fn export(
    device: &str,
    model: &str,
    start: u64,
    time: u64,
    ok: u64,
    err: u64,
    joules: f64,
) -> ExportMetricsServiceRequest {
    Served { device, model, release: 1, bucket: 6, start, time, ok, err, joules }.export()
}

/// A daemon's totals since `start`, as of `time`: release `release` of `model` answered `ok` requests, all
/// in duration bucket `bucket`, and failed `err`; the device's energy counter reads `joules`.
#[derive(Clone, Copy)]
pub struct Served<'a> {
    pub device: &'a str,
    pub model: &'a str,
    pub release: i64,
    pub bucket: usize,
    pub start: u64,
    pub time: u64,
    pub ok: u64,
    pub err: u64,
    pub joules: f64,
}

impl Served<'_> {
    pub fn export(&self) -> ExportMetricsServiceRequest {
        let Served { device, model, release, bucket, start, time, ok, err, joules } = *self;
        let with = |outcome: &str| {
            let mut a = target(model, release);
            a.push(kv(names::ATTR_OUTCOME, outcome));
            a
        };
        let mut counts = vec![0u64; names::DURATION_BUCKETS.len() + 1];
        counts[bucket] = ok;
        let points = vec![number(start, time, with("ok"), ok as f64), number(start, time, with("error"), err as f64)];
        let metrics = vec![
            sum(names::INFERENCE_COUNT, points),
            Metric {
                name: names::INFERENCE_DURATION.into(),
                unit: "s".into(),
                data: Some(Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        attributes: target(model, release),
                        start_time_unix_nano: start,
                        time_unix_nano: time,
                        count: ok,
                        sum: Some(ok as f64 * names::DURATION_BUCKETS[bucket]),
                        bucket_counts: counts,
                        explicit_bounds: names::DURATION_BUCKETS.to_vec(),
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            },
            sum(names::HW_ENERGY, vec![number(start, time, vec![kv("hw.id", "rapl")], joules)]),
        ];
        request(device, metrics)
    }
}

fn request(device: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv(names::RES_DEVICE_ID, device), kv(names::RES_DEVICE_CLASS, "x86-server")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
}

pub async fn post(app: &TestApp, client: &reqwest::Client, req: &ExportMetricsServiceRequest) -> reqwest::Response {
    client
        .post(format!("{}/v1/metrics", app.url))
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .expect("export")
}

/// Posts an export that must be taken; answers the number of points refused and the message.
pub async fn accepted(app: &TestApp, client: &reqwest::Client, req: &ExportMetricsServiceRequest) -> (i64, String) {
    let r = post(app, client, req).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let answer = ExportMetricsServiceResponse::decode(r.bytes().await.expect("body")).expect("an OTLP answer");
    answer.partial_success.map_or((0, String::new()), |p| (p.rejected_data_points, p.error_message))
}

pub async fn magika_release_1(app: &TestApp) -> (ModelName, ReleaseVersion) {
    let publisher = app.token(TokenRole::Publisher).await;
    let m = upload_release(app, &publisher, "magika", 1).await;
    assert_eq!(publish(app, &publisher, signed(&m, &[key(10), key(11)])).await.status(), 201);
    let r = app
        .client()
        .post(app.url("/assignments"))
        .bearer_auth(&app.admin)
        .json(&serde_json::json!({"model": "magika", "version": 1}))
        .send()
        .await
        .expect("assign");
    assert_eq!(r.status(), 201);
    (m.model, m.version)
}

pub async fn report_running(app: &TestApp, dev: &Device) {
    let report = serde_json::json!({"models": [{"model": "magika", "active": {
        "slot": "a", "release": 1, "variant": "cpu-fp32", "provider": "CPUExecutionProvider", "state": "committed"}}]});
    let r = dev.client.post(app.url("/device/checkin")).json(&report).send().await.expect("checkin");
    assert_eq!(r.status(), 200);
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
}

async fn stats(app: &TestApp, model: &ModelName, v: ReleaseVersion) -> edgefleet_server::rollout::Stats {
    assert!(edgefleet_server::telemetry::flush(&app.state).await, "rollups written");
    let rows = app.state.store.release_stats(model, [(v, 0), (v, 0)]).await.expect("stats");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].class, "x86-server");
    rows[0].stats
}

async fn cumulative_points_become_rollups_exactly_once(backend: Backend) {
    let mut app = TestApp::spawn_with(backend, |c| {
        c.telemetry_flush_ms = 3_600_000; // flushed by the test
        c.telemetry_window_secs = 3600;
        c.rollout_eval_secs = 3600.0;
    })
    .await;
    let (model, v1) = magika_release_1(&app).await;
    let dev = app.enroll("dev-1", &[], hardware("x86-server", &["CPUExecutionProvider"])).await;
    report_running(&app, &dev).await;
    let s = now_ns() - 60_000_000_000;
    let at = |secs_ago: u64| now_ns() - secs_ago * 1_000_000_000;

    // First export: its whole value; the same export again adds nothing.
    let a = export("dev-1", "magika", s, at(30), 10, 1, 5.0);
    assert_eq!(accepted(&app, &dev.client, &a).await.0, 0);
    assert_eq!(accepted(&app, &dev.client, &a).await.0, 0);
    let st = stats(&app, &model, v1).await;
    assert_eq!((st.requests, st.errors), (11, 1), "{st:?}");
    // The next: the difference. Energy per inference: 5 J over 11, then 3 J over 5.
    assert_eq!(accepted(&app, &dev.client, &export("dev-1", "magika", s, at(20), 15, 1, 8.0)).await.0, 0);
    let st = stats(&app, &model, v1).await;
    assert_eq!((st.requests, st.errors, st.energy_inferences), (16, 1, 16), "{st:?}");
    let jpi = st.joules_per_inference.expect("energy measured");
    assert!((jpi - 0.5).abs() < 1e-9, "{jpi}");
    let p95 = st.p95_ms.expect("latency");
    assert!((5.0..=10.0).contains(&p95), "p95 {p95} ms in the 5-10 ms bucket");
    // Counters going backwards without a new start time are refused (the ok count and the histogram); the
    // rest of that export (error count, energy) is taken.
    let (refused, why) = accepted(&app, &dev.client, &export("dev-1", "magika", s, at(15), 12, 1, 8.0)).await;
    assert_eq!(refused, 2, "{why}");
    assert!(why.contains("counter_backwards"), "{why}");
    // An older export arriving late adds nothing.
    assert_eq!(accepted(&app, &dev.client, &export("dev-1", "magika", s, at(25), 13, 1, 7.0)).await.0, 0);
    assert_eq!(stats(&app, &model, v1).await.requests, 16);

    // Crash: one export taken but not yet written, then the server dies and comes back.
    assert_eq!(accepted(&app, &dev.client, &export("dev-1", "magika", s, at(10), 20, 1, 9.0)).await.0, 0);
    app.restart().await;
    // The series are read back, so the next export's delta covers the lost one too, counted once.
    assert_eq!(accepted(&app, &dev.client, &export("dev-1", "magika", s, at(5), 22, 2, 10.0)).await.0, 0);
    let st = stats(&app, &model, v1).await;
    assert_eq!((st.requests, st.errors), (24, 2), "{st:?}");
    // The daemon restarted: a new start time, counters from zero; the server adds them whole.
    let s2 = at(3);
    assert_eq!(accepted(&app, &dev.client, &export("dev-1", "magika", s2, at(2), 3, 0, 1.0)).await.0, 0);
    // OTLP JSON, as a collector configured for JSON sends it.
    let json = serde_json::to_vec(&export("dev-1", "magika", s2, at(1), 4, 0, 1.5)).expect("json");
    let r = dev
        .client
        .post(format!("{}/v1/metrics", app.url))
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
        .expect("json export");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let st = stats(&app, &model, v1).await;
    assert_eq!((st.requests, st.errors), (28, 2), "{st:?}");

    // /metrics: a viewer token, bounded labels, the totals this server took in since it started.
    assert_eq!(app.client().get(format!("{}/metrics", app.url)).send().await.expect("metrics").status(), 401);
    let viewer = app.token(TokenRole::Viewer).await;
    let text = app
        .client()
        .get(format!("{}/metrics", app.url))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let ok_line =
        r#"edgefleet_inference_requests_total{model="magika",release="1",device_class="x86-server",outcome="ok"} 11"#;
    assert!(text.contains(ok_line), "since the restart: 7 + 3 + 1 ok\n{text}");
    assert!(text.contains(r#"edgefleet_devices{device_class="x86-server",status="online"} 1"#), "{text}");
    assert!(text.contains("edgefleet_otlp_points_total{result=\"accepted\"}"), "{text}");
    assert!(!text.contains("dev-1"), "no per-device labels");

    // Latency and energy over time, as the dashboard reads them.
    let history: edgefleet_protocol::api::ModelTelemetry = get(&app, &viewer, "/models/magika/telemetry?since=0").await;
    assert_eq!(history.windows.iter().map(|w| w.stats.requests).sum::<u64>(), 28, "{history:?}");
    let w = &history.windows[0];
    assert_eq!((w.release.get(), w.device_class.as_str()), (1, "x86-server"));
    assert!(w.stats.p50_ms.is_some_and(|p| (5.0..=10.0).contains(&p)), "{w:?}");
    assert!(w.stats.joules_per_inference.is_some(), "a device with a sensor: {w:?}");

    // Retention drops whole windows older than the horizon, and nothing newer.
    let now_ms = edgefleet_server::state::now_ms();
    assert_eq!(app.state.store.delete_rollups_before(now_ms - 7_200_000).await.expect("retention"), 0);
    assert!(app.state.store.delete_rollups_before(now_ms + 7_200_000).await.expect("retention") > 0);
    assert!(app.state.store.release_stats(&model, [(v1, 0), (v1, 0)]).await.expect("stats").is_empty());
}

/// A device's routing counters at `time`: per (tier, reason) the requests so far; its cloud calls' failures and
/// bytes sent; `answered` cloud calls, all in duration bucket 9 (50–100 ms).
fn routing_export(
    start: u64,
    time: u64,
    routed: &[(&str, &str, u64)],
    errors: u64,
    bytes: u64,
    answered: u64,
) -> ExportMetricsServiceRequest {
    let release = || {
        let mut a = target("magika", 1);
        a.retain(|kv| kv.key != names::ATTR_PROVIDER);
        a
    };
    let points = routed
        .iter()
        .map(|(tier, reason, n)| {
            let mut a = release();
            a.extend([kv(names::ATTR_TIER, tier), kv(names::ATTR_REASON, reason)]);
            number(start, time, a, *n as f64)
        })
        .collect();
    let cloud = || {
        let mut a = release();
        a.push(kv(names::ATTR_TIER_NAME, "gpu"));
        a
    };
    let mut counts = vec![0u64; names::DURATION_BUCKETS.len() + 1];
    counts[9] = answered;
    let metrics = vec![
        sum(names::ROUTE_REQUESTS, points),
        sum(names::ROUTE_CLOUD_ERRORS, vec![number(start, time, cloud(), errors as f64)]),
        sum(names::ROUTE_CLOUD_BYTES, vec![number(start, time, cloud(), bytes as f64)]),
        Metric {
            name: names::ROUTE_CLOUD_DURATION.into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: cloud(),
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    count: answered,
                    sum: Some(answered as f64 * 0.08),
                    bucket_counts: counts,
                    explicit_bounds: names::DURATION_BUCKETS.to_vec(),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        },
    ];
    request("dev-1", metrics)
}

/// Routed requests roll up per release and class: by reason and tier, and the cloud calls' failures, bytes
/// and latency; the API, `/metrics` and the gate's numbers all show the split.
async fn routed_requests_roll_up_per_release_and_class(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.telemetry_flush_ms = 3_600_000; // flushed by the test
        c.telemetry_window_secs = 3600;
        c.rollout_eval_secs = 3600.0;
        c.metrics_public = true;
    })
    .await;
    let (model, v1) = magika_release_1(&app).await;
    let dev = app.enroll("dev-1", &[], hardware("x86-server", &["CPUExecutionProvider"])).await;
    report_running(&app, &dev).await;
    let s = now_ns() - 60_000_000_000;
    let at = |secs_ago: u64| now_ns() - secs_ago * 1_000_000_000;
    let first = [("local", "rules", 6), ("cloud", "low_confidence", 2), ("cloud", "requested", 1)];
    assert_eq!(accepted(&app, &dev.client, &routing_export(s, at(20), &first, 0, 3000, 3)).await, (0, String::new()));
    // The next export: cumulative, so only the differences count; the cloud failed once and local answered.
    let second = [
        ("local", "rules", 8),
        ("cloud", "low_confidence", 2),
        ("cloud", "requested", 1),
        ("local", "cloud_failed", 1),
    ];
    assert_eq!(accepted(&app, &dev.client, &routing_export(s, at(10), &second, 1, 4000, 3)).await.0, 0);
    let r = stats(&app, &model, v1).await.route;
    assert_eq!((r.requests, r.cloud, r.cloud_errors, r.cloud_bytes, r.cloud_answered), (12, 3, 1, 4000, 3), "{r:?}");
    assert_eq!(r.cloud_share(), Some(0.25));
    let reason = |name: &str| r.by_reason[names::ROUTE_REASONS.iter().position(|n| *n == name).expect("a reason")];
    assert_eq!((reason("rules"), reason("low_confidence"), reason("requested"), reason("cloud_failed")), (8, 2, 1, 1));
    assert!(r.cloud_p95_ms.is_some_and(|p| (50.0..=100.0).contains(&p)), "{r:?}");

    // As the dashboard reads it.
    let viewer = app.token(TokenRole::Viewer).await;
    let history: edgefleet_protocol::api::ModelTelemetry = get(&app, &viewer, "/models/magika/telemetry?since=0").await;
    let route = history.windows.iter().find_map(|w| w.stats.route.clone()).expect("a routed window");
    assert_eq!(
        (route.requests, route.local, route.cloud, route.cloud_errors, route.cloud_bytes_sent),
        (12, 9, 3, 1, 4000)
    );
    assert_eq!(route.by_reason.get("cloud_failed"), Some(&1));
    assert!(!route.by_reason.contains_key("battery"), "reasons not seen are left out: {route:?}");
    // As Prometheus scrapes it.
    let text =
        app.client().get(format!("{}/metrics", app.url)).send().await.expect("metrics").text().await.expect("text");
    let labels = r#"model="magika",release="1",device_class="x86-server""#;
    for line in [
        format!(r#"edgefleet_route_requests_total{{{labels},reason="rules"}} 8"#),
        format!(r#"edgefleet_route_requests_total{{{labels},reason="low_confidence"}} 2"#),
        format!("edgefleet_route_cloud_requests_total{{{labels}}} 3"),
        format!("edgefleet_route_cloud_errors_total{{{labels}}} 1"),
        format!("edgefleet_route_cloud_bytes_total{{{labels}}} 4000"),
        format!(r#"edgefleet_route_cloud_duration_seconds_bucket{{{labels},le="0.1"}} 3"#),
    ] {
        assert!(text.contains(&line), "{line}\n{text}");
    }
}

async fn bad_exports_are_refused_by_reason(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.telemetry_burst = 6.0;
        c.telemetry_exports_per_sec = 0.01;
        c.telemetry_max_export_bytes = 64 << 10;
    })
    .await;
    magika_release_1(&app).await;
    let dev = app.enroll("dev-1", &[], hardware("x86-server", &["CPUExecutionProvider"])).await;
    let other = app.enroll("dev-2", &[], hardware("x86-server", &["CPUExecutionProvider"])).await;
    report_running(&app, &dev).await;
    let (s, t) = (now_ns() - 10_000_000_000, now_ns() - 1_000_000_000);

    // Absurd values and strangers, each refused for its reason; nothing else in the export is lost.
    let mut neg = export("dev-1", "magika", s, t, 5, 0, 1.0);
    if let Some(Data::Histogram(h)) = &mut neg.resource_metrics[0].scope_metrics[0].metrics[1].data {
        h.data_points[0].sum = Some(-1.0);
    }
    let nan = Metric {
        name: names::HW_POWER.into(),
        data: Some(Data::Gauge(Gauge { data_points: vec![number(0, t, vec![], f64::NAN)] })),
        ..Default::default()
    };
    neg.resource_metrics[0].scope_metrics[0].metrics.push(nan);
    let unknown =
        export("dev-1", "silero-vad", s, t, 5, 0, 1.0).resource_metrics[0].scope_metrics[0].metrics[0].clone();
    neg.resource_metrics[0].scope_metrics[0].metrics.push(unknown);
    let (refused, why) = accepted(&app, &dev.client, &neg).await;
    assert_eq!(refused, 4, "negative duration, NaN power, two silero-vad counts: {why}");
    for reason in ["negative", "not_finite", "unknown_model"] {
        assert!(why.contains(reason), "{reason}: {why}");
    }
    // An export naming another device is refused whole.
    let (refused, why) = accepted(&app, &dev.client, &export("dev-2", "magika", s, t, 5, 0, 1.0)).await;
    assert_eq!(refused, 4, "{why}");
    assert!(why.contains("device_mismatch"), "{why}");
    // Garbage, the wrong content type, people and strangers.
    let garbage = dev
        .client
        .post(format!("{}/v1/metrics", app.url))
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff, 0x01])
        .send()
        .await
        .expect("post");
    assert_error(garbage, 400, "malformed_otlp").await;
    let text = dev.client.post(format!("{}/v1/metrics", app.url)).header("content-type", "text/plain").body("x").send();
    assert_error(text.await.expect("post"), 415, "unsupported_media_type").await;
    let viewer = app.token(TokenRole::Viewer).await;
    let as_person = app
        .client()
        .post(format!("{}/v1/metrics", app.url))
        .bearer_auth(&viewer)
        .header("content-type", "application/x-protobuf")
        .body(ExportMetricsServiceRequest::default().encode_to_vec())
        .send();
    assert_error(as_person.await.expect("post"), 403, "forbidden").await;
    let anonymous = app.client().post(format!("{}/v1/metrics", app.url)).send();
    assert_error(anonymous.await.expect("post"), 401, "unauthorized").await;
    // An export over the size limit is refused on its Content-Length. The server answers before reading the
    // body, so a client still writing it may see the connection close first: try a few times (as another
    // device, whose burst is untouched), and one answer must be the 413.
    let mut too_large = None;
    for _ in 0..5 {
        let huge = other
            .client
            .post(format!("{}/v1/metrics", app.url))
            .header("content-type", "application/x-protobuf")
            .body(vec![0u8; 128 << 10])
            .send()
            .await;
        if let Ok(r) = huge {
            too_large = Some(r);
            break;
        }
    }
    assert_error(too_large.expect("one attempt reads the answer"), 413, "too_large").await;

    // A flood from one device: its burst (6, four spent above), then 429 with Retry-After; others unaffected.
    let empty = ExportMetricsServiceRequest::default();
    let mut limited = None;
    for _ in 0..5 {
        let r = post(&app, &dev.client, &empty).await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the flood is limited");
    assert!(r.headers().get("retry-after").is_some());
    assert_error(r, 429, "rate_limited").await;
    assert_eq!(post(&app, &other.client, &empty).await.status(), 200, "another device is unaffected");
    // The receiver counted every refusal by reason.
    let c = &app.state.ingest.counters;
    use edgefleet_server::telemetry::otlp::Reason;
    assert_eq!(c.refused(Reason::Negative), 1);
    assert_eq!(c.refused(Reason::NotFinite), 1);
    assert_eq!(c.refused(Reason::UnknownModel), 2);
    assert_eq!(c.refused(Reason::DeviceMismatch), 4);
    assert!(c.exports_malformed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert!(c.exports_rate_limited.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

/// The official OpenTelemetry Python SDK with its stock OTLP/HTTP exporter, over mutual TLS with the device's
/// certificate: its int counters and its millisecond histogram with the SDK's default buckets are taken, its
/// application metric is ignored.
async fn a_stock_opentelemetry_sdk_exporter_is_understood(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.telemetry_flush_ms = 3_600_000).await;
    let (model, v1) = magika_release_1(&app).await;
    let dev = app.enroll("sdk-1", &[], hardware("x86-server", &["CPUExecutionProvider"])).await;
    report_running(&app, &dev).await;
    let dir = app.dir.path();
    std::fs::write(dir.join("device.crt"), &dev.enrolled.certificate_pem).expect("cert");
    std::fs::write(dir.join("device.key"), &dev.key_pem).expect("key");
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh", python.display());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/otel_sdk_export.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("{}/v1/metrics", app.url))
        .arg(app.state.config.data_dir.join("tls/server.crt"))
        .arg(dir.join("device.crt"))
        .arg(dir.join("device.key"))
        .arg("sdk-1")
        .output()
        .await
        .expect("run the Python SDK");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    let st = stats(&app, &model, v1).await;
    assert_eq!((st.requests, st.errors), (8, 1), "{st:?}");
    let p95 = st.p95_ms.expect("latency");
    assert!((5.0..=10.0).contains(&p95), "8 ms in the SDK's (5, 10] ms bucket lands in ours: p95 {p95} ms");
    // No energy counter sent: energy per inference is absent, never zero.
    let history: edgefleet_protocol::api::ModelTelemetry =
        get(&app, &app.admin, "/models/magika/telemetry?since=0").await;
    assert!(!history.windows.is_empty() && history.windows.iter().all(|w| w.stats.joules_per_inference.is_none()));
    let c = &app.state.ingest.counters;
    assert!(c.points_ignored.load(std::sync::atomic::Ordering::Relaxed) >= 1, "app.requests is not edgefleet's");
    use edgefleet_server::telemetry::otlp::Reason;
    assert!(Reason::ALL.iter().all(|r| c.refused(*r) == 0), "nothing refused");
}

/// Every metric a Grafana panel in `dashboards/grafana/` queries is one the server exports (its `# TYPE` lines,
/// with a histogram's `_bucket`, `_sum` and `_count`), so a renamed metric cannot leave a dashboard blank.
async fn grafana_panels_query_only_exported_metrics(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.metrics_public = true).await;
    let text =
        app.client().get(format!("{}/metrics", app.url)).send().await.expect("metrics").text().await.expect("text");
    let mut exported = std::collections::BTreeSet::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (name, kind) = (parts.next().expect("name"), parts.next().expect("kind"));
        exported.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                exported.insert(format!("{name}{suffix}"));
            }
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/grafana");
    let mut queried = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards/grafana") {
        let path = entry.expect("entry").path();
        let dash: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("JSON");
        for panel in dash["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a PromQL expression");
                let mut rest = expr;
                while let Some(i) = rest.find("edgefleet_") {
                    let name: String =
                        rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    rest = &rest[i + name.len()..];
                    queried.insert((name, path.file_name().expect("name").to_string_lossy().into_owned()));
                }
            }
        }
    }
    assert!(queried.len() >= 10, "the dashboards query {} metrics", queried.len());
    for (name, file) in &queried {
        assert!(exported.contains(name), "{file} queries {name}, which /metrics does not export");
    }
}

crate::both_backends!(
    grafana_panels_query_only_exported_metrics,
    routed_requests_roll_up_per_release_and_class,
    cumulative_points_become_rollups_exactly_once,
    bad_exports_are_refused_by_reason,
    a_stock_opentelemetry_sdk_exporter_is_understood
);
