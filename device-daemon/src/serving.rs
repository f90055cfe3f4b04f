//! Serving: per model, one handle (`ArcSwapOption<Served>`) to a loaded release — a pool of ONNX Runtime
//! sessions plus the signature from the manifest, or a llama.cpp engine for a language model — swapped
//! atomically. A request takes the handle once and
//! finishes on that release even if a swap happens meanwhile; the old pool is freed when its last request
//! ends. A swap therefore never fails a request.
//!
//! When old and new do not both fit the memory budget, the swap drains instead: the model's gate closes (new
//! requests wait at it), in-flight requests finish, the old release is unloaded, the new one loaded, and the
//! gate opens. Requests are delayed, never failed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use edgefleet_protocol::tensor::{HostTensor, TensorSpec};
use edgefleet_protocol::{ModelName, ReleaseVersion, Sha256Digest, VariantId};
use edgefleet_runtime::llm::{Engine, EngineConfig, LlmError, LlmModel, LlmOptions};
use edgefleet_runtime::{Model, Options, Runtime, RuntimeError};
use model_registry::routing::RoutingPolicy;
use serde::Serialize;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, Semaphore};

use crate::health::Health;

/// A release of a model, loaded and ready.
#[derive(Debug)]
pub struct Served {
    pub model: ModelName,
    pub release: ReleaseVersion,
    pub variant: VariantId,
    /// `a` or `b`: the slot directory the model file was loaded from.
    pub slot: String,
    pub provider: String,
    pub fallbacks: Vec<String>,
    /// The tensors an ONNX model takes and gives (empty for a language model).
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    work: Work,
    /// Requests answered and failed by this release and their latency, for the health watch.
    pub health: Health,
    /// The same, as OpenTelemetry metrics (no-ops unless telemetry was started).
    instruments: crate::telemetry::InferenceInstruments,
    /// A language model's own numbers (time to first token, per output token, tokens).
    pub llm_instruments: Option<crate::telemetry::LlmInstruments>,
    /// What the memory budget counts for this release: model file bytes × sessions (ONNX Runtime keeps the
    /// weights once per session); for a language model its weights and the KV cache of all its sequences.
    pub memory: u64,
    /// A language model's measured prompt-reading rate, tokens per second (a moving average over requests).
    prefill: Mutex<Option<f64>>,
}

/// What answers a release's requests.
#[derive(Debug)]
enum Work {
    Sessions(SessionPool),
    Llm(Engine),
}

/// Sessions of one model; `Session::run` needs `&mut`, so each request borrows one whole.
#[derive(Debug)]
struct SessionPool {
    idle: Mutex<Vec<Model>>,
    permits: Semaphore,
}

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("model {0} is not loaded")]
    NotLoaded(String),
    #[error("{0}")]
    Run(#[from] RuntimeError),
    #[error("the inference worker stopped: {0}")]
    Worker(String),
    #[error("this is a language model: ask it through /v1/chat/completions or /v1/completions")]
    NotTensors,
}

/// What a loaded release looks like from outside.
#[derive(Debug, Clone, Serialize)]
pub struct ServedInfo {
    pub model: ModelName,
    pub release: ReleaseVersion,
    pub variant: VariantId,
    pub slot: String,
    pub provider: String,
    pub fallbacks: Vec<String>,
    /// `onnx` or `gguf`.
    pub format: &'static str,
}

impl Served {
    /// Loads `sessions` sessions of the model file at `path` with `options`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        options: &Options,
        sessions: usize,
        model: ModelName,
        release: ReleaseVersion,
        variant: VariantId,
        slot: &str,
    ) -> Result<Self, RuntimeError> {
        let memory = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) * sessions.max(1) as u64;
        // Loading yields to serving: the release being replaced may be answering requests on these same cores.
        let pool = edgefleet_runtime::with_low_priority(|| {
            (0..sessions.max(1)).map(|_| runtime.open_with(path, options)).collect::<Result<Vec<_>, _>>()
        })?;
        let first = &pool[0];
        let instruments = crate::telemetry::InferenceInstruments::new(
            model.as_str(),
            release.get(),
            variant.as_str(),
            &first.provider,
        );
        Ok(Self {
            instruments,
            llm_instruments: None,
            model,
            release,
            variant,
            slot: slot.to_owned(),
            provider: first.provider.clone(),
            fallbacks: first.fallbacks.clone(),
            inputs: first.inputs.clone(),
            outputs: first.outputs.clone(),
            work: Work::Sessions(SessionPool { permits: Semaphore::new(pool.len()), idle: Mutex::new(pool) }),
            health: Health::default(),
            memory,
            prefill: Mutex::new(None),
        })
    }

    /// Loads the GGUF at `path` on the first backend of `options` this device has, with the chat template
    /// `template` says (the release's override, and the digest the one in use must have), and starts its engine.
    #[allow(clippy::too_many_arguments)]
    pub fn load_llm(
        path: &Path,
        options: &LlmOptions,
        config: EngineConfig,
        template: (Option<&str>, Option<&Sha256Digest>),
        model: ModelName,
        release: ReleaseVersion,
        variant: VariantId,
        slot: &str,
    ) -> Result<Self, LlmError> {
        let mut loaded = edgefleet_runtime::with_low_priority(|| LlmModel::load(path, options))?;
        if let Some(t) = template.0 {
            loaded = loaded.with_chat_template(t)?;
        }
        let in_use = loaded.facts.chat_template.as_deref().map(|t| Sha256Digest::of(t.as_bytes()));
        if in_use.as_ref() != template.1 {
            return Err(LlmError::Template(format!(
                "the chat template in use ({}) is not the release's ({})",
                in_use.map_or("none".into(), |d| d.to_string()),
                template.1.map_or("none".into(), ToString::to_string)
            )));
        }
        let memory = loaded.facts.memory_bytes(config.context_length, config.sequences);
        let (provider, fallbacks) = (loaded.backend.clone(), loaded.fallbacks.clone());
        let engine = Engine::start(Arc::new(loaded), config)?;
        let instruments =
            crate::telemetry::InferenceInstruments::new(model.as_str(), release.get(), variant.as_str(), &provider);
        let llm_instruments =
            crate::telemetry::LlmInstruments::new(model.as_str(), release.get(), variant.as_str(), &provider);
        Ok(Self {
            instruments,
            llm_instruments: Some(llm_instruments),
            model,
            release,
            variant,
            slot: slot.to_owned(),
            provider,
            fallbacks,
            inputs: Vec::new(),
            outputs: Vec::new(),
            work: Work::Llm(engine),
            health: Health::default(),
            memory,
            prefill: Mutex::new(None),
        })
    }

    /// The language model's engine, if this release is one.
    /// Counts a request's prompt reading: `prompt_tokens` read before the first token came after `ttft` (queueing
    /// included, as a request waiting in line really waits).
    pub fn observe_prefill(&self, prompt_tokens: u32, ttft: std::time::Duration) {
        if prompt_tokens == 0 || ttft.is_zero() {
            return;
        }
        let rate = f64::from(prompt_tokens) / ttft.as_secs_f64();
        let mut p = self.prefill.lock().unwrap_or_else(|p| p.into_inner());
        *p = Some(p.map_or(rate, |old| 0.8 * old + 0.2 * rate));
    }

    /// The measured prompt-reading rate, tokens per second; `None` before the first request.
    pub fn prefill_rate(&self) -> Option<f64> {
        *self.prefill.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn llm(&self) -> Option<&Engine> {
        match &self.work {
            Work::Llm(e) => Some(e),
            Work::Sessions(_) => None,
        }
    }

    /// Counts one language-model request in the release's health (its latency is its time to first token) and
    /// its inference telemetry.
    pub fn record(&self, ok: bool, latency: std::time::Duration) {
        self.health.record(ok, latency);
        self.instruments.record(ok, latency);
    }

    pub fn info(&self) -> ServedInfo {
        ServedInfo {
            model: self.model.clone(),
            release: self.release,
            variant: self.variant.clone(),
            slot: self.slot.clone(),
            provider: self.provider.clone(),
            fallbacks: self.fallbacks.clone(),
            format: if self.llm().is_some() { "gguf" } else { "onnx" },
        }
    }

    /// Runs one request on a free session of this release (waiting for one if all are busy), counted in the
    /// release's health and telemetry.
    pub async fn infer(
        self: &Arc<Self>,
        inputs: BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, InferError> {
        let started = Instant::now();
        let result = self.run(inputs).await;
        let took = started.elapsed();
        let ok = matches!(result, Ok(Ok(_)));
        self.health.record(ok, took);
        self.instruments.record(ok, took);
        Ok(result??)
    }

    /// Runs inputs that are not a request (golden vectors before a swap): answered the same way, counted
    /// nowhere, so neither the bake watch nor the fleet's latency sees them.
    pub async fn check(
        self: &Arc<Self>,
        inputs: BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, InferError> {
        Ok(self.run(inputs).await??)
    }

    /// The session run itself: the outer error is the worker, the inner one ONNX Runtime's.
    async fn run(
        self: &Arc<Self>,
        inputs: BTreeMap<String, HostTensor>,
    ) -> Result<Result<BTreeMap<String, HostTensor>, RuntimeError>, InferError> {
        let Work::Sessions(pool) = &self.work else { return Err(InferError::NotTensors) };
        let permit = pool.permits.acquire().await.map_err(|e| InferError::Worker(e.to_string()))?;
        let mut session = pool
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or_else(|| InferError::Worker("no idle session under a permit".into()))?;
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let r = session.run(&inputs);
            (session, r)
        })
        .await;
        let (session, result) = match joined {
            Ok(done) => done,
            Err(e) => {
                // The session went down with its worker: the pool is one smaller from now on.
                permit.forget();
                return Err(InferError::Worker(e.to_string()));
            }
        };
        if let Work::Sessions(pool) = &this.work {
            pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(session);
        }
        drop(permit);
        Ok(result)
    }
}

/// One model's place in the table: the handle to the release serving it, and the gate a drain closes.
#[derive(Debug, Default)]
struct Entry {
    handle: ArcSwapOption<Served>,
    gate: Arc<tokio::sync::RwLock<()>>,
}

/// A request's hold on the release answering it: while any lease is out, a drain waits.
#[derive(Debug)]
pub struct Lease {
    pub served: Arc<Served>,
    _open: OwnedRwLockReadGuard<()>,
}

/// A model whose gate is closed: no request runs on it, new ones wait. Opening it (drop) lets them through to
/// whatever release is installed by then.
#[derive(Debug)]
pub struct Drained {
    entry: Arc<Entry>,
    _closed: OwnedRwLockWriteGuard<()>,
}

impl Drained {
    /// Makes `served` the release the waiting requests will run on.
    pub fn install(&self, served: Arc<Served>) {
        self.entry.handle.store(Some(served));
    }
}

/// Every model this device serves, each behind its own swappable handle.
#[derive(Debug, Default)]
pub struct ModelTable {
    models: RwLock<HashMap<ModelName, Arc<Entry>>>,
    /// Each language model's routing policy, from the signed release the last accepted document names.
    policies: RwLock<HashMap<ModelName, Arc<RoutingPolicy>>>,
}

impl ModelTable {
    /// Puts these routing policies in force, every other model's out.
    pub fn set_policies(&self, policies: &BTreeMap<ModelName, RoutingPolicy>) {
        let map = policies.iter().map(|(m, p)| (m.clone(), Arc::new(p.clone()))).collect();
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// The routing policy in force for `name`, if its release names one.
    pub fn policy(&self, name: &str) -> Option<Arc<RoutingPolicy>> {
        let name: ModelName = name.parse().ok()?;
        self.policies.read().unwrap_or_else(|p| p.into_inner()).get(&name).cloned()
    }

    fn entry(&self, name: &ModelName) -> Arc<Entry> {
        if let Some(e) = self.models.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return e.clone();
        }
        self.models.write().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default().clone()
    }

    fn existing(&self, name: &str) -> Option<Arc<Entry>> {
        let name: ModelName = name.parse().ok()?;
        self.models.read().unwrap_or_else(|p| p.into_inner()).get(&name).cloned()
    }

    /// Makes `served` the release that answers new requests for its model; answers the one it replaced.
    pub fn install(&self, served: Served) -> Option<Arc<Served>> {
        self.install_arc(Arc::new(served))
    }

    pub fn install_arc(&self, served: Arc<Served>) -> Option<Arc<Served>> {
        self.entry(&served.model.clone()).handle.swap(Some(served))
    }

    /// The release serving `name` right now, for a request: waits while the model is drained.
    pub async fn lease(&self, name: &str) -> Option<Lease> {
        let entry = self.existing(name)?;
        let open = entry.gate.clone().read_owned().await;
        entry.handle.load_full().map(|served| Lease { served, _open: open })
    }

    /// Closes `model`'s gate once its in-flight requests are done, and unloads the release serving it (freed when
    /// the last other holder lets go). Answers the closed gate; requests wait until it is dropped.
    pub async fn drain(&self, model: &ModelName) -> Drained {
        let entry = self.entry(model);
        let closed = entry.gate.clone().write_owned().await;
        entry.handle.store(None);
        Drained { entry, _closed: closed }
    }

    /// The release serving `name` right now (not waiting at a closed gate: `None` while drained).
    pub fn get(&self, name: &str) -> Option<Arc<Served>> {
        self.existing(name).and_then(|e| e.handle.load_full())
    }

    pub fn all(&self) -> Vec<Arc<Served>> {
        self.models.read().unwrap_or_else(|p| p.into_inner()).values().filter_map(|e| e.handle.load_full()).collect()
    }

    /// Whether any model is served (or being swapped, its requests waiting).
    pub fn has_any(&self) -> bool {
        !self.models.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// What the memory budget counts for every loaded model but `except`.
    pub fn memory_except(&self, except: &ModelName) -> u64 {
        self.all().iter().filter(|s| &s.model != except).map(|s| s.memory).sum()
    }
}
