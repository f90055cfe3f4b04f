//! What the daemon keeps on disk: the layout of its data directory and `state.json` (what is committed, the
//! last-seen trust state, events the server has not accepted yet, releases that failed for good).
//!
//! ```text
//! <data>/state.json                      DeviceState, written atomically
//! <data>/trust/root.json                 the trusted root, walked forward
//! <data>/identity/device.{key,crt}       the device's key (0600) and certificate
//! <data>/models/<model>/{a,b}/model.*    two slots per model
//! <data>/models/<model>/loading.json     loads begun by the install under way (crash-loop guard)
//! <data>/downloads/<sha256>.partial      downloads, resumed with Range
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use edgefleet_protocol::api::DeviceEvent;
use edgefleet_protocol::{ModelName, ReleaseVersion, VariantId};
use model_registry::artifact::ArtifactRef;
use model_registry::fsutil::write_file_atomic;
use model_registry::routing::RoutingPolicy;
use model_registry::{LastSeen, LlmSpec};
use serde::{Deserialize, Serialize};

/// Which of a model's two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl std::ops::Not for Slot {
    type Output = Slot;
    fn not(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// A release installed in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub release: ReleaseVersion,
    pub variant: VariantId,
    pub slot: Slot,
    pub raw: ArtifactRef,
    /// For a language model, what its manifest said it needs (the slot holds `model.gguf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmSpec>,
}

/// What the device keeps on disk between runs (`state.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceState {
    pub last_seen: LastSeen,
    /// Per model, the committed release: what serves after a restart.
    pub committed: BTreeMap<ModelName, Installed>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The ETag of the last accepted desired state.
    #[serde(default)]
    pub etag: Option<String>,
    /// Events not yet accepted by the control plane, oldest first; sent again with every check-in (the server
    /// drops duplicates by id). At most [`MAX_PENDING_EVENTS`] are kept; older ones are dropped and counted.
    #[serde(default)]
    pub pending_events: Vec<DeviceEvent>,
    #[serde(default)]
    pub dropped_events: u64,
    /// Per model, the release and variant whose install failed for a reason that trying again cannot fix (bad
    /// bytes, golden vectors, load, health watch, a variant this device cannot run, a crash loop): not tried
    /// again while the desired state names it, across restarts too.
    #[serde(default)]
    pub failed: BTreeMap<ModelName, (ReleaseVersion, VariantId)>,
    /// Per language model, the routing policy of the release the last accepted document names (absent: every
    /// request on the device).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routing: BTreeMap<ModelName, RoutingPolicy>,
    /// Variants the last accepted document asked this device to measure, not yet measured (`measure.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_measure: Vec<crate::measure::MeasureAsk>,
    /// Releases whose variants this device measured and reported: not measured again when asked again.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub measured: BTreeSet<(ModelName, ReleaseVersion)>,
    /// Per model, the release and variant whose downloaded bytes missed their signed digest, how often, and
    /// since when (Unix seconds): the bytes came through a mirror (an object store, a CDN) and may be right on
    /// the next try, so they are fetched again at the next passes — until there were [`MAX_BAD_DOWNLOADS`] and
    /// [`BAD_DOWNLOAD_PATIENCE_SECS`] passed since the first, when the release is remembered in `failed`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bad_downloads: BTreeMap<ModelName, (ReleaseVersion, VariantId, u32, i64)>,
}

/// Downloads of one release's variant whose bytes missed the signed digest, and the time since the first, before
/// it is given up: a mirror's fault may pass; bytes wrong at the source must not cost a download every pass.
pub const MAX_BAD_DOWNLOADS: u32 = 3;
pub const BAD_DOWNLOAD_PATIENCE_SECS: i64 = 600;

pub const MAX_PENDING_EVENTS: usize = 1000;

/// A release whose model the daemon began to load this many times without the install ending (it died each
/// time: a model that crashes its runtime, say) is not loaded again.
pub const MAX_LOADS_BEGUN: u32 = 3;

impl DeviceState {
    /// Queues events for the control plane, dropping the oldest beyond the cap.
    pub fn queue_events(&mut self, events: Vec<DeviceEvent>) {
        self.pending_events.extend(events);
        let over = self.pending_events.len().saturating_sub(MAX_PENDING_EVENTS);
        if over > 0 {
            self.pending_events.drain(..over);
            self.dropped_events += over as u64;
        }
    }
}

/// The file name a download of `r` takes in `downloads/` while it arrives.
pub fn partial_name(r: &ArtifactRef) -> String {
    format!("{}.partial", r.sha256)
}

/// The daemon's files.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn trusted_root(&self) -> PathBuf {
        self.root.join("trust").join("root.json")
    }
    pub fn key(&self) -> PathBuf {
        self.root.join("identity").join("device.key")
    }
    pub fn cert(&self) -> PathBuf {
        self.root.join("identity").join("device.crt")
    }
    /// The record of a model's loads begun by the install under way.
    fn loading(&self, model: &ModelName) -> PathBuf {
        self.model_dir(model).join("loading.json")
    }

    /// How many loads of `release`/`variant` of `model` were begun without their install ending.
    pub fn loads_begun(&self, model: &ModelName, release: ReleaseVersion, variant: &VariantId) -> u32 {
        let read = std::fs::read(self.loading(model)).ok();
        let record: Option<(ReleaseVersion, VariantId, u32)> = read.and_then(|b| serde_json::from_slice(&b).ok());
        match record {
            Some((r, v, n)) if r == release && v == *variant => n,
            _ => 0,
        }
    }

    /// Counts one more load begun (written to disk before the load, so a load the daemon dies in is counted).
    pub fn begin_load(&self, model: &ModelName, release: ReleaseVersion, variant: &VariantId) {
        let n = self.loads_begun(model, release, variant) + 1;
        let body = serde_json::to_vec(&(release, variant, n)).unwrap_or_default();
        if let Err(e) = write_file_atomic(&self.loading(model), &body) {
            tracing::warn!(%model, error = %e, "recording a load begun");
        }
    }

    /// The install ended (either way): its loads are no longer counted.
    pub fn end_load(&self, model: &ModelName) {
        let _ = std::fs::remove_file(self.loading(model));
    }

    pub fn partial(&self, r: &ArtifactRef) -> PathBuf {
        self.downloads().join(partial_name(r))
    }

    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }

    /// Every file of `model`: its slots and load record.
    pub fn model_dir(&self, model: &ModelName) -> PathBuf {
        self.models().join(model.as_str())
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// A slot's directory; model names are validated types, safe as path components.
    pub fn slot(&self, model: &ModelName, slot: Slot) -> PathBuf {
        self.model_dir(model).join(slot.as_str())
    }

    pub fn load_state(&self) -> anyhow::Result<DeviceState> {
        match std::fs::read(self.state()) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("{}: corrupt device state", self.state().display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DeviceState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.state().display())),
        }
    }

    pub fn save_state(&self, s: &DeviceState) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        write_file_atomic(&self.state(), &serde_json::to_vec_pretty(s)?)?;
        Ok(())
    }
}

/// Bytes of the files under `dir` (0 when it does not exist).
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}
