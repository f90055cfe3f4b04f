//! The agent: check-in, and installing what the signed desired state names.
//!
//! Decisions are pure: [`plan`] (given what is installed and a verified desired state, what to do per model),
//! [`next_checkin`], and each install's state machine ([`crate::machine::Install`]), which this module drives by
//! performing its effects. Each effect leaves disk consistent at every instant: downloads go to
//! `downloads/<sha256>.partial` and resume with HTTP Range; the model is decompressed, verified while it
//! streams, into the inactive slot through a temporary file, fsync and rename; the golden vectors run on the
//! new session before it is swapped in; `state.json` (what is committed, the last-seen trust state) is
//! written atomically. A failure at any step leaves the previous model serving and is reported as an event.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use edgefleet_protocol::api::{DeviceEvent, DeviceReport, EventKind, HardwareProfile, ModelStatus, SlotStatus};
use edgefleet_protocol::llm_golden::LlmGolden;
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion, VariantId};
use edgefleet_runtime::llm::{EngineConfig, LlmOptions};
use edgefleet_runtime::{Options, Runtime};
use model_registry::artifact::{ArtifactRef, StreamCheck, decompress_verified};
use model_registry::fsutil::{sync_dir, write_atomic, write_file_atomic};
use model_registry::golden::GoldenVectors;
use model_registry::{LastSeen, Limits, LlmSpec, ModelFormat, Root, Variant, VerifiedDesiredState, Verifier};
use serde::{Deserialize, Serialize};

use crate::health::{Bake, Window};
use crate::machine::{Effect, Install, Outcome, fit};
use crate::serving::{Drained, ModelTable, Served};

/// How a check-in went: the server's suggested interval (seconds) and whether a new document came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkin {
    pub interval: u64,
    pub changed: bool,
    /// The server's latest trust-root version, when it said.
    pub root_version: Option<u64>,
}

/// The longest check-in interval a server may suggest (a day): a hostile or broken server cannot silence a
/// device for longer, nor overflow its timer.
pub const MAX_CHECKIN_INTERVAL_SECS: u64 = 86_400;

/// Pure: how long to wait before the next check-in. After a change: at once (more may follow). After a
/// long-poll the server really held (at least half of `wait`): at once, since the long-poll was the wait and
/// a rollout must start in seconds. Otherwise (no long-poll asked, or the server answered early): the server's
/// interval, plus up to 10 % jitter from `seed`, so a fleet does not check in in step.
pub fn next_checkin(c: Checkin, wait: Duration, held: Duration, seed: u64) -> Duration {
    if c.changed || (!wait.is_zero() && held >= wait / 2) {
        return Duration::ZERO;
    }
    let ms = c.interval.clamp(1, MAX_CHECKIN_INTERVAL_SECS) * 1000;
    Duration::from_millis(ms + seed % (ms / 10 + 1))
}

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
}

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

/// A test hook for crash tests: the named point in an install where the daemon stops (prints
/// `edgefleet-daemon paused at <point>` and waits forever, still serving), so a test can kill -9 it exactly
/// there. Set by `EDGEFLEET_PAUSE_AT`; off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PausePoint {
    /// After part of the model blob is written to its partial file.
    Download,
    /// Halfway through decompressing into the slot's temporary file.
    Decompress,
    /// After the model file is renamed into its slot, before it is loaded or committed.
    Renamed,
}

fn announce_pause(at: PausePoint) {
    println!("edgefleet-daemon paused at {}", format!("{at:?}").to_lowercase());
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

async fn pause_if(pause: Option<PausePoint>, at: PausePoint) {
    if pause == Some(at) {
        announce_pause(at);
        std::future::pending::<()>().await;
    }
}

/// Counts the bytes written through it and pauses the writing thread at half of `total` if asked to.
struct Tripwire<W> {
    inner: W,
    written: u64,
    at: Option<u64>,
}

impl<W: Write> Write for Tripwire<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if self.at.is_some_and(|at| self.written >= at) {
            self.inner.flush()?;
            announce_pause(PausePoint::Decompress);
            loop {
                std::thread::park();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What to do for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The committed release is the desired one.
    Keep,
    /// Install this variant of this release into the slot not in use.
    Install { model: ModelName, release: ReleaseVersion, variant: VariantId, slot: Slot },
}

/// Pure: per model of the verified desired state, keep or install (into the slot not committed). A release that
/// already failed for good on this device is kept out (see [`DeviceState::failed`]).
pub fn plan(state: &DeviceState, desired: &VerifiedDesiredState) -> Vec<Action> {
    desired
        .state
        .models
        .iter()
        .zip(&desired.releases)
        .map(|(a, r)| match state.committed.get(&a.model) {
            Some(i) if i.release == r.manifest.version && i.variant == a.variant => Action::Keep,
            _ if state.failed.get(&a.model) == Some(&(r.manifest.version, a.variant.clone())) => Action::Keep,
            current => Action::Install {
                model: a.model.clone(),
                release: r.manifest.version,
                variant: a.variant.clone(),
                slot: current.map_or(Slot::A, |i| !i.slot),
            },
        })
        .collect()
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
        self.downloads().join(format!("{}.partial", r.sha256))
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
fn disk_usage(dir: &Path) -> u64 {
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

/// A download whose bytes are not the signed ones (as opposed to one that could not finish).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotSigned(pub String);

/// Downloads `r` from the server into its partial file, resuming with Range from what is there, and checks
/// size and digest as it goes. Answers the path of the complete, verified file.
pub async fn download(
    client: &reqwest::Client,
    server: &str,
    layout: &Layout,
    r: &ArtifactRef,
    pause: Option<PausePoint>,
) -> anyhow::Result<PathBuf> {
    let path = layout.partial(r);
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let mut check = StreamCheck::new("download", *r);
    // Re-hash what a previous run left (a partial file survives restarts), then ask for the rest.
    let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(&path)?;
    let mut have = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    file.seek(std::io::SeekFrom::Start(0))?;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if check.update(&buf[..n]).is_err() {
            // Longer than signed: the partial is not the signed blob; start over.
            drop(file);
            std::fs::remove_file(&path)?;
            return Box::pin(download(client, server, layout, r, pause)).await;
        }
        have += n as u64;
    }
    if have < r.size {
        let mut resp = client
            .get(format!("{server}/api/v1/blobs/{}", r.sha256))
            .header("range", format!("bytes={have}-"))
            .send()
            .await?;
        let status = resp.status().as_u16();
        if status != 206 && !(status == 200 && have == 0) {
            bail!("blob {}: server answered {status} to a range request", r.sha256);
        }
        if have > 0 {
            tracing::info!(blob = %r.sha256, have, of = r.size, "resuming a partial download");
        }
        while let Some(chunk) = resp.chunk().await? {
            check.update(&chunk).map_err(|e| NotSigned(format!("blob {}: {e}", r.sha256)))?;
            file.write_all(&chunk)?;
            if have == 0 {
                file.sync_all()?;
                pause_if(pause, PausePoint::Download).await;
            }
        }
        file.sync_all()?;
    }
    match check.finish() {
        Ok(()) => Ok(path),
        Err(e) => {
            // Wrong bytes are never resumed from: remove them, so the next try starts clean.
            let _ = std::fs::remove_file(&path);
            Err(NotSigned(format!("blob {}: {e}", r.sha256)).into())
        }
    }
}

/// Decompresses a verified download into the slot (`model.onnx` or `model.gguf`; temporary file, fsync, rename,
/// fsync dir).
pub fn stage(
    zstd_file: &Path,
    variant: &Variant,
    slot_dir: &Path,
    pause: Option<PausePoint>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(slot_dir)?;
    // A run killed while decompressing leaves its temporary file behind; it is never loaded, only removed.
    for entry in std::fs::read_dir(slot_dir)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            std::fs::remove_file(entry.path())?;
        }
    }
    let dest = slot_dir.join(variant.format.file_name());
    write_atomic(&dest, |f| -> anyhow::Result<()> {
        let src = std::io::BufReader::with_capacity(256 << 10, std::fs::File::open(zstd_file)?);
        let at = (pause == Some(PausePoint::Decompress)).then_some(variant.raw.size / 2);
        decompress_verified(src, Tripwire { inner: f, written: 0, at }, &variant.zstd, &variant.raw)?;
        Ok(())
    })?;
    sync_dir(slot_dir)?;
    Ok(dest)
}

/// A variant's golden file: tensors for an ONNX model, prompts and the reference's answers for a language model.
#[derive(Debug)]
pub enum Golden {
    Tensors(GoldenVectors),
    Llm(LlmGolden),
}

impl Golden {
    pub fn parse(format: ModelFormat, bytes: &[u8]) -> anyhow::Result<Self> {
        Ok(match format {
            ModelFormat::Onnx => Golden::Tensors(GoldenVectors::from_bytes(bytes)?),
            ModelFormat::Gguf => Golden::Llm(LlmGolden::from_bytes(bytes)?),
        })
    }

    /// Runs the golden check on a freshly loaded release; `Err` names what was out of tolerance.
    pub async fn check(&self, served: &Arc<Served>) -> anyhow::Result<()> {
        match self {
            Golden::Tensors(g) => golden_check(served, g).await,
            Golden::Llm(g) => {
                let engine = served.llm().context("a golden prompt file for a model that is not a language model")?;
                let report = g.check(&edgefleet_runtime::llm::golden::measure(engine, g).await?);
                if !report.passed() {
                    bail!("golden check failed: {report}");
                }
                tracing::info!(model = %served.model, release = %served.release, %report, "golden check passed");
                Ok(())
            }
        }
    }
}

/// Runs a variant's golden vectors on a freshly loaded session; `Err` names what was out of tolerance.
pub async fn golden_check(served: &Arc<Served>, golden: &GoldenVectors) -> anyhow::Result<()> {
    let mut actual = BTreeMap::new();
    for (case, inputs) in &golden.inputs {
        actual.insert(case.clone(), served.check(inputs.clone()).await.with_context(|| format!("golden case {case}"))?);
    }
    let report = golden.check(&actual);
    if !report.passed() {
        bail!("golden vectors failed:\n{report}");
    }
    Ok(())
}

/// How this device serves language models.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// llama.cpp backends to try, best first (from the hardware profile).
    pub options: LlmOptions,
    /// Sequences decoded together, requests that may wait, tokens per step, decoding threads.
    pub sequences: u32,
    pub queue: usize,
    pub batch: u32,
    pub threads: Option<i32>,
}

impl LlmSettings {
    pub fn engine(&self, context_length: u32) -> EngineConfig {
        EngineConfig {
            context_length,
            sequences: self.sequences.max(1),
            queue: self.queue,
            batch: self.batch,
            threads: self.threads,
        }
    }
}

impl Default for LlmSettings {
    fn default() -> Self {
        let e = EngineConfig::default();
        Self {
            options: LlmOptions::default(),
            sequences: e.sequences,
            queue: e.queue,
            batch: e.batch,
            threads: e.threads,
        }
    }
}

/// Everything one reconcile pass needs.
#[derive(Debug)]
pub struct Agent {
    pub device: DeviceId,
    pub server: String,
    pub client: reqwest::Client,
    pub layout: Layout,
    pub root: Root,
    /// The ONNX Runtime library, loaded on first use: a device with nothing to serve never maps it.
    pub ort_lib: PathBuf,
    pub options: Options,
    pub sessions: usize,
    /// How language models are loaded and served.
    pub llm: LlmSettings,
    pub models: Arc<ModelTable>,
    pub hardware: HardwareProfile,
    pub limits: Limits,
    pub bake: Bake,
    /// Bytes all loaded models may take together (see `Served::memory`); `None`: no budget.
    pub memory_budget: Option<u64>,
    /// Bytes the models and downloads may take on disk.
    pub disk_budget: Option<u64>,
    pub pause: Option<PausePoint>,
    /// How long past the long-poll a check-in may take before the server is treated as gone.
    pub checkin_slack: Duration,
}

fn event(
    kind: EventKind,
    model: &ModelName,
    release: ReleaseVersion,
    variant: &VariantId,
    detail: String,
) -> DeviceEvent {
    let at = chrono_now();
    let name = serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    crate::telemetry::install_event(&name, model.as_str(), release.get(), variant.as_str());
    DeviceEvent {
        id: format!("{}-{}-{}-{:?}-{}", model, release, variant, kind, at),
        kind,
        model: Some(model.clone()),
        release: Some(release),
        variant: Some(variant.clone()),
        detail,
        at,
    }
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// What an install has to hand between its effects.
struct Work<'a> {
    model: &'a ModelName,
    release: ReleaseVersion,
    variant: &'a Variant,
    slot: Slot,
    /// The committed release this install replaces, if any (where to roll back to).
    previous: Option<&'a Installed>,
    zst: Option<PathBuf>,
    golden_file: Option<PathBuf>,
    /// The new release, loaded.
    loaded: Option<Arc<Served>>,
    /// The release serving before the swap, while it is still in memory.
    before: Option<Arc<Served>>,
    /// The closed gate of a drain, until the new release (or the old one again) is installed.
    drained: Option<Drained>,
    swapped_at: Option<tokio::time::Instant>,
    /// The replaced release's health over its life, read before the new one loads (also when it is drained).
    baseline: Option<Window>,
    /// The new release's health counters at the swap (the golden run's requests are not its health).
    health_at_swap: Window,
}

impl Agent {
    fn runtime(&self) -> anyhow::Result<&'static Runtime> {
        Ok(Runtime::shared(Some(&self.ort_lib))?)
    }

    /// Loads the model in `slot` (on a blocking thread: loading takes long and must not hold up requests): an
    /// ONNX model's sessions, or, with `llm`, a language model and its engine.
    async fn load(
        &self,
        model: &ModelName,
        release: ReleaseVersion,
        variant: &VariantId,
        slot: Slot,
        llm: Option<&LlmSpec>,
    ) -> anyhow::Result<Served> {
        if let Some(spec) = llm {
            let path = self.layout.slot(model, slot).join(ModelFormat::Gguf.file_name());
            let (options, model, variant) = (self.llm.options.clone(), model.clone(), variant.clone());
            let config = self.llm.engine(spec.context_length);
            let spec = spec.clone();
            let served = tokio::task::spawn_blocking(move || {
                let template = (spec.chat_template.as_deref(), spec.chat_template_sha256.as_ref());
                Served::load_llm(&path, &options, config, template, model, release, variant, slot.as_str())
            })
            .await??;
            return Ok(served);
        }
        let runtime = self.runtime()?;
        let path = self.layout.slot(model, slot).join(ModelFormat::Onnx.file_name());
        let (options, sessions, model, variant) = (self.options.clone(), self.sessions, model.clone(), variant.clone());
        let served = tokio::task::spawn_blocking(move || {
            Served::load(runtime, &path, &options, sessions, model, release, variant, slot.as_str())
        })
        .await??;
        Ok(served)
    }

    /// Loads every committed model from its slot, so a restart serves what was committed before it.
    pub async fn restore(&self, state: &DeviceState) -> Vec<String> {
        let mut problems = Vec::new();
        for (model, i) in &state.committed {
            match self.load(model, i.release, &i.variant, i.slot, i.llm.as_ref()).await {
                Ok(s) => {
                    self.models.install(s);
                }
                Err(e) => problems.push(format!("{model}: committed slot {} does not load: {e:#}", i.slot.as_str())),
            }
        }
        problems
    }

    fn report(&self, state: &DeviceState) -> DeviceReport {
        DeviceReport {
            models: state
                .committed
                .iter()
                .map(|(m, i)| ModelStatus {
                    model: m.clone(),
                    active: Some(SlotStatus {
                        slot: i.slot.as_str().to_owned(),
                        release: i.release,
                        variant: i.variant.clone(),
                        provider: self.models.get(m.as_str()).map(|s| s.provider.clone()),
                        state: "committed".into(),
                    }),
                    staged: None,
                })
                .collect(),
            last_error: state.last_error.clone(),
            hardware_digest: None,
            hardware: Some(self.hardware.clone()),
            root_version: Some(self.root.version),
            desired_sequence: state.last_seen.desired_sequence,
        }
    }

    /// Sends the queued events; those the server accepted leave the queue, the rest wait for the next pass.
    async fn flush_events(&self, state: &mut DeviceState) -> anyhow::Result<()> {
        if state.pending_events.is_empty() {
            return Ok(());
        }
        let sent = state.pending_events.len();
        let r = self
            .client
            .post(format!("{}/api/v1/device/events", self.server))
            .json(&state.pending_events)
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match r {
            Ok(_) => {
                state.pending_events.drain(..sent);
                self.layout.save_state(state)
            }
            Err(e) => {
                tracing::warn!(error = %e, queued = sent, "reporting events failed; they are sent again next time");
                Ok(())
            }
        }
    }

    /// Walks the trusted root forward towards the server's `latest` version; answers whether it moved.
    pub async fn walk_to(&mut self, latest: u64) -> bool {
        if latest <= self.root.version {
            return false;
        }
        let stored = self.layout.trusted_root();
        match crate::roots::walk_roots(self.root.clone(), latest, &self.server, &self.client, &stored, &self.limits)
            .await
        {
            Ok(root) if root.version > self.root.version => {
                self.root = root;
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "storing a newer root failed");
                false
            }
        }
    }

    /// One pass: send queued events, check in (long-poll `wait` seconds), verify, install what changed, report.
    /// Answers the server's suggested interval.
    pub async fn reconcile(&mut self, state: &mut DeviceState, wait: u64) -> anyhow::Result<Checkin> {
        self.flush_events(state).await?;
        let mut req =
            self.client.post(format!("{}/api/v1/device/checkin?wait={wait}", self.server)).json(&self.report(state));
        if let Some(etag) = &state.etag {
            req = req.header("if-none-match", etag);
        }
        // A server that holds the check-in past the long-poll it was asked for is treated as gone.
        let resp = req.timeout(Duration::from_secs(wait) + self.checkin_slack).send().await.context("check-in")?;
        let interval = resp
            .headers()
            .get(edgefleet_protocol::api::CHECKIN_INTERVAL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(60)
            .clamp(1, MAX_CHECKIN_INTERVAL_SECS);
        let root_version = resp
            .headers()
            .get(edgefleet_protocol::api::ROOT_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if resp.status() == 304 {
            return Ok(Checkin { interval, changed: false, root_version });
        }
        if !resp.status().is_success() {
            bail!("check-in refused ({}): {}", resp.status(), crate::capped::text(resp).await);
        }
        let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = crate::capped::body(resp, self.limits.max_desired_state_bytes, "desired state").await?;
        let verified = loop {
            let now = chrono::Utc::now();
            let refusal = match Verifier::new(&self.root, &state.last_seen, now, &self.limits)
                .desired_state(&body, &self.device)
            {
                Ok(v) => break v,
                Err(refusal) => refusal,
            };
            // Refused, from a server on a newer root: the document may be signed by keys only that root trusts.
            // Walk forward and judge the same document again (each pass raises the root, so this ends).
            if let Some(latest) = root_version
                && self.walk_to(latest).await
            {
                continue;
            }
            let msg = format!("desired state refused ({}): {refusal}", refusal.defence());
            state.last_error = Some(msg.clone());
            self.layout.save_state(state)?;
            bail!(msg);
        };
        // The floors its signed releases carry count from now on (floors only rise); its sequence and tag only
        // once every install it asks for has ended: after a crash, or an interrupted download, the device takes
        // the same document again (a recorded tag would be answered 304, a recorded sequence refused as a replay).
        for release in &verified.releases {
            state.last_seen.record_release(&release.manifest);
        }
        let mut interrupted = None;
        for (action, (assignment, release)) in
            plan(state, &verified).into_iter().zip(verified.state.models.iter().zip(&verified.releases))
        {
            let Action::Install { model, release: version, variant, slot } = action else { continue };
            let Some(v) = release.manifest.variant(&assignment.variant) else { continue };
            let mut events = Vec::new();
            if let Some((kind, msg)) = self.refusal(&model, version, &variant, v, slot) {
                tracing::warn!(%model, %version, %msg, "refused before install");
                if kind == EventKind::Refused {
                    self.layout.end_load(&model);
                }
                state.failed.insert(model.clone(), (version, variant.clone()));
                events.push(event(kind, &model, version, &variant, msg.clone()));
                state.last_error = Some(format!("{model} {version}: {msg}"));
                state.queue_events(events);
                self.layout.save_state(state)?;
                continue;
            }
            let result = self.install(&model, version, v, slot, state.committed.get(&model), &mut events).await;
            self.layout.end_load(&model);
            match result {
                Ok(installed) => {
                    events.push(event(
                        EventKind::Installed,
                        &model,
                        version,
                        &variant,
                        format!("slot {}", slot.as_str()),
                    ));
                    state.committed.insert(model, installed);
                    state.last_error = None;
                }
                Err((kind, msg)) => {
                    tracing::warn!(%model, %version, error = %msg, "install failed; the previous release keeps serving");
                    if kind == EventKind::DownloadFailed {
                        // Transient (the network, not the bytes): try again, after the run loop's backoff.
                        interrupted = Some(msg.clone());
                    } else {
                        state.failed.insert(model.clone(), (version, variant.clone()));
                    }
                    events.push(event(kind, &model, version, &variant, msg.clone()));
                    state.last_error = Some(format!("{model} {version}: {msg}"));
                }
            }
            // What happened is on disk before it is reported, so a crash cannot lose the report.
            state.queue_events(events);
            self.layout.save_state(state)?;
        }
        if interrupted.is_none() {
            state.last_seen.desired_sequence = Some(verified.state.sequence);
            state.etag = etag;
            self.drop_unnamed(state, &verified).await;
        }
        self.layout.save_state(state)?;
        self.flush_events(state).await?;
        if let Some(msg) = interrupted {
            bail!("a download was interrupted; it resumes at the next check-in: {msg}");
        }
        Ok(Checkin { interval, changed: true, root_version })
    }

    /// Why `variant` of `release` of `model` is refused before its install begins, if it is: the server's choice
    /// of variant does not fit this device's own hardware (the server chose from what the device reported; the
    /// device checks), it would not fit the disk budget, or the daemon died while loading it too many times.
    fn refusal(
        &self,
        model: &ModelName,
        release: ReleaseVersion,
        variant: &VariantId,
        v: &Variant,
        slot: Slot,
    ) -> Option<(EventKind, String)> {
        if let Some(why) = v.requirements.unmet(v.format, &self.hardware) {
            return Some((EventKind::NoVariantFits, format!("variant {variant} does not fit this device: {why}")));
        }
        if let Some(why) = self.disk_shortfall(model, slot, v) {
            return Some((EventKind::Refused, format!("release {release} does not fit the disk budget: {why}")));
        }
        let begun = self.layout.loads_begun(model, release, variant);
        (begun >= MAX_LOADS_BEGUN).then(|| {
            let msg = format!("the daemon stopped during each of {begun} attempts to load this model (a crash?)");
            (EventKind::Refused, msg)
        })
    }

    /// What the document no longer asks for goes: models it does not name are drained (requests in flight
    /// finish), unloaded, their slots deleted and forgotten; partial downloads of anything it does not name are
    /// deleted.
    async fn drop_unnamed(&self, state: &mut DeviceState, verified: &VerifiedDesiredState) {
        let named: std::collections::BTreeSet<&ModelName> = verified.state.models.iter().map(|a| &a.model).collect();
        let gone: Vec<ModelName> = state.committed.keys().filter(|m| !named.contains(m)).cloned().collect();
        for model in gone {
            drop(self.models.drain(&model).await);
            if let Err(e) = std::fs::remove_dir_all(self.layout.model_dir(&model)) {
                tracing::warn!(%model, error = %e, "removing the model's slots");
            }
            if let Some(was) = state.committed.remove(&model) {
                let detail = "no longer in the desired state: unloaded and its slots removed".to_owned();
                state.queue_events(vec![event(EventKind::Removed, &model, was.release, &was.variant, detail)]);
                tracing::info!(%model, release = %was.release, "removed: no longer in the desired state");
            }
            state.failed.remove(&model);
        }
        let wanted: std::collections::BTreeSet<String> = verified
            .state
            .models
            .iter()
            .zip(&verified.releases)
            .filter_map(|(a, r)| r.manifest.variant(&a.variant))
            .flat_map(|v| [format!("{}.partial", v.zstd.sha256), format!("{}.partial", v.golden.sha256)])
            .collect();
        for entry in std::fs::read_dir(self.layout.downloads()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") && !wanted.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        if let Err(e) = self.layout.save_state(state) {
            tracing::warn!(error = %e, "writing the state after removals");
        }
    }

    /// Why `v` would not fit the disk budget in `slot` of `model`: its compressed download, its golden file and
    /// its staged model, beside everything else the daemon keeps (the slot it replaces is freed first).
    fn disk_shortfall(&self, model: &ModelName, slot: Slot, v: &Variant) -> Option<String> {
        let budget = self.disk_budget?;
        let used = disk_usage(&self.layout.models()) + disk_usage(&self.layout.downloads());
        let freed = disk_usage(&self.layout.slot(model, slot))
            + std::fs::metadata(self.layout.partial(&v.zstd)).map_or(0, |m| m.len());
        let need = v.zstd.size + v.golden.size + v.raw.size;
        let after = used.saturating_sub(freed) + need;
        (after > budget)
            .then(|| format!("it needs {need} bytes, and with what stays the daemon would use {after} of {budget}"))
    }

    /// Drives one install's state machine ([`Install`]) to its end, performing each effect it asks for. The
    /// committed state is the caller's to write once this answers. Each step's report is pushed to `events`.
    async fn install(
        &self,
        model: &ModelName,
        release: ReleaseVersion,
        v: &Variant,
        slot: Slot,
        previous: Option<&Installed>,
        events: &mut Vec<DeviceEvent>,
    ) -> Result<Installed, (EventKind, String)> {
        let current = self.models.get(model.as_str());
        let old = current.as_ref().map_or(0, |s| s.memory);
        let need = match &v.llm {
            Some(l) => l.memory_bytes + l.kv_cache_bytes * u64::from(self.llm.sequences.max(1) - 1),
            None => v.raw.size * self.sessions.max(1) as u64,
        };
        let fit = fit(self.memory_budget, self.models.memory_except(model), old, need);
        drop(current);
        let resume_from = std::fs::metadata(self.layout.partial(&v.zstd)).map_or(0, |m| m.len());
        let (mut machine, mut step) =
            Install::start(self.bake, fit, previous.is_some(), slot.as_str(), v.zstd.size, resume_from);
        let mut work = Work {
            model,
            release,
            variant: v,
            slot,
            previous,
            zst: None,
            golden_file: None,
            loaded: None,
            before: None,
            drained: None,
            swapped_at: None,
            baseline: None,
            health_at_swap: Window::default(),
        };
        loop {
            if let Some((kind, detail)) = step.report.take() {
                events.push(event(kind, model, release, &v.id, detail));
            }
            let outcome = match &step.effect {
                Effect::Done(result) => {
                    // Downloads are kept until the release is committed or refused, so a retry resumes them.
                    for f in [&work.zst, &work.golden_file].into_iter().flatten() {
                        let _ = std::fs::remove_file(f);
                    }
                    return result.clone().map(|()| Installed {
                        release,
                        variant: v.id.clone(),
                        slot,
                        raw: v.raw,
                        llm: v.llm.clone(),
                    });
                }
                effect => self.perform(effect, &mut work).await,
            };
            step = machine.on(outcome);
        }
    }

    /// Performs one effect of an install (never `Done`).
    async fn perform(&self, effect: &Effect, w: &mut Work<'_>) -> Outcome {
        let failed = |kind: EventKind| move |e: anyhow::Error| Outcome::Failed(kind, format!("{e:#}"));
        match effect {
            Effect::Download => {
                let fetch = async {
                    let zst = download(&self.client, &self.server, &self.layout, &w.variant.zstd, self.pause)
                        .await
                        .context("model download")?;
                    let golden = download(&self.client, &self.server, &self.layout, &w.variant.golden, None)
                        .await
                        .context("golden download")?;
                    anyhow::Ok((zst, golden))
                };
                match fetch.await {
                    Ok((zst, golden)) => {
                        (w.zst, w.golden_file) = (Some(zst), Some(golden));
                        Outcome::Done
                    }
                    // Bytes that are not the signed ones are a verification failure; anything else (the network,
                    // the server) may go away by itself and is tried again on the next pass.
                    Err(e) if e.chain().any(|c| c.is::<NotSigned>()) => failed(EventKind::VerificationFailed)(e),
                    Err(e) => failed(EventKind::DownloadFailed)(e),
                }
            }
            Effect::Stage => {
                let (zst, variant, dir) =
                    (w.zst.clone().unwrap_or_default(), w.variant.clone(), self.layout.slot(w.model, w.slot));
                let pause = self.pause;
                let staged = tokio::task::spawn_blocking(move || stage(&zst, &variant, &dir, pause))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r);
                match staged {
                    // The staged file is the slot's model file, which `load` opens.
                    Ok(_) => {
                        pause_if(self.pause, PausePoint::Renamed).await;
                        Outcome::Done
                    }
                    Err(e) => failed(EventKind::VerificationFailed)(e),
                }
            }
            Effect::Load | Effect::DrainAndLoad => {
                w.baseline = self.models.get(w.model.as_str()).map(|s| s.health.snapshot());
                if matches!(effect, Effect::DrainAndLoad) {
                    w.drained = Some(self.models.drain(w.model).await);
                } else {
                    w.before = self.models.get(w.model.as_str());
                }
                // Counted before, cleared when the install ends: loads that never ended are crashes.
                self.layout.begin_load(w.model, w.release, &w.variant.id);
                match self.load(w.model, w.release, &w.variant.id, w.slot, w.variant.llm.as_ref()).await {
                    Ok(s) => {
                        w.loaded = Some(Arc::new(s));
                        Outcome::Done
                    }
                    Err(e) => failed(EventKind::LoadFailed)(e.context("loading the model")),
                }
            }
            Effect::Golden => {
                let golden = w
                    .golden_file
                    .as_deref()
                    .map(std::fs::read)
                    .unwrap_or_else(|| Err(std::io::ErrorKind::NotFound.into()))
                    .map_err(anyhow::Error::from)
                    .and_then(|b| Golden::parse(w.variant.format, &b))
                    .context("golden vectors");
                let served = w.loaded.clone();
                match (golden, served) {
                    (Ok(g), Some(s)) => match g.check(&s).await {
                        Ok(()) => Outcome::Done,
                        Err(e) => failed(EventKind::GoldenFailed)(e),
                    },
                    (Err(e), _) => failed(EventKind::VerificationFailed)(e),
                    (_, None) => Outcome::Failed(EventKind::LoadFailed, "nothing loaded".into()),
                }
            }
            Effect::Swap => {
                let Some(new) = w.loaded.clone() else {
                    return Outcome::Failed(EventKind::LoadFailed, "nothing loaded".into());
                };
                w.health_at_swap = new.health.snapshot();
                match w.drained.take() {
                    Some(gate) => gate.install(new),
                    None => {
                        self.models.install_arc(new);
                    }
                }
                w.swapped_at = Some(tokio::time::Instant::now());
                Outcome::Done
            }
            Effect::Watch(after) => {
                tokio::time::sleep(*after).await;
                let Some(new) = &w.loaded else { return Outcome::Done };
                Outcome::Health {
                    elapsed: w.swapped_at.map_or(Duration::ZERO, |t| t.elapsed()),
                    new: new.health.snapshot().since(&w.health_at_swap),
                    baseline: w.baseline.clone(),
                }
            }
            Effect::RollBack => match (w.before.take(), w.previous) {
                // Still in memory: swap it back.
                (Some(before), _) => {
                    self.models.install_arc(before);
                    Outcome::Done
                }
                // Drained to make room: unload the new release (if it serves) and load the previous one again.
                (None, Some(previous)) => {
                    let gate = match w.drained.take() {
                        Some(gate) => gate,
                        None => self.models.drain(w.model).await,
                    };
                    w.loaded = None;
                    match self
                        .load(w.model, previous.release, &previous.variant, previous.slot, previous.llm.as_ref())
                        .await
                    {
                        Ok(s) => {
                            gate.install(Arc::new(s));
                            Outcome::Done
                        }
                        Err(e) => failed(EventKind::LoadFailed)(e),
                    }
                }
                (None, None) => Outcome::Done,
            },
            Effect::Commit => Outcome::Done,
            Effect::Done(_) => unreachable!("the driver ends at Done"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_in_pacing() {
        let (quiet, secs) = (Checkin { interval: 60, changed: false, root_version: None }, Duration::from_secs);
        // A long-poll the server held: poll again at once.
        assert_eq!(next_checkin(quiet, secs(30), secs(30), 7), Duration::ZERO);
        // A change: at once.
        assert_eq!(
            next_checkin(Checkin { interval: 60, changed: true, root_version: None }, secs(0), secs(0), 7),
            Duration::ZERO
        );
        // No long-poll, or a server that answered at once: the interval plus at most 10 % jitter, never a tight loop.
        for (wait, held) in [(secs(0), secs(0)), (secs(30), Duration::from_millis(20))] {
            for seed in [0, 1, 5_999, 6_000, u64::MAX] {
                let d = next_checkin(quiet, wait, held, seed);
                assert!(d >= secs(60) && d <= secs(66), "{d:?}");
            }
        }
        assert!(
            next_checkin(Checkin { interval: 0, changed: false, root_version: None }, secs(0), secs(0), 0) >= secs(1)
        );
        // A server suggesting forever: a day at most (plus jitter), no overflow.
        let forever = Checkin { interval: u64::MAX, changed: false, root_version: None };
        assert!(next_checkin(forever, secs(0), secs(0), u64::MAX) <= secs(86_400 + 8_640));
    }
}
