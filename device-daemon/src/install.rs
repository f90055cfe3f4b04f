//! One install, driven: the effects the install machine ([`crate::machine::Install`]) asks for, performed —
//! download, stage, load (beside the serving release, or after draining it), golden check, swap, health
//! readings, rollback (from memory, or reloaded from the previous slot after a drain) — and loading committed
//! models at start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edgefleet_protocol::api::{DeviceEvent, EventKind};
use edgefleet_protocol::{ModelName, ReleaseVersion, VariantId};
use edgefleet_runtime::Runtime;
use edgefleet_runtime::llm::{EngineConfig, LlmOptions};
use model_registry::{LlmSpec, ModelFormat, Variant};

use crate::agent::{Agent, event};
use crate::download::{NotSigned, PausePoint, download, pause_if, stage};
use crate::golden::Golden;
use crate::health::Window;
use crate::layout::{DeviceState, Installed, Slot};
use crate::machine::{Effect, Install, Outcome, fit};
use crate::serving::{Drained, Served};

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
    pub(crate) fn runtime(&self) -> anyhow::Result<&'static Runtime> {
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
        self.models.set_policies(&state.routing);
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

    /// Drives one install's state machine ([`Install`]) to its end, performing each effect it asks for. The
    /// committed state is the caller's to write once this answers. Each step's report is pushed to `events`.
    pub(crate) async fn install(
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
                    let zst = download(
                        &self.client,
                        &self.redirects,
                        &self.server,
                        &self.layout,
                        &w.variant.zstd,
                        self.pause,
                    )
                    .await
                    .context("model download")?;
                    let golden =
                        download(&self.client, &self.redirects, &self.server, &self.layout, &w.variant.golden, None)
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
                    Err(e) if e.chain().any(|c| c.is::<NotSigned>()) => Outcome::Failed(
                        EventKind::VerificationFailed,
                        format!("{}: {e:#}", crate::download::BAD_DOWNLOAD),
                    ),
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
