//! The agent: check-in, and applying what the signed desired state names.
//!
//! Decisions are pure: [`next_checkin`], the pass over an accepted document ([`crate::reconcile::Pass`]:
//! what to install, what is refused or failed for good, when the document counts as applied, what is removed)
//! and each install's machine ([`crate::machine::Install`], driven in `install.rs`). This module checks in,
//! verifies (walking the root forward when a newer one is needed), and performs the pass's effects. Each effect
//! leaves disk consistent at every instant (`layout.rs`, `download.rs`); a failure at any step leaves the
//! previous model serving and is reported as an event.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use edgefleet_protocol::api::{DeviceEvent, DeviceReport, EventKind, HardwareProfile, ModelStatus, SlotStatus};
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion, VariantId};
use edgefleet_runtime::Options;
use model_registry::{Limits, Root, Variant, VerifiedDesiredState, Verifier};

use crate::download::PausePoint;
use crate::health::Bake;
use crate::install::LlmSettings;
use crate::layout::{DeviceState, Layout, MAX_LOADS_BEGUN, Slot, disk_usage};
use crate::reconcile::{Document, Effect as PassEffect, Event as PassEvent, Job, Pass};
use crate::serving::ModelTable;

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

/// Everything one reconcile pass needs.
#[derive(Debug)]
pub struct Agent {
    pub device: DeviceId,
    pub server: String,
    pub client: reqwest::Client,
    /// How blob downloads redirected to an object store are fetched.
    pub redirects: crate::identity::Redirects,
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
    /// The power sensor, if the device has one (energy of variant measurements).
    pub power: Option<crate::power::Source>,
}

pub(crate) fn event(
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
        measurements: Vec::new(),
    }
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The variant the accepted document assigns to `model` (the verifier checked it exists).
fn variant<'a>(verified: &'a VerifiedDesiredState, model: &ModelName) -> anyhow::Result<&'a Variant> {
    verified
        .state
        .models
        .iter()
        .zip(&verified.releases)
        .find(|(a, _)| a.model == *model)
        .and_then(|(a, r)| r.manifest.variant(&a.variant))
        .with_context(|| format!("the document assigns no variant of {model}"))
}

impl Agent {
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

    /// One pass: send queued events, check in (long-poll `wait` seconds), verify, install what changed, measure
    /// the variants a document asked to measure, report. Answers the server's suggested interval.
    pub async fn reconcile(&mut self, state: &mut DeviceState, wait: u64) -> anyhow::Result<Checkin> {
        let checkin = self.check_in(state, wait).await?;
        if !state.to_measure.is_empty() {
            self.measure_pending(state).await?;
            self.flush_events(state).await?;
        }
        Ok(checkin)
    }

    async fn check_in(&mut self, state: &mut DeviceState, wait: u64) -> anyhow::Result<Checkin> {
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
        self.apply(state, &verified, etag).await?;
        Ok(Checkin { interval, changed: true, root_version })
    }

    /// Applies an accepted document: drives its pass ([`Pass`]) to the end, performing each effect it asks for.
    async fn apply(
        &self,
        state: &mut DeviceState,
        verified: &VerifiedDesiredState,
        etag: Option<String>,
    ) -> anyhow::Result<()> {
        let (mut pass, mut effects) = Pass::start(state, &Document::of(verified, etag));
        self.models.set_policies(&state.routing);
        loop {
            let mut answer = None;
            for effect in effects {
                match effect {
                    PassEffect::Judge(job) => {
                        let refusal = self.refusal(&job, variant(verified, &job.model)?);
                        if let Some((_, why)) = &refusal {
                            tracing::warn!(model = %job.model, release = %job.release, %why, "refused before install");
                        }
                        answer = Some(PassEvent::Judged(refusal));
                    }
                    PassEffect::Install(job) => {
                        let (v, previous) = (variant(verified, &job.model)?, state.committed.get(&job.model));
                        let mut events = Vec::new();
                        let result = self.install(&job.model, job.release, v, job.slot, previous, &mut events).await;
                        if let Err((_, why)) = &result {
                            tracing::warn!(model = %job.model, release = %job.release, error = %why,
                                "install failed; the previous release keeps serving");
                        }
                        state.queue_events(events);
                        answer = Some(PassEvent::Installed(result));
                    }
                    PassEffect::EndLoad(model) => self.layout.end_load(&model),
                    PassEffect::Report { kind, model, release, variant, detail } => {
                        state.queue_events(vec![event(kind, &model, release, &variant, detail)]);
                    }
                    PassEffect::Save => self.layout.save_state(state)?,
                    PassEffect::Remove { models, keep } => {
                        self.remove(&models, &keep).await;
                        answer = Some(PassEvent::Removed);
                    }
                    PassEffect::Done(result) => {
                        if result.is_ok() {
                            state.to_measure = crate::measure::asks(verified, state);
                            self.layout.save_state(state)?;
                        }
                        self.flush_events(state).await?;
                        return result.map_err(|why| {
                            anyhow::anyhow!("a download was interrupted; it resumes at the next check-in: {why}")
                        });
                    }
                }
            }
            effects = pass.on(state, answer.context("a pass stopped without a question")?);
        }
    }

    /// Why a job is refused before its install begins, if it is: the server's choice of variant does not fit
    /// this device's own hardware (the server chose from what the device reported; the device checks), it would
    /// not fit the disk budget, or the daemon died while loading it too many times.
    fn refusal(&self, job: &Job, v: &Variant) -> Option<(EventKind, String)> {
        let Job { model, release, variant, slot } = job;
        if let Some(why) = v.requirements.unmet(v.format, &self.hardware) {
            return Some((EventKind::NoVariantFits, format!("variant {variant} does not fit this device: {why}")));
        }
        if let Some(why) = self.disk_shortfall(model, *slot, v) {
            return Some((EventKind::Refused, format!("release {release} does not fit the disk budget: {why}")));
        }
        let begun = self.layout.loads_begun(model, *release, variant);
        (begun >= MAX_LOADS_BEGUN).then(|| {
            let msg = format!("the daemon stopped during each of {begun} attempts to load this model (a crash?)");
            (EventKind::Refused, msg)
        })
    }

    /// Removes what the document no longer asks for: these models are drained (requests in flight finish),
    /// unloaded and their slots deleted; partial downloads not in `keep` are deleted.
    async fn remove(&self, models: &[ModelName], keep: &BTreeSet<String>) {
        for model in models {
            drop(self.models.drain(model).await);
            if let Err(e) = std::fs::remove_dir_all(self.layout.model_dir(model)) {
                tracing::warn!(%model, error = %e, "removing the model's slots");
            }
            tracing::info!(%model, "removed: no longer in the desired state");
        }
        for entry in std::fs::read_dir(self.layout.downloads()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") && !keep.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
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
