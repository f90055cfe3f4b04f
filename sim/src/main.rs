//! `edgefleet-sim`: a fleet of N virtual devices in one process, against a real `edgefleet-server`, speaking
//! the real protocol over TLS: each device enrolls with its own key and one-time token (mutual TLS from then
//! on), checks in with its report (`If-None-Match`, answered 304 while nothing changed), exports OpenTelemetry
//! metrics (OTLP/HTTP protobuf) and reports events. A configurable share of devices misbehave: malformed
//! check-ins, certificates from another CA, and floods from a few devices. It prints throughput and latency
//! percentiles and what the server refused and why.
//!
//! Bounded in time (`--duration-secs`) and requests (`--max-requests`); meant for loopback.
//!
//! A device's identity is its TLS connection: each session opens a connection with one device's certificate,
//! makes `--session-checkins` check-ins over it (keep-alive, as a daemon's long-lived client does), then hands
//! over to the next device, round-robin over the fleet.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use edgefleet_protocol::telemetry as names;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Parser)]
#[command(about = "Simulate a fleet of devices against a real edgefleet-server (loopback only)")]
struct Args {
    /// The control plane, `https://127.0.0.1:8443`.
    #[arg(long)]
    server: String,
    /// The server's certificate (PEM), the trust anchor.
    #[arg(long)]
    server_ca: PathBuf,
    /// An operator API token (to create one enrollment token per device).
    #[arg(long, env = "EDGEFLEET_TOKEN")]
    token: String,
    /// Virtual devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Device classes and their shares, `class=weight,...`.
    #[arg(long, default_value = "x86-server=40,nvidia-jetson=25,qualcomm-hexagon=20,raspberry-pi=10,intel-npu=5")]
    classes: String,
    /// Devices acting at once (one connection each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Check-ins per device session (over one keep-alive connection) before the next device takes over.
    #[arg(long, default_value_t = 20)]
    session_checkins: u64,
    /// Every Nth check-in of a session is followed by an OTLP export (0: none).
    #[arg(long, default_value_t = 10)]
    otlp_every: u64,
    /// Every Nth check-in of a session is followed by an event (0: none).
    #[arg(long, default_value_t = 20)]
    event_every: u64,
    /// Share of check-ins sent malformed (0.0-1.0).
    #[arg(long, default_value_t = 0.0)]
    malformed_rate: f64,
    /// Connections attempted with a certificate from a CA the server does not know.
    #[arg(long, default_value_t = 0)]
    bad_cert_attempts: u64,
    /// Devices that send OTLP exports back to back for the whole run (the server limits each device).
    #[arg(long, default_value_t = 0)]
    flood_devices: usize,
    /// How long the run phase lasts, at most.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// Requests in the run phase, at most.
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// Device ids are this prefix and a number.
    #[arg(long, default_value = "sim-")]
    id_prefix: String,
    /// The model the devices report running (OTLP points name it).
    #[arg(long, default_value = "magika")]
    model: String,
    /// Keep the enrolled identities here (JSON lines) and reuse them on the next run.
    #[arg(long)]
    identities: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Instead of the load run, measure convergence: every device holds a long-poll check-in (`?wait=`) with
    /// its document's ETag, as a daemon does; once all do, the simulator (as the operator) assigns
    /// `MODEL:VERSION` (a published release) to the whole fleet and times how long each device takes to receive
    /// its new signed document. Bounded by --duration-secs.
    #[arg(long, value_name = "MODEL:VERSION")]
    converge_to: Option<String>,
    /// With --converge-to: the long-poll each check-in asks for, seconds.
    #[arg(long, default_value_t = 10)]
    converge_wait_secs: u64,
    /// After the run: the operator revokes every device of the fleet, and each then tries one check-in, which
    /// must be refused (the churn half of a fleet's life). Bounded by another --duration-secs.
    #[arg(long)]
    revoke_all: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    id: String,
    class: String,
    cert_pem: String,
    key_pem: String,
}

/// What one worker saw: outcomes by name, and latencies in microseconds by kind.
#[derive(Debug, Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
    latency_us: BTreeMap<&'static str, Vec<u32>>,
}

impl Tally {
    fn count(&mut self, outcome: impl Into<String>) {
        *self.outcomes.entry(outcome.into()).or_default() += 1;
    }
    fn time(&mut self, kind: &'static str, since: Instant) {
        self.latency_us.entry(kind).or_default().push(since.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    fn merge(&mut self, o: Tally) {
        for (k, v) in o.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        for (k, mut v) in o.latency_us {
            self.latency_us.entry(k).or_default().append(&mut v);
        }
    }
}

/// Outcomes that mean the server or the simulator misbehaved (as opposed to refusals the run provoked).
fn unexpected(outcome: &str) -> bool {
    outcome.starts_with("UNEXPECTED") || outcome.contains("transport error")
}

struct Run {
    args: Args,
    roots: rustls::RootCertStore,
    fleet: Vec<Identity>,
    next: AtomicUsize,
    requests: AtomicU64,
    deadline: Instant,
}

impl Run {
    fn budget_left(&self) -> bool {
        Instant::now() < self.deadline && self.requests.fetch_add(1, Ordering::Relaxed) < self.args.max_requests
    }
}

fn tls(roots: &rustls::RootCertStore, identity: Option<(&str, &str)>) -> anyhow::Result<reqwest::Client> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone());
    let config = match identity {
        Some((cert, key)) => {
            let chain = rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key = rustls_pemfile::private_key(&mut key.as_bytes())?.context("no private key")?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(15))
        .build()?)
}

fn classes(spec: &str) -> anyhow::Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (c, w) = part.split_once('=').with_context(|| format!("class {part:?}: CLASS=WEIGHT"))?;
        out.push((c.trim().to_owned(), w.trim().parse().with_context(|| format!("class {part:?}: a weight"))?));
    }
    if out.iter().map(|(_, w)| w).sum::<u32>() == 0 {
        bail!("--classes needs at least one class with a weight above 0");
    }
    Ok(out)
}

/// The class of device `i`: spread by weight, deterministic.
fn class_of(classes: &[(String, u32)], i: usize) -> String {
    let total: u32 = classes.iter().map(|(_, w)| w).sum();
    let mut slot = (i as u64 * 2_654_435_761 % total as u64) as u32;
    for (c, w) in classes {
        if slot < *w {
            return c.clone();
        }
        slot -= w;
    }
    classes[0].0.clone()
}

async fn enroll_one(
    admin: &reqwest::Client,
    anon: &reqwest::Client,
    args: &Args,
    id: String,
    class: String,
    t: &mut Tally,
) -> anyhow::Result<Identity> {
    let started = Instant::now();
    let r = admin
        .post(format!("{}/api/v1/enrollment-tokens", args.server))
        .bearer_auth(&args.token)
        .json(&serde_json::json!({"labels": {"sim": "true"}, "expires_in_secs": 3600}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("creating an enrollment token: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    let token = r.json::<serde_json::Value>().await?["token"].as_str().context("token")?.to_owned();
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?.pem()?;
    let hardware = serde_json::json!({"device_class": class, "arch": "aarch64",
        "execution_providers": ["CPUExecutionProvider"], "memory_bytes": 4u64 << 30, "soc": [], "power": "unavailable"});
    let r = anon
        .post(format!("{}/api/v1/enroll", args.server))
        .json(&serde_json::json!({"token": token, "device_id": id, "csr_pem": csr, "hardware": hardware}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("enrolling {id}: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    let cert = r.json::<serde_json::Value>().await?["certificate_pem"].as_str().context("certificate")?.to_owned();
    t.time("enroll", started);
    Ok(Identity { id, class, cert_pem: cert, key_pem: key.serialize_pem() })
}

async fn enroll_fleet(args: &Args, roots: &rustls::RootCertStore) -> anyhow::Result<(Vec<Identity>, Tally)> {
    if let Some(path) = &args.identities
        && path.exists()
    {
        let text = std::fs::read_to_string(path)?;
        let fleet: Vec<Identity> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        if fleet.len() >= args.devices {
            return Ok((fleet.into_iter().take(args.devices).collect(), Tally::default()));
        }
    }
    let classes = classes(&args.classes)?;
    let (admin, anon) = (tls(roots, None)?, tls(roots, None)?);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let shared = Arc::new((admin, anon, classes));
    for _ in 0..args.concurrency.max(1) {
        let (next, shared) = (next.clone(), shared.clone());
        let args = args.clone();
        tasks.spawn(async move {
            let mut t = Tally::default();
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.devices {
                    break;
                }
                let id = format!("{}{i:07}", args.id_prefix);
                let identity = enroll_one(&shared.0, &shared.1, &args, id, class_of(&shared.2, i), &mut t).await?;
                made.push(identity);
            }
            anyhow::Ok((made, t))
        });
    }
    let (mut fleet, mut tally) = (Vec::new(), Tally::default());
    while let Some(done) = tasks.join_next().await {
        let (made, t) = done??;
        fleet.extend(made);
        tally.merge(t);
    }
    fleet.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(path) = &args.identities {
        let lines: Vec<String> = fleet.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
        std::fs::write(path, lines.join("\n") + "\n")?;
    }
    Ok((fleet, tally))
}

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

/// A daemon's cumulative request counter as of now: `ok` answered since `start` (ns).
fn otlp_export(device: &Identity, model: &str, start: u64, ok: u64) -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let s = |v: &str| any_value::Value::StringValue(v.into());
    let attrs = vec![
        kv(names::ATTR_MODEL, s(model)),
        kv(names::ATTR_RELEASE, any_value::Value::IntValue(1)),
        kv(names::ATTR_VARIANT, s("cpu")),
        kv(names::ATTR_PROVIDER, s("CPUExecutionProvider")),
        kv(names::ATTR_OUTCOME, s("ok")),
    ];
    let point = NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: now.max(start + 1),
        value: Some(number_data_point::Value::AsDouble(ok as f64)),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv(names::RES_DEVICE_ID, s(&device.id)),
                    kv(names::RES_DEVICE_CLASS, s(&device.class)),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: names::INFERENCE_COUNT.into(),
                    data: Some(Data::Sum(Sum {
                        data_points: vec![point],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn report(model: &str) -> serde_json::Value {
    serde_json::json!({"models": [{"model": model, "active": {"slot": "a", "release": 1, "variant": "cpu",
        "provider": "CPUExecutionProvider", "state": "committed"}}]})
}

/// The error code in an API error body, or the status.
async fn refusal(kind: &str, r: reqwest::Response) -> String {
    let status = r.status().as_u16();
    let code = r
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(String::from))
        .unwrap_or_default();
    format!("{kind} refused {status} {code}").trim_end().to_owned()
}

/// One device's session: a connection with its certificate and `session_checkins` check-ins over it.
async fn session(run: &Run, device: &Identity, seq: u64, t: &mut Tally) -> anyhow::Result<()> {
    let a = &run.args;
    let started = Instant::now();
    let client = tls(&run.roots, Some((&device.cert_pem, &device.key_pem)))?;
    t.time("client setup", started);
    let body = report(&a.model);
    let mut etag: Option<String> = None;
    let otlp_start = 1_000_000_000 + seq; // one series per session: a daemon that restarted
    for k in 1..=a.session_checkins {
        if !run.budget_left() {
            break;
        }
        let malformed = a.malformed_rate > 0.0 && ((seq * 7919 + k) % 10_000) as f64 / 10_000.0 < a.malformed_rate;
        let mut req = client.post(format!("{}/api/v1/device/checkin", a.server));
        if let Some(e) = &etag {
            req = req.header("if-none-match", e);
        }
        let req = if malformed {
            req.header("content-type", "application/json").body(r#"{"models": 42"#)
        } else {
            req.json(&body)
        };
        let sent = Instant::now();
        match req.send().await {
            Ok(r) if r.status() == 200 => {
                etag = r.headers().get("etag").and_then(|v| v.to_str().ok()).map(String::from);
                let _ = r.bytes().await;
                t.time("check-in", sent);
                t.count(if malformed { "UNEXPECTED malformed check-in taken" } else { "check-in 200 (new document)" });
            }
            Ok(r) if r.status() == 304 => {
                t.time("check-in", sent);
                t.count(if malformed { "UNEXPECTED malformed check-in taken" } else { "check-in 304 (unchanged)" });
            }
            Ok(r) => {
                let outcome = refusal("check-in", r).await;
                t.count(if malformed {
                    format!("{outcome} (malformed, as sent)")
                } else {
                    format!("UNEXPECTED {outcome}")
                });
                // A refusal closes the connection (Connection: close); the next request reconnects.
            }
            Err(e) => t.count(format!("check-in transport error: {}", short(&e))),
        }
        if a.otlp_every > 0 && k % a.otlp_every == 0 && run.budget_left() {
            let sent = Instant::now();
            let export = otlp_export(device, &a.model, otlp_start, k * 10);
            let r = client
                .post(format!("{}/v1/metrics", a.server))
                .header("content-type", "application/x-protobuf")
                .body(export)
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => {
                    let _ = r.bytes().await;
                    t.time("OTLP export", sent);
                    t.count("OTLP export 200");
                }
                Ok(r) => t.count(format!("UNEXPECTED {}", refusal("OTLP export", r).await)),
                Err(e) => t.count(format!("OTLP transport error: {}", short(&e))),
            }
        }
        if a.event_every > 0 && k % a.event_every == 0 && run.budget_left() {
            let sent = Instant::now();
            let event = serde_json::json!([{"id": format!("sim-{seq}-{k}"), "kind": "committed", "model": a.model,
                "release": 1, "variant": "cpu", "detail": "simulated", "at": "2026-01-01T00:00:00Z"}]);
            match client.post(format!("{}/api/v1/device/events", a.server)).json(&event).send().await {
                Ok(r) if r.status() == 200 => {
                    let _ = r.bytes().await;
                    t.time("event", sent);
                    t.count("event 200");
                }
                Ok(r) => t.count(format!("UNEXPECTED {}", refusal("event", r).await)),
                Err(e) => t.count(format!("event transport error: {}", short(&e))),
            }
        }
    }
    Ok(())
}

fn short(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s = inner.to_string();
        src = inner.source();
    }
    s.chars().take(80).collect()
}

/// A device sending OTLP exports back to back: the server limits it per device and keeps serving the rest.
async fn flood(run: &Run, device: &Identity, t: &mut Tally) -> anyhow::Result<()> {
    let client = tls(&run.roots, Some((&device.cert_pem, &device.key_pem)))?;
    let mut n = 0u64;
    while run.budget_left() {
        n += 1;
        let export = otlp_export(device, &run.args.model, 7, n);
        match client
            .post(format!("{}/v1/metrics", run.args.server))
            .header("content-type", "application/x-protobuf")
            .body(export)
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => t.count("flood: OTLP export taken"),
            Ok(r) if r.status() == 429 => t.count("flood: OTLP export refused 429 (rate limited)"),
            Ok(r) => t.count(format!("flood: {}", refusal("OTLP export", r).await)),
            Err(e) => t.count(format!("flood transport error: {}", short(&e))),
        }
    }
    Ok(())
}

/// Connections with a certificate from a CA of our own: the server must refuse them at the handshake.
async fn bad_certs(run: &Run, t: &mut Tally) -> anyhow::Result<()> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("{}0000000", run.args.id_prefix));
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let client = tls(&run.roots, Some((&cert.pem(), &key.serialize_pem())))?;
    for _ in 0..run.args.bad_cert_attempts {
        if !run.budget_left() {
            break;
        }
        let r = client.post(format!("{}/api/v1/device/checkin", run.args.server)).json(&report("x")).send().await;
        match r {
            Err(_) => t.count("bad certificate: refused at the TLS handshake"),
            Ok(r) if r.status().is_client_error() => t.count(refusal("bad certificate", r).await),
            Ok(r) => t.count(format!("UNEXPECTED bad certificate answered {}", r.status())),
        }
    }
    Ok(())
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let authority = args.server.trim_start_matches("https://").split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(), // [::1]:8443
        None => authority.split(':').next().unwrap_or_default(),
    }
    .to_owned();
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("edgefleet-sim only targets loopback servers (got {host:?})");
    }
    let pem = std::fs::read(&args.server_ca).with_context(|| format!("reading {}", args.server_ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c?)?;
    }

    let enroll_started = Instant::now();
    let (fleet, mut tally) = enroll_fleet(&args, &roots).await?;
    let enroll_secs = enroll_started.elapsed().as_secs_f64();
    if fleet.is_empty() {
        bail!("no devices");
    }
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let run = Arc::new(Run {
        args: args.clone(),
        roots,
        fleet,
        next: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        deadline,
    });
    if let Some(target) = &args.converge_to {
        return converge(run, target, enroll_secs, tally).await;
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let flooders = run.args.flood_devices.min(run.fleet.len().saturating_sub(1));
    for f in 0..flooders {
        let run = run.clone();
        tasks.spawn(async move {
            let mut t = Tally::default();
            flood(&run, &run.fleet[f], &mut t).await?;
            anyhow::Ok(t)
        });
    }
    if run.args.bad_cert_attempts > 0 {
        let run = run.clone();
        tasks.spawn(async move {
            let mut t = Tally::default();
            bad_certs(&run, &mut t).await?;
            anyhow::Ok(t)
        });
    }
    for _ in 0..run.args.concurrency.max(1) {
        let run = run.clone();
        tasks.spawn(async move {
            let mut t = Tally::default();
            let well_behaved = run.fleet.len() - flooders;
            while Instant::now() < run.deadline && run.requests.load(Ordering::Relaxed) < run.args.max_requests {
                let seq = run.next.fetch_add(1, Ordering::Relaxed);
                let device = &run.fleet[flooders + seq % well_behaved];
                if let Err(e) = session(&run, device, seq as u64, &mut t).await {
                    t.count(format!("session error: {e:#}"));
                }
            }
            anyhow::Ok(t)
        });
    }
    while let Some(done) = tasks.join_next().await {
        tally.merge(done??);
    }
    if args.revoke_all {
        tally.merge(revoke_fleet(&run).await?);
    }
    // With --revoke-all, rates are over both phases (run it with --max-requests 0 to read the revocations').
    let secs = started.elapsed().as_secs_f64();
    summarize(&args, run.fleet.len(), enroll_secs, secs, tally)
}

/// Revokes every device of the fleet as the operator, then checks that each is refused at its next check-in.
async fn revoke_fleet(run: &Arc<Run>) -> anyhow::Result<Tally> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(run.args.duration_secs);
    let admin = tls(&run.roots, None)?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..run.args.concurrency.max(1) {
        let (run, admin, next) = (run.clone(), admin.clone(), next.clone());
        tasks.spawn(async move {
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(device) = run.fleet.get(i).filter(|_| Instant::now() < deadline) else { break };
                let sent = Instant::now();
                let url = format!("{}/api/v1/devices/{}/revoke", run.args.server, device.id);
                match admin.post(url).bearer_auth(&run.args.token).send().await {
                    Ok(r) if r.status() == 204 => {
                        t.time("revoke", sent);
                        t.count("revoke 204");
                    }
                    Ok(r) => t.count(format!("UNEXPECTED {}", refusal("revoke", r).await)),
                    Err(e) => t.count(format!("revoke transport error: {}", short(&e))),
                }
                let client = tls(&run.roots, Some((&device.cert_pem, &device.key_pem)))?;
                let sent = Instant::now();
                let r =
                    client.post(format!("{}/api/v1/device/checkin", run.args.server)).json(&report(&run.args.model));
                match r.send().await {
                    Ok(r) if r.status() == 403 => {
                        t.time("revoked check-in", sent);
                        t.count("check-in of a revoked device refused 403");
                    }
                    Ok(r) => t.count(format!("UNEXPECTED revoked device's check-in answered {}", r.status())),
                    Err(e) => t.count(format!("check-in transport error: {}", short(&e))),
                }
            }
            anyhow::Ok(t)
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        tally.merge(done??);
    }
    let done = tally.outcomes.get("revoke 204").copied().unwrap_or(0) as usize;
    println!("revoked {done} of {} devices in {:.1} s", run.fleet.len(), started.elapsed().as_secs_f64());
    if done < run.fleet.len() {
        tally.count(format!("UNEXPECTED {} devices not revoked within --duration-secs", run.fleet.len() - done));
    }
    Ok(tally)
}

/// One device of a convergence run: takes its current document, then long-polls with its ETag until a new
/// document comes after `t0` is set; answers how long after `t0` that was (`None`: not within the run).
async fn follow(
    run: &Run,
    device: &Identity,
    handshakes: &tokio::sync::Semaphore,
    ready: &AtomicUsize,
    mut t0: tokio::sync::watch::Receiver<Option<Instant>>,
    t: &mut Tally,
) -> anyhow::Result<Option<Duration>> {
    let a = &run.args;
    let body = report(&a.model);
    let url = format!("{}/api/v1/device/checkin", a.server);
    let (client, mut etag) = {
        // The first check-ins a few at a time, as the load run's sessions: the handshakes are the costly part.
        let _permit = handshakes.acquire().await?;
        let client = tls(&run.roots, Some((&device.cert_pem, &device.key_pem)))?;
        let r = client.post(&url).json(&body).send().await?;
        if r.status() != 200 {
            bail!("first check-in of {}: {}", device.id, r.status());
        }
        let etag = r.headers().get("etag").and_then(|v| v.to_str().ok()).map(String::from);
        let _ = r.bytes().await;
        (client, etag)
    };
    ready.fetch_add(1, Ordering::Relaxed);
    while Instant::now() < run.deadline {
        let mut req = client.post(format!("{url}?wait={}", a.converge_wait_secs)).json(&body);
        if let Some(e) = &etag {
            req = req.header("if-none-match", e);
        }
        match req.send().await {
            Ok(r) if r.status() == 200 => {
                let at = Instant::now();
                etag = r.headers().get("etag").and_then(|v| v.to_str().ok()).map(String::from);
                let _ = r.bytes().await;
                if let Some(start) = *t0.borrow_and_update() {
                    t.count("converge: new document received");
                    return Ok(Some(at.saturating_duration_since(start)));
                }
            }
            Ok(r) if r.status() == 304 => t.count("converge: long-poll answered 304"),
            Ok(r) => {
                t.count(format!("UNEXPECTED {}", refusal("check-in", r).await));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                t.count(format!("check-in transport error: {}", short(&e)));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    t.count("UNEXPECTED converge: no new document within the run");
    Ok(None)
}

/// The convergence run (see `--converge-to`).
async fn converge(run: Arc<Run>, target: &str, enroll_secs: f64, mut tally: Tally) -> anyhow::Result<()> {
    let (model, version) = target.split_once(':').context("--converge-to MODEL:VERSION")?;
    let version: u64 = version.parse().context("--converge-to MODEL:VERSION: a version number")?;
    let n = run.fleet.len();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(run.args.concurrency.max(1)));
    let ready = Arc::new(AtomicUsize::new(0));
    let (t0_tx, t0_rx) = tokio::sync::watch::channel(None);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (run, handshakes, ready, t0) = (run.clone(), handshakes.clone(), ready.clone(), t0_rx.clone());
        tasks.spawn(async move {
            let mut t = Tally::default();
            let took = follow(&run, &run.fleet[i], &handshakes, &ready, t0, &mut t).await;
            (took, t)
        });
    }
    // Everyone holds a long-poll (a moment after their first check-in), then the operator assigns. The pause only
    // shapes the measurement (all held, as in a settled fleet); a device not yet holding its long-poll when the
    // release is assigned gets the new document on its next check-in, timed from the same instant.
    while ready.load(Ordering::Relaxed) < n && Instant::now() < run.deadline && !tasks.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let admin = tls(&run.roots, None)?;
    let t0 = Instant::now();
    t0_tx.send_replace(Some(t0));
    let r = admin
        .post(format!("{}/api/v1/assignments", run.args.server))
        .bearer_auth(&run.args.token)
        .json(&serde_json::json!({"model": model, "version": version}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("assigning {model} {version}: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    let assigned_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut took_us = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        let (took, t) = done?;
        tally.merge(t);
        match took {
            Ok(Some(d)) => took_us.push(d.as_micros().min(u32::MAX as u128) as u32),
            Ok(None) => {}
            Err(e) => tally.count(format!("UNEXPECTED converge: {e:#}")),
        }
    }
    took_us.sort_unstable();
    // Time until a share of the whole fleet (not of those that made it) had its new document.
    let to_share = |q: f64| {
        let k = ((n as f64 * q).ceil() as usize).max(1);
        took_us.get(k - 1).map_or(f64::NAN, |us| f64::from(*us) / 1000.0)
    };
    let bad: u64 = tally.outcomes.iter().filter(|(k, _)| unexpected(k)).map(|(_, v)| v).sum();
    let summary = serde_json::json!({"devices": n, "enroll_secs": enroll_secs, "assigned_ms": assigned_ms,
        "converged": took_us.len(), "to_50_percent_ms": to_share(0.5), "to_99_percent_ms": to_share(0.99),
        "to_100_percent_ms": to_share(1.0), "outcomes": tally.outcomes, "unexpected": bad});
    if run.args.json {
        println!("{summary}");
    } else {
        println!(
            "edgefleet-sim: {n} devices long-polling {} (enrolled in {enroll_secs:.1} s); {model} {version} assigned \
             (the API answered in {assigned_ms:.0} ms)",
            run.args.server
        );
        println!(
            "  converged {} of {n}: 50 % in {:.0} ms, 99 % in {:.0} ms, all in {:.0} ms",
            took_us.len(),
            to_share(0.5),
            to_share(0.99),
            to_share(1.0)
        );
        for (k, v) in &tally.outcomes {
            println!("    {v:>10}  {k}");
        }
        println!("  unexpected: {bad}");
    }
    if bad > 0 {
        bail!("{bad} unexpected outcomes");
    }
    Ok(())
}

fn summarize(args: &Args, devices: usize, enroll_secs: f64, secs: f64, mut tally: Tally) -> anyhow::Result<()> {
    let mut latency = serde_json::Map::new();
    for (kind, v) in tally.latency_us.iter_mut() {
        v.sort_unstable();
        latency.insert(
            (*kind).to_owned(),
            serde_json::json!({"count": v.len(), "per_sec": v.len() as f64 / if *kind == "enroll" { enroll_secs } else { secs },
                "p50_ms": percentile(v, 0.5), "p95_ms": percentile(v, 0.95), "p99_ms": percentile(v, 0.99),
                "max_ms": percentile(v, 1.0)}),
        );
    }
    let bad: u64 = tally.outcomes.iter().filter(|(k, _)| unexpected(k)).map(|(_, n)| n).sum();
    let summary = serde_json::json!({"devices": devices, "enroll_secs": enroll_secs, "run_secs": secs,
        "latency": latency, "outcomes": tally.outcomes, "unexpected": bad});
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "edgefleet-sim: {devices} devices against {} (enrolled in {enroll_secs:.1} s), ran {secs:.1} s",
            args.server
        );
        for (kind, l) in &latency {
            println!(
                "  {kind:14} {:>9} done, {:>9.0}/s   p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms",
                l["count"],
                l["per_sec"].as_f64().unwrap_or(0.0),
                l["p50_ms"].as_f64().unwrap_or(f64::NAN),
                l["p95_ms"].as_f64().unwrap_or(f64::NAN),
                l["p99_ms"].as_f64().unwrap_or(f64::NAN),
                l["max_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
        println!("  outcomes:");
        for (k, n) in &tally.outcomes {
            println!("    {n:>10}  {k}");
        }
        println!("  unexpected: {bad}");
    }
    if bad > 0 {
        bail!("{bad} unexpected outcomes");
    }
    Ok(())
}
