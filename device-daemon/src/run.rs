//! `edgefleet-daemon run`: detect the hardware, take the provisioned root, walk to the server's newest root,
//! enroll once, restore what was committed, serve the v2 API, and reconcile in a loop (long-poll check-ins,
//! jittered exponential backoff on errors). Settings come from flags, `EDGEFLEET_*` variables, or a TOML
//! file given with `--config` (keys are the flag names, `server_ca = "..."`), in that order of precedence. A control plane that is slow, down or answers garbage never
//! touches what is serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use edgefleet_protocol::DeviceId;
use edgefleet_runtime::Options;
use edgefleet_runtime::llm::LlmOptions;
use model_registry::fsutil::write_file_atomic;
use model_registry::verify::self_signed_root;
use model_registry::{Limits, Root};

use crate::agent::Agent;
use crate::identity::{enroll, http_client};
use crate::layout::Layout;
use crate::openai::{OpenAiState, Routing};
use crate::serving::ModelTable;
use crate::v2::{V2State, router};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The control plane, `https://host:port`.
    #[arg(long, env = "EDGEFLEET_SERVER")]
    pub server: String,
    /// The server's certificate (or its CA), PEM.
    #[arg(long, env = "EDGEFLEET_SERVER_CA")]
    pub server_ca: PathBuf,
    #[arg(long, env = "EDGEFLEET_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The root.json this device was provisioned with (copied into the data directory at first start).
    #[arg(long, env = "EDGEFLEET_TRUST_ROOT")]
    pub trust_root: Option<PathBuf>,
    /// One-time enrollment token (first start only).
    #[arg(long, env = "EDGEFLEET_ENROLL_TOKEN")]
    pub enroll_token: Option<String>,
    #[arg(long, env = "EDGEFLEET_DEVICE_ID")]
    pub device_id: DeviceId,
    #[arg(long, env = "EDGEFLEET_ORT_LIB")]
    pub ort_lib: PathBuf,
    /// Local inference address: `host:port`, or `unix:/path/to.sock`.
    #[arg(long, env = "EDGEFLEET_LISTEN", default_value = "127.0.0.1:8181")]
    pub listen: String,
    /// Sessions per model (concurrent requests per model).
    #[arg(long, env = "EDGEFLEET_SESSIONS", default_value_t = 2)]
    pub sessions: usize,
    /// Threads per session.
    #[arg(long, env = "EDGEFLEET_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// Language models: sequences decoded together in one batch (each holds the release's context length of
    /// KV cache, counted in the memory budget).
    #[arg(long, env = "EDGEFLEET_LLM_SEQUENCES", default_value_t = 4)]
    pub llm_sequences: u32,
    /// Language models: requests that may wait for a sequence; past that the answer is 429 with Retry-After.
    #[arg(long, env = "EDGEFLEET_LLM_QUEUE", default_value_t = 16)]
    pub llm_queue: usize,
    /// Language models: tokens decoded per step (prompt chunks and generated tokens together).
    #[arg(long, env = "EDGEFLEET_LLM_BATCH", default_value_t = 256)]
    pub llm_batch: u32,
    /// Language models: decoding threads (default: every core).
    #[arg(long, env = "EDGEFLEET_LLM_THREADS")]
    pub llm_threads: Option<i32>,
    /// Longest check-in long-poll, seconds.
    #[arg(long, env = "EDGEFLEET_WAIT", default_value_t = 30)]
    pub wait: u64,
    /// A connection to the server silent this long, seconds, is dropped: a stalled download resumes from its
    /// partial file on the next pass. Must exceed --wait (a long-poll is silent until it answers).
    #[arg(long, env = "EDGEFLEET_READ_TIMEOUT_SECS", default_value_t = 90)]
    pub read_timeout_secs: u64,
    /// CA certificates (PEM bundle) to trust for blob downloads the server redirects to an object store (an
    /// S3 endpoint's CA); the server's CA is trusted there too. The bytes are checked against the signed
    /// digests either way.
    #[arg(long, env = "EDGEFLEET_BLOB_CA")]
    pub blob_ca: Option<PathBuf>,
    /// Follow blob redirects to plain-HTTP URLs (a store on a private network; the bytes are still verified).
    #[arg(long, env = "EDGEFLEET_BLOB_ALLOW_HTTP")]
    pub blob_allow_http: bool,
    /// Bake window after a swap, seconds: the new release is watched and rolled back if too many requests fail.
    #[arg(long, env = "EDGEFLEET_BAKE_SECS", default_value_t = 30)]
    pub bake_secs: u64,
    /// Largest failed-request ratio tolerated during the bake window.
    #[arg(long, env = "EDGEFLEET_BAKE_MAX_ERROR_RATE", default_value_t = 0.05)]
    pub bake_max_error_rate: f64,
    /// Largest ratio of the new release's p95 latency to the previous release's, judged at the end of the bake
    /// window.
    #[arg(long, env = "EDGEFLEET_BAKE_MAX_LATENCY_RATIO", default_value_t = 1.5)]
    pub bake_max_latency_ratio: f64,
    /// Requests needed (on each release compared) before error rate or latency is judged.
    #[arg(long, env = "EDGEFLEET_BAKE_MIN_REQUESTS", default_value_t = 20)]
    pub bake_min_requests: u64,
    /// Memory all loaded models may take together, MiB (each counted as model bytes × sessions; a language
    /// model as its weights and the KV cache of its sequences). When the
    /// release being replaced and the new one do not both fit, the swap drains: requests wait, none fail.
    #[arg(long, env = "EDGEFLEET_MEMORY_BUDGET_MB")]
    pub memory_budget_mb: Option<u64>,
    /// Disk the daemon's models and downloads may use, in MiB. A release whose download and staged model would
    /// not fit (beside what stays) is refused before a byte is fetched, and reported.
    #[arg(long, env = "EDGEFLEET_DISK_BUDGET_MB")]
    pub disk_budget_mb: Option<u64>,
    /// Export OpenTelemetry metrics (OTLP/HTTP protobuf, cumulative) to this endpoint: by default the control
    /// plane's receiver, `<server>/v1/metrics` (the daemon's client certificate is presented; rollout gates
    /// judge what arrives there), or a collector's; `off` to send none.
    #[arg(long, env = "EDGEFLEET_METRICS_ENDPOINT")]
    pub metrics_endpoint: Option<String>,
    /// Seconds between metric exports.
    #[arg(long, env = "EDGEFLEET_METRICS_INTERVAL_SECS", default_value_t = 60)]
    pub metrics_interval_secs: u64,
    /// `cloud`: this daemon is a cloud tier for other devices' language models: it answers every request
    /// itself (routing policies are for devices) and its OpenAI API asks for --api-token-file's token.
    #[arg(long, env = "EDGEFLEET_ROLE", value_enum, default_value = "device")]
    pub role: Role,
    /// A cloud tier this device may send language-model requests to, when a release's signed routing policy
    /// names it: `name=NAME,url=https://HOST/v1[,model=M][,token-file=F][,ca=F][,cert=F,key=F]`. Repeatable.
    #[arg(long = "cloud-tier", env = "EDGEFLEET_CLOUD_TIERS", value_delimiter = ';')]
    pub cloud_tiers: Vec<crate::cloud::TierConfig>,
    /// A file holding the bearer token callers of the OpenAI API must present (a cloud tier sets one).
    #[arg(long, env = "EDGEFLEET_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Test hook for crash tests: stop at this point of an install and wait to be killed.
    #[arg(long, env = "EDGEFLEET_PAUSE_AT", value_enum, hide = true)]
    pub pause_at: Option<crate::download::PausePoint>,
    /// Renew the device certificate once fewer than this many days of it are left (default: a third of its
    /// lifetime). Above the certificates' lifetime it renews at every pass: what the renewal test uses.
    #[arg(long, env = "EDGEFLEET_RENEW_WHEN_DAYS_LEFT", hide = true)]
    pub renew_when_days_left: Option<f64>,
}

/// What a daemon is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// A device: it serves its models and routes language-model requests by their releases' policies.
    Device,
    /// A cloud tier for other devices' language models.
    Cloud,
}

/// The trusted root: the stored one, else the provisioned one; then walked forward through the server's.
async fn trusted_root(
    layout: &Layout,
    args: &RunArgs,
    limits: &Limits,
    client: &reqwest::Client,
) -> anyhow::Result<Root> {
    let stored = layout.trusted_root();
    let bytes = match std::fs::read(&stored) {
        Ok(b) => b,
        Err(_) => {
            let p = args
                .trust_root
                .as_ref()
                .context("no trusted root yet: give --trust-root (the provisioned root.json)")?;
            let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            std::fs::create_dir_all(stored.parent().unwrap_or(&layout.root))?;
            write_file_atomic(&stored, &b)?;
            b
        }
    };
    let root = self_signed_root(&bytes, limits).map_err(|r| anyhow::anyhow!("trusted root refused: {r}"))?;
    // Walk forward; a server that is down or serves garbage leaves the stored root in place.
    let versions: Option<serde_json::Value> =
        match client.get(format!("{}/api/v1/trust/roots", args.server)).send().await {
            Ok(r) if r.status().is_success() => crate::capped::body(r, crate::capped::SMALL_BYTES, "the roots index")
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
            _ => None,
        };
    let latest = versions.as_ref().and_then(|v| v["latest"].as_u64()).unwrap_or(root.version);
    crate::roots::walk_roots(root, latest, &args.server, client, &stored, limits).await
}

/// Serves the v2 API on `listen`: `host:port`, or `unix:/path/to.sock` for a Unix socket (made 0660, an
/// existing stale socket file replaced). Prints where it serves.
/// When the device certificate is due for renewal (unix seconds), read from its file once per certificate
/// rather than at every pass; unreadable: now (renewal then says why).
fn renew_from(layout: &Layout, days_left: Option<f64>) -> i64 {
    let from = std::fs::read_to_string(layout.cert())
        .map_err(anyhow::Error::from)
        .and_then(|pem| crate::identity::renew_from(&pem, days_left));
    from.unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "reading the device certificate");
        0
    })
}

/// Renews the device certificate once it is due (`renew_at`, moved on to the new certificate's time); the
/// agent and the telemetry exporter then use the new one. A failure is logged and tried again next pass.
async fn renew_if_due(
    agent: &mut Agent,
    args: &RunArgs,
    shared: &crate::telemetry::SharedClient,
    read_timeout: Duration,
    renew_at: &mut i64,
) {
    if chrono::Utc::now().timestamp() < *renew_at {
        return;
    }
    let layout = agent.layout.clone();
    let renewed = async {
        crate::identity::renew(&layout, &args.server, &agent.client).await?;
        http_client(&args.server_ca, Some((&layout.cert(), &layout.key())), read_timeout)
    };
    match renewed.await {
        Ok(client) => {
            agent.client = client.clone();
            shared.store(Arc::new(client));
            *renew_at = renew_from(&layout, args.renew_when_days_left);
            tracing::info!("device certificate renewed");
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "certificate renewal failed; trying again next pass"),
    }
}

/// Resolves once SIGTERM or SIGINT arrives, and for every later caller at once.
async fn stopping(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Watches for SIGTERM and SIGINT; the receiver turns true when either arrives.
fn stop_signal() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Serves the inference APIs on `listen` until `stop`, then lets the requests in flight finish (streams
/// included); the answer resolves when they have.
pub async fn serve_v2(
    listen: &str,
    app: axum::Router,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if let Some(path) = listen.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
        }
        println!("edgefleet-daemon serving v2 on unix:{}", path.display());
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopping(stop)).await {
                tracing::error!(error = %e, "the inference server stopped");
            }
        }))
    } else {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        println!("edgefleet-daemon serving v2 on http://{}", listener.local_addr()?);
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopping(stop)).await {
                tracing::error!(error = %e, "the inference server stopped");
            }
        }))
    }
}

pub async fn run(args: RunArgs, hardware_root: PathBuf) -> anyhow::Result<()> {
    let detection = crate::hardware::detect(&hardware_root);
    tracing::info!(class = %detection.profile.device_class, providers = ?detection.profile.execution_providers, "hardware detected");
    let layout = Layout { root: args.data_dir.clone() };
    std::fs::create_dir_all(&layout.root)?;
    let limits = Limits::default();
    anyhow::ensure!(
        args.read_timeout_secs > args.wait,
        "--read-timeout-secs ({}) must exceed --wait ({}): a long-poll is silent until it answers",
        args.read_timeout_secs,
        args.wait
    );
    let read_timeout = Duration::from_secs(args.read_timeout_secs);
    let anonymous = http_client(&args.server_ca, None, read_timeout)?;
    let root = trusted_root(&layout, &args, &limits, &anonymous).await?;
    // A key and certificate whose storing a stop interrupted (at enrollment or renewal) are put in place first.
    crate::identity::finish_renewal(&layout)?;
    if !layout.cert().exists() {
        let token = args.enroll_token.as_deref().context("not enrolled yet: give --enroll-token")?;
        enroll(&layout, &args.server, &anonymous, token, &args.device_id, &detection.profile).await?;
        tracing::info!(device = %args.device_id, "enrolled");
    }
    let client = http_client(&args.server_ca, Some((&layout.cert(), &layout.key())), read_timeout)?;
    let shared = crate::telemetry::shared(client.clone());
    // Before any model loads, so every release's instruments report to it.
    let endpoint = match args.metrics_endpoint.as_deref() {
        Some("off") => None,
        Some(e) => Some(e.to_owned()),
        None => Some(format!("{}/v1/metrics", args.server.trim_end_matches('/'))),
    };
    let power = crate::power::discover(&hardware_root);
    let telemetry = match endpoint {
        Some(endpoint) => Some(crate::telemetry::start(
            &crate::telemetry::Config {
                endpoint,
                interval: Duration::from_secs(args.metrics_interval_secs.max(1)),
                device_id: args.device_id.to_string(),
                device_class: detection.profile.device_class.clone(),
                arch: detection.profile.arch.clone(),
            },
            shared.clone(),
            power.clone(),
        )?),
        None => None,
    };
    let models = Arc::new(ModelTable::default());
    let mut agent = Agent {
        device: args.device_id.clone(),
        server: args.server.clone(),
        client,
        redirects: crate::identity::Redirects::new(
            &args.server_ca,
            args.blob_ca.as_deref(),
            args.blob_allow_http,
            read_timeout,
        )?,
        layout: layout.clone(),
        root,
        ort_lib: args.ort_lib.clone(),
        options: Options {
            providers: detection.profile.execution_providers.clone(),
            intra_threads: Some(args.threads),
        },
        sessions: args.sessions,
        llm: crate::install::LlmSettings {
            options: LlmOptions { backends: detection.profile.llm_backends.clone() },
            sequences: args.llm_sequences,
            queue: args.llm_queue,
            batch: args.llm_batch,
            threads: args.llm_threads,
        },
        models: models.clone(),
        hardware: detection.profile.clone(),
        limits,
        bake: crate::health::Bake {
            window: Duration::from_secs(args.bake_secs),
            max_error_rate: args.bake_max_error_rate,
            max_latency_ratio: args.bake_max_latency_ratio,
            min_requests: args.bake_min_requests,
        },
        memory_budget: args.memory_budget_mb.map(|mb| mb << 20),
        disk_budget: args.disk_budget_mb.map(|mb| mb << 20),
        pause: args.pause_at,
        checkin_slack: Duration::from_secs(30),
        power,
    };
    let mut state = layout.load_state()?;
    for problem in agent.restore(&state).await {
        tracing::warn!(%problem, "restoring a committed model failed");
        state.last_error = Some(problem);
    }
    let routing = Routing {
        cloud_role: args.role == Role::Cloud,
        tiers: crate::cloud::Tiers::new(&args.cloud_tiers)?,
        api_token: match &args.api_token_file {
            Some(f) => {
                Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?.trim().to_owned())
            }
            None => None,
        },
        battery: crate::power::battery(&hardware_root),
    };
    if routing.cloud_role && routing.api_token.is_none() {
        bail!("--role cloud needs --api-token-file: a cloud tier answers only the devices that hold its token");
    }
    let openai = OpenAiState { models: models.clone(), routing: Arc::new(routing) };
    let app = router(V2State { models }, 64 << 20).merge(crate::openai::router(openai));
    let stop = stop_signal()?;
    let server = serve_v2(&args.listen, app, stop.clone()).await?;
    let mut renew_at = renew_from(&layout, args.renew_when_days_left);
    let mut failures = 0u32;
    loop {
        let started = std::time::Instant::now();
        renew_if_due(&mut agent, &args, &shared, read_timeout, &mut renew_at).await;
        // A stop drops a pass in flight: an install is crash-safe at every step, and resumes at the next start.
        let pass = tokio::select! {
            pass = agent.reconcile(&mut state, args.wait) => pass,
            () = stopping(stop.clone()) => break,
        };
        let pause = match pass {
            Ok(checkin) => {
                failures = 0;
                // A rotation: the server is on a newer root than this device. Walked to it, the device checks in
                // again at once, so its report (and any document the new root changes) follows without delay.
                if let Some(latest) = checkin.root_version
                    && agent.walk_to(latest).await
                {
                    continue;
                }
                let seed = u64::from(std::process::id()) ^ u64::from(chrono::Utc::now().timestamp_subsec_nanos());
                crate::agent::next_checkin(checkin, Duration::from_secs(args.wait), started.elapsed(), seed)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis((500u64 << failures.min(7)).min(60_000));
                // Jitter, so a fleet that lost its server does not come back in step.
                let jitter = Duration::from_millis(u64::from(std::process::id() % 500));
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?(backoff + jitter), "reconcile failed");
                backoff + jitter
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stopping(stop.clone()) => break,
        }
    }
    // Stopping: the requests in flight finish (for up to 30 s), then the last metrics are exported.
    if tokio::time::timeout(Duration::from_secs(30), server).await.is_err() {
        tracing::warn!("requests still in flight after 30 s; stopping anyway");
    }
    if let Some(t) = telemetry {
        tokio::task::spawn_blocking(move || t.shutdown()).await?;
    }
    tracing::info!("stopped");
    Ok(())
}
