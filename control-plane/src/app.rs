//! Building the server from its configuration: storage, blobs, trust material, the device CA, TLS, and the
//! background task that writes `last_seen` in batches.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use model_registry::verify::{self_signed_root, update_root};
use model_registry::{FsBlobStore, KeyPair, Limits};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::state::{AppState, Inner, Trust, flush_last_seen, now_ms};
use crate::store::Store;
use crate::telemetry::{Ingest, Settings};
use crate::tls::{DeviceCa, ServerIdentity, server_config};

/// A built server, ready to [`crate::server::serve`].
#[derive(Debug)]
pub struct Built {
    pub state: AppState,
    pub tls: Arc<rustls::ServerConfig>,
    /// SHA-256 of the server certificate, for clients to pin.
    pub fingerprint: String,
    pub cert_path: std::path::PathBuf,
    pub flusher: tokio::task::JoinHandle<()>,
    /// Telemetry flushing and retention, rollout evaluation: stopped (aborted) when the server stops.
    pub background: Vec<tokio::task::JoinHandle<()>>,
}

/// Loads the stored root chain (importing `config.trust_root` into an empty database) and verifies it from the
/// first version forward.
async fn load_trust(store: &Store, config: &Config, limits: &Limits) -> anyhow::Result<Trust> {
    let mut stored = store.roots().await?;
    if stored.is_empty() {
        let path = config
            .trust_root
            .as_ref()
            .context("no trust root yet: set trust_root (EDGEFLEET_TRUST_ROOT) to a signed root.json")?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let root = self_signed_root(text.as_bytes(), limits).with_context(|| format!("{}", path.display()))?;
        store.add_root(root.version as i64, &text, now_ms()).await?;
        stored = store.roots().await?;
    }
    let mut chain = Vec::new();
    let mut current = None;
    for (version, text) in stored {
        let root = match &current {
            None => self_signed_root(text.as_bytes(), limits).with_context(|| format!("stored root {version}"))?,
            Some(prev) => {
                update_root(prev, text.as_bytes(), limits).with_context(|| format!("stored root {version}"))?
            }
        };
        chain.push((version as u64, text));
        current = Some(root);
    }
    let root = current.context("no root")?;
    if root.expires <= chrono::Utc::now() {
        tracing::warn!(version = root.version, expires = %root.expires, "the trust root has expired: publish a new version");
    }
    Ok(Trust { chain, root })
}

pub async fn build(config: Config) -> anyhow::Result<Built> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let limits = Limits::default();
    let store = Store::connect(&config.database_url()).await.context("opening the database")?;
    let blobs = FsBlobStore::open(config.data_dir.join("blobs")).await.context("opening the blob store")?;
    let trust = load_trust(&store, &config, &limits).await?;
    let key_path =
        config.fleet_key.as_ref().context("set fleet_key (EDGEFLEET_FLEET_KEY) to the fleet role's private key")?;
    let fleet_key = KeyPair::read_private(key_path)?;
    if !trust.root.roles.fleet.keyids.contains(&fleet_key.key_id()) {
        bail!(
            "{}: key {} is not a fleet key of root version {}; devices would refuse every desired state",
            key_path.display(),
            fleet_key.key_id(),
            trust.root.version
        );
    }
    // A new device CA only for a fleet that has never enrolled a device (revoked ones count: their
    // certificates chain to the CA too).
    let ca = DeviceCa::load_or_create(&config.data_dir, !store.has_devices().await?)?;
    let identity =
        ServerIdentity::load_or_create(&config.data_dir, config.tls_cert.as_deref(), config.tls_key.as_deref())?;
    let tls = server_config(&identity, &ca)?;
    let (seen, seen_rx) = mpsc::unbounded_channel();
    let flusher = tokio::spawn(flush_last_seen(store.clone(), seen_rx, config.flush_interval_ms));
    let (generation, _) = watch::channel(0);
    let ingest = Ingest::new(Settings {
        window_ms: (config.telemetry_window_secs.max(1) as i64) * 1000,
        exports_per_sec: config.telemetry_exports_per_sec.max(0.001),
        burst: config.telemetry_burst.max(1.0),
        recent_ms: 300_000,
    });
    let checkin_limiter = crate::limiter::Limiter::new(config.checkins_per_sec, config.checkin_burst);
    let event_limiter = crate::limiter::Limiter::new(config.events_per_sec, config.events_burst);
    let enroll_limiter = crate::limiter::Limiter::new(config.enrollments_per_sec, config.enrollment_burst);
    let cache = config.device_cache_entries;
    let state = AppState(Arc::new(Inner {
        config,
        store,
        blobs: Arc::new(blobs),
        limits,
        trust: RwLock::new(Arc::new(trust)),
        fleet_key,
        ca,
        generation,
        assignments: RwLock::new(None),
        rebuilding: tokio::sync::Mutex::new(()),
        desired: crate::state::device_cache(cache),
        reports: crate::state::device_cache(cache),
        seen,
        ingest,
        checkins_changed: AtomicU64::new(0),
        checkins_unchanged: AtomicU64::new(0),
        reached: Default::default(),
        credentials: crate::state::device_cache(cache),
        checkin_limiter,
        event_limiter,
        enroll_limiter,
    }));
    let telemetry = tokio::spawn(crate::telemetry::background(state.clone()));
    let rollouts = tokio::spawn(crate::rollout::engine::run(state.clone()));
    Ok(Built {
        state,
        tls,
        fingerprint: identity.fingerprint,
        cert_path: identity.cert_path,
        flusher,
        background: vec![telemetry, rollouts],
    })
}
