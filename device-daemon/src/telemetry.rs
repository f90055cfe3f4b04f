//! Telemetry: OpenTelemetry metrics, cumulative temporality, exported over OTLP/HTTP protobuf to the control
//! plane's `/v1/metrics` (or any collector) through the daemon's own mutual-TLS HTTP client. Cumulative sums
//! and histograms make a lost export harmless: the next one carries the totals.
//!
//! Instruments (attributes `model`, `release`, `variant`, `provider` where they apply):
//! - `edgefleet.inference.duration` (histogram, s, buckets from 100 µs) and `edgefleet.inference.count`
//!   (counter, by `outcome` = ok | error), recorded on the request path by `Served`;
//! - for language models, `gen_ai.server.time_to_first_token` and `gen_ai.server.time_per_output_token`
//!   (histograms, s, GenAI semantic conventions) and `edgefleet.llm.tokens` (counter, by `gen_ai.token.type` =
//!   input | output); their requests count in `edgefleet.inference.*` too, with the time to first token as
//!   the duration;
//! - `edgefleet.route.requests` (counter, by `tier` = local | cloud and `reason`), and for requests sent to a
//!   cloud tier `edgefleet.route.cloud.duration` (histogram, s), `.errors` and `.bytes_sent` (counters, by
//!   `tier_name`);
//! - `edgefleet.install.events` (counter, by `kind`: installed, verification_failed, rolled_back, …);
//! - `process.memory.usage` (gauge, By, the daemon's resident set);
//! - `hw.power` (gauge, W) and `hw.energy` (counter, J) following OpenTelemetry's hardware conventions, only
//!   where a sensor exists (`power::discover`); no sensor, no instrument.
//!
//! Resource: `device.id`, `edgefleet.device.class`, `host.arch`, `service.name` = edgefleet-daemon.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

use crate::power;

use edgefleet_protocol::telemetry as names;
pub use edgefleet_protocol::telemetry::DURATION_BUCKETS;

/// The meter every daemon instrument comes from (a no-op until [`start`] installs a provider).
pub fn meter() -> Meter {
    opentelemetry::global::meter("edgefleet-daemon")
}

/// The attributes every per-release point carries.
fn release_attributes(model: &str, release: u64, variant: &str, provider: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::new(names::ATTR_MODEL, model.to_owned()),
        KeyValue::new(names::ATTR_RELEASE, release as i64),
        KeyValue::new(names::ATTR_VARIANT, variant.to_owned()),
        KeyValue::new(names::ATTR_PROVIDER, provider.to_owned()),
    ]
}

/// A release's request-path instruments, with its attributes built once.
#[derive(Debug, Clone)]
pub struct InferenceInstruments {
    duration: Histogram<f64>,
    count: Counter<u64>,
    ok: Arc<[KeyValue]>,
    error: Arc<[KeyValue]>,
}

impl InferenceInstruments {
    pub fn new(model: &str, release: u64, variant: &str, provider: &str) -> Self {
        let m = meter();
        let base = release_attributes(model, release, variant, provider);
        let with = |outcome: &'static str| {
            let mut v = base.clone();
            v.push(KeyValue::new(names::ATTR_OUTCOME, outcome));
            Arc::from(v)
        };
        Self {
            duration: m
                .f64_histogram(names::INFERENCE_DURATION)
                .with_unit("s")
                .with_description("Time to answer one inference request, queueing for a session included")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            count: m.u64_counter(names::INFERENCE_COUNT).with_description("Inference requests by outcome").build(),
            ok: with("ok"),
            error: with("error"),
        }
    }

    pub fn record(&self, ok: bool, took: Duration) {
        let attrs = if ok { &self.ok } else { &self.error };
        self.count.add(1, attrs);
        if ok {
            self.duration.record(took.as_secs_f64(), &self.ok[..4]);
        }
    }
}

/// A language-model release's instruments: time to first token, time per output token, tokens in and out.
#[derive(Debug, Clone)]
pub struct LlmInstruments {
    ttft: Histogram<f64>,
    tpot: Histogram<f64>,
    tokens: Counter<u64>,
    base: Arc<[KeyValue]>,
    input: Arc<[KeyValue]>,
    output: Arc<[KeyValue]>,
}

impl LlmInstruments {
    pub fn new(model: &str, release: u64, variant: &str, provider: &str) -> Self {
        let m = meter();
        let base = release_attributes(model, release, variant, provider);
        let with = |kind: &'static str| {
            let mut v = base.clone();
            v.push(KeyValue::new(names::ATTR_TOKEN_TYPE, kind));
            Arc::from(v)
        };
        let histogram = |name: &'static str, what: &'static str| {
            m.f64_histogram(name)
                .with_unit("s")
                .with_description(what)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        Self {
            ttft: histogram(names::LLM_TTFT, "Time from a request to its first generated token, queueing included"),
            tpot: histogram(names::LLM_TPOT, "Time per generated token after the first"),
            tokens: m
                .u64_counter(names::LLM_TOKENS)
                .with_description("Tokens read (input) and written (output)")
                .build(),
            input: with("input"),
            output: with("output"),
            base: Arc::from(base),
        }
    }

    /// One answered request: its time to first token (if a token came), time per later token, and its tokens.
    pub fn record(
        &self,
        ttft: Option<Duration>,
        per_token: Option<Duration>,
        prompt_tokens: u64,
        completion_tokens: u64,
    ) {
        if let Some(t) = ttft {
            self.ttft.record(t.as_secs_f64(), &self.base);
        }
        if let Some(t) = per_token {
            self.tpot.record(t.as_secs_f64(), &self.base);
        }
        self.tokens.add(prompt_tokens, &self.input);
        self.tokens.add(completion_tokens, &self.output);
    }
}

/// Counts one language-model request by who answered and why.
pub fn routed(model: &str, local: Option<(u64, &str)>, tier: &'static str, reason: &'static str) {
    let mut attrs = vec![
        KeyValue::new(names::ATTR_MODEL, model.to_owned()),
        KeyValue::new(names::ATTR_TIER, tier),
        KeyValue::new(names::ATTR_REASON, reason),
    ];
    attrs.extend(local_release(local));
    meter()
        .u64_counter(names::ROUTE_REQUESTS)
        .with_description("Language-model requests by the tier that answered and why")
        .build()
        .add(1, &attrs);
}

/// The attributes naming the local release in force, when one serves: the control plane rolls route metrics up
/// per release with them.
fn local_release(local: Option<(u64, &str)>) -> Vec<KeyValue> {
    local.map_or_else(Vec::new, |(release, variant)| {
        vec![KeyValue::new(names::ATTR_RELEASE, release as i64), KeyValue::new(names::ATTR_VARIANT, variant.to_owned())]
    })
}

/// One request sent to cloud tier `tier_name`: its bytes, and how long the answer took or that it failed.
pub fn cloud_call(
    model: &str,
    local: Option<(u64, &str)>,
    tier_name: &str,
    bytes_sent: u64,
    answered: Option<Duration>,
) {
    let m = meter();
    let mut attrs = vec![
        KeyValue::new(names::ATTR_MODEL, model.to_owned()),
        KeyValue::new(names::ATTR_TIER_NAME, tier_name.to_owned()),
    ];
    attrs.extend(local_release(local));
    m.u64_counter(names::ROUTE_CLOUD_BYTES).with_unit("By").build().add(bytes_sent, &attrs);
    match answered {
        Some(took) => m
            .f64_histogram(names::ROUTE_CLOUD_DURATION)
            .with_unit("s")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build()
            .record(took.as_secs_f64(), &attrs),
        None => m.u64_counter(names::ROUTE_CLOUD_ERRORS).build().add(1, &attrs),
    }
}

/// Counts an install step's event (installed, verification_failed, rolled_back, …).
pub fn install_event(kind: &str, model: &str, release: u64, variant: &str) {
    meter()
        .u64_counter(names::INSTALL_EVENTS)
        .with_description("Install steps and their failures, by kind")
        .build()
        .add(
            1,
            &[
                KeyValue::new(names::ATTR_KIND, kind.to_owned()),
                KeyValue::new(names::ATTR_MODEL, model.to_owned()),
                KeyValue::new(names::ATTR_RELEASE, release as i64),
                KeyValue::new(names::ATTR_VARIANT, variant.to_owned()),
            ],
        );
}

/// The daemon's HTTPS client, replaced when its certificate is renewed.
pub type SharedClient = Arc<arc_swap::ArcSwap<reqwest::Client>>;

pub fn shared(client: reqwest::Client) -> SharedClient {
    Arc::new(arc_swap::ArcSwap::from_pointee(client))
}

/// The OTLP exporter's HTTP client: the daemon's reqwest client (mutual TLS to the control plane, the current
/// certificate), run on the daemon's tokio runtime (the SDK's periodic reader exports from a thread of its own).
#[derive(Debug, Clone)]
struct DaemonHttp {
    client: SharedClient,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for DaemonHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.load_full();
        let (parts, body) = request.into_parts();
        let mut req = client.request(parts.method, parts.uri.to_string()).body(body).timeout(Duration::from_secs(30));
        for (name, value) in &parts.headers {
            req = req.header(name, value);
        }
        let resp = self
            .runtime
            .spawn(async move {
                let r = req.send().await?;
                let status = r.status();
                // The collector's answer is a few bytes; one past 64 KiB is an error, read no further.
                let body = crate::capped::body(r, crate::capped::SMALL_BYTES, "the collector's answer").await?;
                anyhow::Ok((status, Bytes::from(body)))
            })
            .await?
            .map_err(HttpError::from)?;
        Ok(Response::builder().status(resp.0).body(resp.1)?)
    }
}

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct Config {
    /// The OTLP/HTTP metrics endpoint, e.g. `https://cp:8443/v1/metrics`.
    pub endpoint: String,
    pub interval: Duration,
    pub device_id: String,
    pub device_class: String,
    pub arch: String,
}

/// The running telemetry: shut it down to send a last export.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkMeterProvider,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "telemetry shutdown");
        }
    }
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Installs the meter provider (global) and its periodic OTLP export; registers the process-memory gauge and,
/// where `power` is a sensor, `hw.power` and `hw.energy`. Call from within the tokio runtime.
pub fn start(config: &Config, client: SharedClient, power: Option<power::Source>) -> anyhow::Result<Telemetry> {
    let http = DaemonHttp { client, runtime: tokio::runtime::Handle::current() };
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_http_client(http)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.endpoint.clone())
        .with_temporality(Temporality::Cumulative)
        .build()?;
    let reader = PeriodicReader::builder(exporter).with_interval(config.interval).build();
    let resource = Resource::builder()
        .with_service_name("edgefleet-daemon")
        .with_attributes([
            KeyValue::new(names::RES_DEVICE_ID, config.device_id.clone()),
            KeyValue::new(names::RES_DEVICE_CLASS, config.device_class.clone()),
            KeyValue::new(names::RES_ARCH, config.arch.clone()),
        ])
        .build();
    let provider = SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
    opentelemetry::global::set_meter_provider(provider.clone());
    let m = meter();
    let _memory = m
        .u64_observable_gauge(names::PROCESS_MEMORY)
        .with_unit("By")
        .with_callback(|g| {
            if let Some(b) = resident_bytes() {
                g.observe(b, &[]);
            }
        })
        .build();
    if let Some(source) = power {
        let attrs = [KeyValue::new("hw.id", source.kind()), KeyValue::new("hw.type", "power_supply")];
        let started = Instant::now();
        let meter_state = Arc::new(Mutex::new(power::Meter::default()));
        let read = {
            let (source, meter_state) = (source.clone(), meter_state.clone());
            move || {
                let mut m = meter_state.lock().unwrap_or_else(|p| p.into_inner());
                match source.read() {
                    Ok(r) => m.update(r, started.elapsed()),
                    Err(e) => tracing::debug!(error = %e, "power sensor unreadable"),
                }
                (m.joules, m.watts)
            }
        };
        let (a2, last) = (attrs.clone(), meter_state.clone());
        let _energy = m
            .f64_observable_counter(names::HW_ENERGY)
            .with_unit("J")
            .with_description("Energy used by the device since the daemon started, from its sensor")
            .with_callback(move |c| c.observe(read().0, &attrs))
            .build();
        let _power = m
            .f64_observable_gauge(names::HW_POWER)
            .with_unit("W")
            .with_description("Power drawn by the device, from its sensor")
            .with_callback(move |g| {
                // The energy callback takes the readings; this one reports the latest power figure.
                if let Some(w) = last.lock().unwrap_or_else(|p| p.into_inner()).watts {
                    g.observe(w, &a2);
                }
            })
            .build();
    }
    Ok(Telemetry { provider })
}
