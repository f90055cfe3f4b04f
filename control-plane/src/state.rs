//! Shared server state: storage, blobs, trust material, the device CA, and the in-memory caches that keep the
//! check-in hot path off the database.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use edgefleet_protocol::api::DeviceReport;
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion};
use model_registry::{BlobStore, KeyPair, Limits, Root};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::desired::{AssignmentSnapshot, CachedDesired};
use crate::store::Store;
use crate::telemetry::Ingest;
use crate::tls::DeviceCa;

/// The trust root the server verifies releases against, and the chain it serves to devices.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Every root version, oldest first, as signed bytes.
    pub chain: Vec<(u64, String)>,
    /// The newest, verified.
    pub root: Root,
}

#[derive(Debug)]
pub struct Inner {
    pub config: Config,
    pub store: Store,
    pub blobs: Arc<dyn BlobStore>,
    pub limits: Limits,
    pub trust: RwLock<Arc<Trust>>,
    pub fleet_key: KeyPair,
    pub ca: DeviceCa,
    /// Bumped whenever anything desired states depend on changes (assignments, releases, labels, roots).
    pub generation: watch::Sender<u64>,
    pub assignments: RwLock<Option<Arc<AssignmentSnapshot>>>,
    /// Held while the assignment snapshot is rebuilt, so concurrent check-ins rebuild it once, not each.
    pub rebuilding: tokio::sync::Mutex<()>,
    pub desired: DeviceCache<CachedDesired>,
    /// What each device may present (its certificate serials, or nothing once revoked); read from the database
    /// at its first request, so revocations cost no memory beyond the cache.
    pub credentials: DeviceCache<Credential>,
    /// Per-device rates of check-ins and of event reports.
    pub checkin_limiter: crate::limiter::Limiter,
    pub event_limiter: crate::limiter::Limiter,
    /// Enrollments per source address.
    pub enroll_limiter: crate::limiter::Limiter<std::net::IpAddr>,
    /// Each device's last stored report (since this server started, or read back at its first export).
    /// Each device's last stored report, as its digest: an unchanged report costs no write.
    pub reports: DeviceCache<String>,
    pub seen: mpsc::UnboundedSender<(DeviceId, i64)>,
    /// The OTLP receiver's series, pending rollups and fleet totals.
    pub ingest: Ingest,
    /// Check-ins answered with a new document, and with 304.
    pub checkins_changed: AtomicU64,
    pub checkins_unchanged: AtomicU64,
    /// Per rollout id: where its waves reached (see `rollout::engine`).
    pub reached: Mutex<HashMap<String, Reached>>,
    /// This server among the replicas (random per start): changes it logged are not applied again when read.
    pub replica: String,
    /// When the change log was last read through (ms; see `crate::changes`).
    pub synced_at: AtomicI64,
    /// Long-polls waiting, per device: woken by a change to that device alone.
    pub waiters: DeviceCache<Arc<tokio::sync::Notify>>,
}

/// What a device reported: the digest of the stored report (an unchanged report costs no write), the releases
/// in its active slots (written beside it for the fleet counts), and whether it reported an error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reported {
    pub digest: String,
    pub active: Vec<(ModelName, ReleaseVersion)>,
    pub healthy: bool,
}

impl Reported {
    /// `text` is the report as stored.
    pub fn new(r: &DeviceReport, text: &str) -> Self {
        Self {
            digest: model_registry::Sha256Digest::of(text.as_bytes()).to_hex(),
            active: r.models.iter().filter_map(|m| m.active.as_ref().map(|a| (m.model.clone(), a.release))).collect(),
            healthy: r.last_error.is_none(),
        }
    }
}

/// A per-device cache, bounded (`device_cache_entries` devices; the least recently used go first, and any not
/// used for an hour): whatever it holds can be read again from the database, so a fleet of millions costs the
/// server the memory of the devices active lately, not of every device it ever saw.
pub type DeviceCache<V> = moka::sync::Cache<DeviceId, V>;

pub fn device_cache<V: Clone + Send + Sync + 'static>(entries: u64) -> DeviceCache<V> {
    moka::sync::Cache::builder().max_capacity(entries).time_to_idle(std::time::Duration::from_secs(3600)).build()
}

/// The wave whose reached classes were counted, when (ms), and the online devices it put on the new release per
/// class.
pub type Reached = (usize, i64, BTreeMap<String, u64>);

#[derive(Debug, Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl Inner {
    pub fn trust(&self) -> Arc<Trust> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether release `version` of `model` is in the registry (`None`: it is not) and still signed by a
    /// threshold of the current root's release keys (a root rotation may have revoked a key that signed it).
    pub async fn release_trusted(
        &self,
        model: &ModelName,
        version: ReleaseVersion,
    ) -> Result<Option<bool>, crate::store::StoreError> {
        let Some(row) = self.store.get_release(model, version).await? else { return Ok(None) };
        let Ok(envelope) = serde_json::from_str::<model_registry::Envelope>(&row.manifest) else {
            return Ok(Some(false));
        };
        let trust = self.trust();
        Ok(Some(envelope.count(&trust.root.keys, &trust.root.roles.release).met()))
    }

    /// Something desired states depend on changed: every cached document is recomputed on its next check-in,
    /// and long-polls wake.
    pub fn invalidate(&self) {
        *self.assignments.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.generation.send_modify(|g| *g += 1);
    }

    /// Whether device `id` may present the certificate with `serial` (hex): it is the certificate last issued
    /// to it, or the one it renewed from while the new one has not been used yet (a device that died between
    /// the server's answer and storing its new certificate is not locked out), and the device is not revoked.
    /// The new certificate's first use retires the old.
    pub async fn check_certificate(&self, id: &DeviceId, serial: &str) -> Result<CertCheck, crate::store::StoreError> {
        let same = |stored: &str| stored.trim_start_matches('0') == serial.trim_start_matches('0');
        let credential = match self.credentials.get(id) {
            Some(c) => c,
            None => {
                let Some(c) = self.store.credential(id).await? else { return Ok(CertCheck::Unknown) };
                self.credentials.insert(id.clone(), c.clone());
                c
            }
        };
        let Credential::Serials { current, previous } = credential else { return Ok(CertCheck::Revoked) };
        if same(&current) {
            if previous.is_some() {
                self.store.retire_prev_cert(id).await?;
                self.credentials.insert(id.clone(), Credential::Serials { current, previous: None });
                self.publish(&crate::changes::Scope::Device(id.clone())).await?;
            }
            return Ok(CertCheck::Current);
        }
        Ok(if previous.is_some_and(|p| same(&p)) { CertCheck::Current } else { CertCheck::Replaced })
    }
}

/// What a device may present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Its certificate's serial (hex) and, during a renewal, the one it renewed from.
    Serials { current: String, previous: Option<String> },
    /// Nothing: the device is revoked.
    Revoked,
}

/// The verdict on a presented device certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertCheck {
    Current,
    /// An older certificate of the device, replaced by a renewal.
    Replaced,
    Revoked,
    /// A certificate of the device CA naming no enrolled device.
    Unknown,
}

/// Drains `last_seen` updates and writes them in batches, so a check-in never waits on a write.
pub async fn flush_last_seen(store: Store, mut rx: mpsc::UnboundedReceiver<(DeviceId, i64)>, every_ms: u64) {
    let mut batch: BTreeMap<DeviceId, i64> = BTreeMap::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(every_ms.max(10)));
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some((id, at)) => { batch.insert(id, at); }
                None => break,
            },
            _ = tick.tick() => {
                if !batch.is_empty() {
                    let taken = std::mem::take(&mut batch);
                    if let Err(e) = store.touch_devices(&taken).await {
                        tracing::warn!(error = %e, devices = taken.len(), "writing last_seen failed; will retry");
                        batch = taken;
                    }
                }
            }
        }
    }
    if !batch.is_empty()
        && let Err(e) = store.touch_devices(&batch).await
    {
        tracing::warn!(error = %e, "final last_seen flush failed");
    }
}
