//! Building the server from its configuration: storage, blobs, trust material, the device CA, TLS, and the
//! background task that writes `last_seen` in batches.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use model_registry::verify::{self_signed_root, update_root};
use model_registry::{KeyPair, Limits};
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
pub(crate) async fn load_trust(store: &Store, config: &Config, limits: &Limits) -> anyhow::Result<Trust> {
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

/// The device CA and the server's identity. Files named in the config are used as given. Otherwise on SQLite
/// (one server) both live in the data directory, made at first start; on PostgreSQL (replicas) both live in the
/// database, made once by the first server to start (or imported from its data directory) and read by every
/// other: a replica never makes a CA of its own.
async fn tls_material(store: &Store, config: &Config) -> anyhow::Result<(DeviceCa, ServerIdentity)> {
    // A new device CA only for a fleet that has never enrolled a device (revoked ones count: their
    // certificates chain to the CA too).
    let may_create = !store.has_devices().await?;
    let given_identity = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => Some(ServerIdentity::load_or_create(&config.data_dir, Some(c), Some(k))?),
        _ => None,
    };
    let given_ca = match (&config.device_ca_cert, &config.device_ca_key) {
        (Some(c), Some(k)) => Some(DeviceCa::from_files(c, k)?),
        (None, None) => None,
        _ => bail!("set both device_ca_cert and device_ca_key, or neither"),
    };
    if store.backend != crate::store::Backend::Postgres {
        let ca = match given_ca {
            Some(ca) => ca,
            None => DeviceCa::load_or_create(&config.data_dir, may_create)?,
        };
        let identity = match given_identity {
            Some(i) => i,
            None => ServerIdentity::load_or_create(&config.data_dir, None, None)?,
        };
        return Ok((ca, identity));
    }
    let ca = match given_ca {
        Some(ca) => ca,
        None => {
            let (cert, key) = shared_pair(store, "device-ca", || {
                let (cert_file, key_file) = DeviceCa::files(&config.data_dir);
                if cert_file.exists() && key_file.exists() {
                    tracing::info!(from = %cert_file.display(), "sharing this data directory's device CA with every replica");
                    return Ok((std::fs::read_to_string(&cert_file)?, std::fs::read_to_string(&key_file)?));
                }
                if !may_create {
                    bail!(
                        "the database has enrolled devices but no device CA: give device_ca_cert and device_ca_key \
                         (the CA those devices' certificates chain to), or restore the shared_pem table"
                    );
                }
                Ok(DeviceCa::generate_pem()?)
            })
            .await?;
            DeviceCa::from_pem(&cert, &key, std::path::Path::new("database:shared_pem/device-ca.crt"))?
        }
    };
    let identity = match given_identity {
        Some(i) => i,
        None => {
            let (cert, key) = shared_pair(store, "server", || Ok(crate::tls::self_signed_server_pem()?)).await?;
            ServerIdentity::from_pem(&cert, &key, &config.data_dir.join("tls").join("server.crt"))?
        }
    };
    Ok((ca, identity))
}

/// The certificate and key `<name>.crt`/`<name>.key` every replica shares: read from the database, or made
/// by `make` and stored by the first server to get there (a racing server reads back the winner's pair).
async fn shared_pair(
    store: &Store,
    name: &str,
    make: impl FnOnce() -> anyhow::Result<(String, String)>,
) -> anyhow::Result<(String, String)> {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    if store.shared_pem(&crt).await?.is_none() {
        let (c, k) = make()?;
        store.share_pems_once(&[(&crt, &c), (&key, &k)], now_ms()).await?;
    }
    match (store.shared_pem(&crt).await?, store.shared_pem(&key).await?) {
        (Some(c), Some(k)) => Ok((c, k)),
        _ => bail!("the shared {name} certificate and key are incomplete in the database"),
    }
}

pub async fn build(config: Config) -> anyhow::Result<Built> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let limits = Limits::default();
    let store = Store::connect(&config.database_url()).await.context("opening the database")?;
    let blobs = crate::blobs::open(&config).await?;
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
    let (ca, identity) = tls_material(&store, &config).await?;
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
        blobs,
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
        replica: replica_name(),
        synced_at: std::sync::atomic::AtomicI64::new(now_ms()),
        waiters: crate::state::device_cache(cache),
    }));
    let telemetry = tokio::spawn(crate::telemetry::background(state.clone()));
    let rollouts = tokio::spawn(crate::rollout::engine::run(state.clone()));
    let mut background = vec![telemetry, rollouts];
    if state.store.backend == crate::store::Backend::Postgres {
        background.push(tokio::spawn(crate::changes::follow(state.clone(), state.config.database_url())));
    }
    Ok(Built { state, tls, fingerprint: identity.fingerprint, cert_path: identity.cert_path, flusher, background })
}

/// A name for this server among the replicas: its host name and a random suffix (a restarted server is a new
/// replica: its caches start empty).
fn replica_name() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), hex::encode(b))
}
