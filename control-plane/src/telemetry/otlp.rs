//! From an OTLP export to checked points: which of edgefleet's metrics each point is, about which model,
//! release, variant and provider, and its cumulative value. Pure; everything refused is refused with a reason.
//!
//! Accepted: cumulative monotonic sums (`edgefleet.inference.count`, `edgefleet.install.events`, `hw.energy`),
//! cumulative explicit-bucket histograms (`edgefleet.inference.duration`, in s or ms, with any bounds: they
//! are re-bucketed onto [`DURATION_BUCKETS`]) and gauges (`hw.power`, `process.memory.usage`); for language
//! models also tokens, time to first token and per output token, and how requests were routed (`edgefleet.route.*`:
//! by tier and reason, and cloud calls' latency, failures and bytes sent). Other metrics are ignored (a stock SDK
//! sends its own), and counted as such; so are route points that name no local release (answered while none
//! served), which no release's numbers can hold.

use edgefleet_protocol::telemetry::{self as names, DURATION_BUCKETS};
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion, VariantId};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, HistogramDataPoint, Metric, NumberDataPoint, metric::Data, number_data_point,
};

/// Buckets of a re-bucketed histogram: one per bound and one above the last.
pub const NBUCKETS: usize = DURATION_BUCKETS.len() + 1;

/// Why a point (or a whole export) was refused. Counted by reason; never a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The export names another device than the certificate that sent it.
    DeviceMismatch,
    /// Attributes missing or not valid names (model, release, variant, provider, outcome, kind).
    BadAttributes,
    /// Delta temporality, or a non-monotonic sum where a counter belongs.
    NotCumulative,
    MissingStartTime,
    /// NaN or infinite.
    NotFinite,
    /// A negative counter, duration, power or memory figure.
    Negative,
    /// Bucket counts that do not add up, bounds that do not rise, a count/bounds length mismatch.
    BadHistogram,
    /// A timestamp more than five minutes ahead of the server's clock, or before its start time.
    BadTime,
    /// About a release the server did not tell the device to run.
    UnknownModel,
    /// A counter below its last value with the same start time.
    CounterBackwards,
    /// A new series past the cap of series one device may have.
    TooManySeries,
    /// A counter that rose faster than a device could possibly serve.
    Implausible,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::DeviceMismatch,
        Reason::BadAttributes,
        Reason::NotCumulative,
        Reason::MissingStartTime,
        Reason::NotFinite,
        Reason::Negative,
        Reason::BadHistogram,
        Reason::BadTime,
        Reason::UnknownModel,
        Reason::CounterBackwards,
        Reason::TooManySeries,
        Reason::Implausible,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DeviceMismatch => "device_mismatch",
            Reason::BadAttributes => "bad_attributes",
            Reason::NotCumulative => "not_cumulative",
            Reason::MissingStartTime => "missing_start_time",
            Reason::NotFinite => "not_finite",
            Reason::Negative => "negative",
            Reason::BadHistogram => "bad_histogram",
            Reason::BadTime => "bad_time",
            Reason::UnknownModel => "unknown_model",
            Reason::CounterBackwards => "counter_backwards",
            Reason::TooManySeries => "too_many_series",
            Reason::Implausible => "implausible_rate",
        }
    }
}

/// What a release on a device is: the attributes a rollup is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub model: ModelName,
    pub release: ReleaseVersion,
    pub variant: VariantId,
    /// Empty for install events, which happen before a provider runs anything.
    pub provider: String,
}

/// Which of edgefleet's metrics a point is.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    Inferences {
        target: Target,
        ok: bool,
    },
    Duration {
        target: Target,
    },
    /// A language model's time to first token (histogram).
    Ttft {
        target: Target,
    },
    /// A language model's time per output token (histogram).
    Tpot {
        target: Target,
    },
    /// A language model's tokens read (`output` false) or written.
    Tokens {
        target: Target,
        output: bool,
    },
    Install {
        target: Target,
        kind: String,
    },
    /// A language-model request routed: answered by the cloud or locally, for the reason at this index of
    /// [`names::ROUTE_REASONS`].
    Routed {
        target: Target,
        cloud: bool,
        reason: usize,
    },
    /// Cloud calls: how long answered ones took (histogram), failed ones, request bytes sent.
    CloudDuration {
        target: Target,
    },
    CloudErrors {
        target: Target,
    },
    CloudBytes {
        target: Target,
    },
    Energy,
    Power,
    Memory,
}

/// One checked point. Cumulative values are a vector: a counter `[value]`; a histogram
/// `[count, sum, bucket 0, …, bucket 16]`; a gauge `[value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub what: What,
    pub metric: &'static str,
    /// Identifies the series among the device's: a stable 64-bit hash (FNV-1a) of the metric and every
    /// attribute, so the persisted series stay small.
    pub key: u64,
    pub start_ns: u64,
    pub time_ns: u64,
    pub values: Vec<f64>,
}

impl Point {
    pub fn is_gauge(&self) -> bool {
        matches!(self.what, What::Power | What::Memory)
    }
}

/// An export taken apart.
#[derive(Debug, Default)]
pub struct Decoded {
    pub points: Vec<Point>,
    pub refused: Vec<(Reason, String)>,
    /// Points of metrics edgefleet does not keep.
    pub ignored: u64,
    /// The device class the resource names, when it does.
    pub class: Option<String>,
}

fn text(v: &Option<AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| text(&kv.value))
}

fn short_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic())
}

fn target(attrs: &[KeyValue], with_provider: bool) -> Result<Target, String> {
    let model: ModelName = attr(attrs, names::ATTR_MODEL)
        .ok_or("no model attribute")?
        .parse()
        .map_err(|e: edgefleet_protocol::IdError| e.to_string())?;
    let release = attr(attrs, names::ATTR_RELEASE)
        .ok_or("no release attribute")?
        .parse::<u64>()
        .ok()
        .and_then(|v| ReleaseVersion::new(v).ok())
        .ok_or("release is not a version number")?;
    let variant: VariantId = attr(attrs, names::ATTR_VARIANT)
        .ok_or("no variant attribute")?
        .parse()
        .map_err(|e: edgefleet_protocol::IdError| e.to_string())?;
    let provider = if with_provider {
        attr(attrs, names::ATTR_PROVIDER).filter(|p| short_name(p)).ok_or("no valid provider attribute")?
    } else {
        String::new()
    };
    Ok(Target { model, release, variant, provider })
}

fn series_key(metric: &str, attrs: &[KeyValue]) -> u64 {
    // FNV-1a over the metric and the attributes sorted by key: stable across builds and Rust versions (the
    // keys are persisted), unlike std's hasher; no allocation but the sort's.
    fn feed(h: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
    }
    let mut sorted: Vec<&KeyValue> = attrs.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut h = feed(0xcbf2_9ce4_8422_2325, metric.as_bytes());
    for kv in sorted {
        h = feed(feed(h, b"|"), kv.key.as_bytes());
        h = feed(h, b"=");
        h = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => feed(h, s.as_bytes()),
            Some(any_value::Value::IntValue(i)) => feed(h, i.to_string().as_bytes()),
            _ => h,
        };
    }
    h
}

/// A number point's value: present, finite, not negative (counters, energy, power and memory all are).
fn number(name: &str, p: &NumberDataPoint) -> Result<f64, (Reason, String)> {
    let v = match p.value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => return Err((Reason::BadAttributes, format!("{name}: a point without a value"))),
    };
    if !v.is_finite() {
        return Err((Reason::NotFinite, format!("{name} is {v}")));
    }
    if v < 0.0 {
        return Err((Reason::Negative, format!("{name} is {v}")));
    }
    Ok(v)
}

/// Checks times shared by every point kind.
fn times(start: u64, time: u64, cumulative: bool, now_ns: u64) -> Result<(), (Reason, String)> {
    const SKEW_NS: u64 = 300 * 1_000_000_000;
    if cumulative && start == 0 {
        return Err((Reason::MissingStartTime, "a cumulative point needs its start time".into()));
    }
    if time == 0 || time > now_ns.saturating_add(SKEW_NS) || (cumulative && time < start) {
        return Err((Reason::BadTime, format!("time {time} ns is in the future or before its start {start}")));
    }
    Ok(())
}

/// Maps a histogram's buckets onto [`DURATION_BUCKETS`]: each source bucket's count goes to the bucket that
/// holds its upper bound (exact when the bounds are ours; otherwise latency is read at most one bucket high).
fn rebucket(bounds_s: &[f64], counts: &[u64]) -> [u64; NBUCKETS] {
    let mut out = [0u64; NBUCKETS];
    for (i, &c) in counts.iter().enumerate() {
        let j = match bounds_s.get(i) {
            Some(&upper) => DURATION_BUCKETS.iter().position(|&b| upper <= b * (1.0 + 1e-9)).unwrap_or(NBUCKETS - 1),
            None => NBUCKETS - 1,
        };
        out[j] += c;
    }
    out
}

fn histogram(p: &HistogramDataPoint, scale: f64) -> Result<Vec<f64>, (Reason, String)> {
    let bad = |m: &str| Err((Reason::BadHistogram, m.to_owned()));
    if p.bucket_counts.len() != p.explicit_bounds.len() + 1 && !(p.bucket_counts.is_empty() && p.count == 0) {
        return bad("bucket counts must be one more than the bounds");
    }
    if p.explicit_bounds.iter().any(|b| !b.is_finite()) || p.explicit_bounds.windows(2).any(|w| w[0] >= w[1]) {
        return bad("bounds must be finite and rise");
    }
    if p.bucket_counts.iter().try_fold(0u64, |a, &c| a.checked_add(c)) != Some(p.count) {
        return bad("bucket counts do not add up to the count");
    }
    let sum = p.sum.unwrap_or(0.0) * scale;
    if !sum.is_finite() {
        return Err((Reason::NotFinite, "histogram sum is not finite".into()));
    }
    if sum < 0.0 || p.min.is_some_and(|m| m < 0.0) {
        return Err((Reason::Negative, "a duration below zero".into()));
    }
    let bounds: Vec<f64> = p.explicit_bounds.iter().map(|b| b * scale).collect();
    let mut v = vec![p.count as f64, sum];
    v.extend(rebucket(&bounds, &p.bucket_counts).iter().map(|&c| c as f64));
    Ok(v)
}

/// How many data points a metric carries, whatever its kind.
fn points(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// Takes an export apart for `device`. `now_ns` is the server's clock.
pub fn decode(req: &ExportMetricsServiceRequest, device: &DeviceId, now_ns: u64) -> Decoded {
    let mut out = Decoded::default();
    let cumulative = AggregationTemporality::Cumulative as i32;
    for rm in &req.resource_metrics {
        let res_attrs = rm.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
        if let Some(named) = attr(res_attrs, names::RES_DEVICE_ID)
            && named != device.as_str()
        {
            let count = rm.scope_metrics.iter().flat_map(|s| &s.metrics).map(points).sum();
            let why = format!("resource names device {named:?}, the certificate {device}");
            out.refused.extend(std::iter::repeat_n((Reason::DeviceMismatch, why), count));
            continue;
        }
        if let Some(c) = attr(res_attrs, names::RES_DEVICE_CLASS).filter(|c| short_name(c)) {
            out.class = Some(c);
        }
        for metric in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
            let name = metric.name.as_str();
            match (name, &metric.data) {
                (
                    names::INFERENCE_COUNT
                    | names::INSTALL_EVENTS
                    | names::HW_ENERGY
                    | names::LLM_TOKENS
                    | names::ROUTE_REQUESTS
                    | names::ROUTE_CLOUD_ERRORS
                    | names::ROUTE_CLOUD_BYTES,
                    Some(Data::Sum(sum)),
                ) => {
                    for p in &sum.data_points {
                        if unattributed(name, &p.attributes) {
                            out.ignored += 1;
                            continue;
                        }
                        let r = counter_point(
                            name,
                            sum.aggregation_temporality == cumulative && sum.is_monotonic,
                            p,
                            now_ns,
                        );
                        push(&mut out, r);
                    }
                }
                (
                    names::INFERENCE_DURATION | names::LLM_TTFT | names::LLM_TPOT | names::ROUTE_CLOUD_DURATION,
                    Some(Data::Histogram(h)),
                ) => {
                    let scale = match metric.unit.as_str() {
                        "ms" => Some(1e-3),
                        "us" | "µs" => Some(1e-6),
                        "s" | "" => Some(1.0),
                        _ => None,
                    };
                    for p in &h.data_points {
                        if unattributed(name, &p.attributes) {
                            out.ignored += 1;
                            continue;
                        }
                        let r = match scale {
                            None => Err((
                                Reason::BadAttributes,
                                format!("duration unit {:?} is not s, ms or us", metric.unit),
                            )),
                            Some(scale) => {
                                duration_point(name, h.aggregation_temporality == cumulative, p, scale, now_ns)
                            }
                        };
                        push(&mut out, r);
                    }
                }
                (names::HW_POWER | names::PROCESS_MEMORY, Some(Data::Gauge(g))) => {
                    for p in &g.data_points {
                        push(&mut out, gauge_point(name, p, now_ns));
                    }
                }
                (
                    names::INFERENCE_COUNT
                    | names::INSTALL_EVENTS
                    | names::HW_ENERGY
                    | names::INFERENCE_DURATION
                    | names::LLM_TOKENS
                    | names::LLM_TTFT
                    | names::LLM_TPOT
                    | names::ROUTE_REQUESTS
                    | names::ROUTE_CLOUD_ERRORS
                    | names::ROUTE_CLOUD_BYTES
                    | names::ROUTE_CLOUD_DURATION,
                    _,
                )
                | (names::HW_POWER | names::PROCESS_MEMORY, _) => {
                    let why = format!("{name} is not of the expected kind (cumulative sum, histogram or gauge)");
                    out.refused.extend(std::iter::repeat_n((Reason::NotCumulative, why), points(metric).max(1)));
                }
                _ => out.ignored += points(metric) as u64,
            }
        }
    }
    out
}

/// A route metric's point that names no local release: counted on the device, not in any release's numbers.
fn unattributed(name: &str, attrs: &[KeyValue]) -> bool {
    name.starts_with("edgefleet.route.") && attr(attrs, names::ATTR_RELEASE).is_none()
}

/// The static name of one of edgefleet's metrics.
fn metric_name(name: &str) -> &'static str {
    [
        names::INFERENCE_COUNT,
        names::INFERENCE_DURATION,
        names::INSTALL_EVENTS,
        names::HW_ENERGY,
        names::HW_POWER,
        names::PROCESS_MEMORY,
        names::LLM_TTFT,
        names::LLM_TPOT,
        names::LLM_TOKENS,
        names::ROUTE_REQUESTS,
        names::ROUTE_CLOUD_DURATION,
        names::ROUTE_CLOUD_ERRORS,
        names::ROUTE_CLOUD_BYTES,
    ]
    .into_iter()
    .find(|n| *n == name)
    .unwrap_or("metric")
}

fn push(out: &mut Decoded, r: Result<Point, (Reason, String)>) {
    match r {
        Ok(p) => out.points.push(p),
        Err(e) => out.refused.push(e),
    }
}

fn counter_point(name: &str, cumulative: bool, p: &NumberDataPoint, now_ns: u64) -> Result<Point, (Reason, String)> {
    if !cumulative {
        return Err((Reason::NotCumulative, format!("{name} must be a cumulative monotonic sum")));
    }
    times(p.start_time_unix_nano, p.time_unix_nano, true, now_ns)?;
    let v = number(name, p)?;
    let bad = |e: String| (Reason::BadAttributes, format!("{name}: {e}"));
    let what = match name {
        names::INFERENCE_COUNT => {
            let ok = match attr(&p.attributes, names::ATTR_OUTCOME).as_deref() {
                Some("ok") => true,
                Some("error") => false,
                _ => return Err(bad("outcome must be ok or error".into())),
            };
            What::Inferences { target: target(&p.attributes, true).map_err(bad)?, ok }
        }
        names::INSTALL_EVENTS => {
            let kind = attr(&p.attributes, names::ATTR_KIND).filter(|k| short_name(k)).ok_or(bad("no kind".into()))?;
            What::Install { target: target(&p.attributes, false).map_err(bad)?, kind }
        }
        names::LLM_TOKENS => {
            let output = match attr(&p.attributes, names::ATTR_TOKEN_TYPE).as_deref() {
                Some("input") => false,
                Some("output") => true,
                _ => return Err(bad(format!("{} must be input or output", names::ATTR_TOKEN_TYPE))),
            };
            What::Tokens { target: target(&p.attributes, true).map_err(bad)?, output }
        }
        names::ROUTE_REQUESTS => {
            let cloud = match attr(&p.attributes, names::ATTR_TIER).as_deref() {
                Some("local") => false,
                Some("cloud") => true,
                _ => return Err(bad(format!("{} must be local or cloud", names::ATTR_TIER))),
            };
            let reason = attr(&p.attributes, names::ATTR_REASON)
                .and_then(|r| names::ROUTE_REASONS.iter().position(|n| *n == r))
                .ok_or_else(|| bad(format!("{} is not one of the routing reasons", names::ATTR_REASON)))?;
            What::Routed { target: target(&p.attributes, false).map_err(bad)?, cloud, reason }
        }
        names::ROUTE_CLOUD_ERRORS => What::CloudErrors { target: target(&p.attributes, false).map_err(bad)? },
        names::ROUTE_CLOUD_BYTES => What::CloudBytes { target: target(&p.attributes, false).map_err(bad)? },
        _ => What::Energy,
    };
    Ok(Point {
        what,
        metric: metric_name(name),
        key: series_key(name, &p.attributes),
        start_ns: p.start_time_unix_nano,
        time_ns: p.time_unix_nano,
        values: vec![v],
    })
}

/// A histogram of seconds: inference duration, time to first token or time per output token.
fn duration_point(
    name: &str,
    cumulative: bool,
    p: &HistogramDataPoint,
    scale: f64,
    now_ns: u64,
) -> Result<Point, (Reason, String)> {
    let metric = metric_name(name);
    if !cumulative {
        return Err((Reason::NotCumulative, format!("{metric} must be cumulative")));
    }
    times(p.start_time_unix_nano, p.time_unix_nano, true, now_ns)?;
    // A cloud call ran on no local provider.
    let with_provider = metric != names::ROUTE_CLOUD_DURATION;
    let target = target(&p.attributes, with_provider).map_err(|e| (Reason::BadAttributes, format!("{metric}: {e}")))?;
    let what = match metric {
        names::LLM_TTFT => What::Ttft { target },
        names::LLM_TPOT => What::Tpot { target },
        names::ROUTE_CLOUD_DURATION => What::CloudDuration { target },
        _ => What::Duration { target },
    };
    Ok(Point {
        what,
        metric,
        key: series_key(metric, &p.attributes),
        start_ns: p.start_time_unix_nano,
        time_ns: p.time_unix_nano,
        values: histogram(p, scale)?,
    })
}

fn gauge_point(name: &str, p: &NumberDataPoint, now_ns: u64) -> Result<Point, (Reason, String)> {
    times(p.start_time_unix_nano, p.time_unix_nano, false, now_ns)?;
    let v = number(name, p)?;
    Ok(Point {
        what: if name == names::HW_POWER { What::Power } else { What::Memory },
        metric: metric_name(name),
        key: series_key(name, &p.attributes),
        start_ns: p.start_time_unix_nano,
        time_ns: p.time_unix_nano,
        values: vec![v],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics, Sum};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        }
    }

    fn counter(name: &str, points: Vec<Vec<KeyValue>>) -> ExportMetricsServiceRequest {
        let data_points = points
            .into_iter()
            .map(|attributes| NumberDataPoint {
                attributes,
                start_time_unix_nano: 1,
                time_unix_nano: 2,
                value: Some(number_data_point::Value::AsInt(3)),
                ..Default::default()
            })
            .collect();
        let metric = Metric {
            name: name.into(),
            data: Some(Data::Sum(Sum {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics { metrics: vec![metric], ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn route_points_are_checked_and_those_without_a_local_release_ignored() {
        let release = |tier: &str, reason: &str| {
            vec![
                kv(names::ATTR_MODEL, "chat"),
                kv(names::ATTR_RELEASE, "3"),
                kv(names::ATTR_VARIANT, "cpu-q4-1"),
                kv(names::ATTR_TIER, tier),
                kv(names::ATTR_REASON, reason),
            ]
        };
        let no_release = vec![
            kv(names::ATTR_MODEL, "chat"),
            kv(names::ATTR_TIER, "cloud"),
            kv(names::ATTR_REASON, "local_not_ready"),
        ];
        let req = counter(
            names::ROUTE_REQUESTS,
            vec![
                release("cloud", "low_confidence"),
                release("local", "rules"),
                release("moon", "rules"),
                release("cloud", "because"),
                no_release,
            ],
        );
        let d = decode(&req, &"dev-1".parse().expect("id"), 10);
        let routed: Vec<(bool, &str)> = d
            .points
            .iter()
            .map(|p| match &p.what {
                What::Routed { target, cloud, reason } => {
                    assert_eq!(
                        (target.model.as_str(), target.release.get(), target.provider.as_str()),
                        ("chat", 3, "")
                    );
                    (*cloud, names::ROUTE_REASONS[*reason])
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(routed, [(true, "low_confidence"), (false, "rules")]);
        let refused: Vec<&str> = d
            .refused
            .iter()
            .map(|(r, why)| {
                assert_eq!(*r, Reason::BadAttributes);
                why.as_str()
            })
            .collect();
        assert!(refused[0].contains("local or cloud") && refused[1].contains("routing reasons"), "{refused:?}");
        assert_eq!(d.ignored, 1, "a route point without a local release belongs to no release");
        let bytes = counter(
            names::ROUTE_CLOUD_BYTES,
            vec![vec![
                kv(names::ATTR_MODEL, "chat"),
                kv(names::ATTR_RELEASE, "3"),
                kv(names::ATTR_VARIANT, "cpu-q4-1"),
                kv(names::ATTR_TIER_NAME, "gpu"),
            ]],
        );
        let d = decode(&bytes, &"dev-1".parse().expect("id"), 10);
        assert!(matches!(d.points[..], [Point { what: What::CloudBytes { .. }, ref values, .. }] if values == &[3.0]));
    }

    #[test]
    fn rebucketing_keeps_our_bounds_exact_and_moves_others_up() {
        let ours: Vec<f64> = DURATION_BUCKETS.to_vec();
        let counts: Vec<u64> = (1..=NBUCKETS as u64).collect();
        assert_eq!(rebucket(&ours, &counts).to_vec(), counts);
        // A stock SDK's default bounds in ms (0, 5, 10, 25, ..., 10000) read as seconds / 1000.
        let sdk: Vec<f64> =
            [0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0, 10000.0]
                .iter()
                .map(|ms| ms / 1000.0)
                .collect();
        let mut counts = vec![0u64; sdk.len() + 1];
        counts[2] = 7; // (5 ms, 10 ms]
        counts[sdk.len()] = 1; // over 10 s
        let r = rebucket(&sdk, &counts);
        assert_eq!(r[6], 7, "10 ms is our bound 6: {r:?}");
        assert_eq!(r[NBUCKETS - 1], 1);
        assert_eq!(r.iter().sum::<u64>(), 8);
    }
}
