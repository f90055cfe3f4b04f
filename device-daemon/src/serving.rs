//! Serving: per model, one handle (`ArcSwapOption<Served>`) to a loaded release — a pool of ONNX Runtime
//! sessions plus the signature from the manifest — swapped atomically. A request takes the handle once and
//! finishes on that release even if a swap happens meanwhile; the old pool is freed when its last request
//! ends. A swap therefore never fails a request.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwapOption;
use edgefleet_protocol::{ModelName, ReleaseVersion, VariantId};
use edgefleet_runtime::{Model, Options, Runtime, RuntimeError};
use model_registry::golden::HostTensor;
use model_registry::manifest::TensorSpec;
use serde::Serialize;
use tokio::sync::Semaphore;

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
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pool: SessionPool,
    /// Requests answered and requests failed by this release, for the health watch.
    pub ok: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
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
        let mut pool = Vec::with_capacity(sessions.max(1));
        for _ in 0..sessions.max(1) {
            pool.push(runtime.open_with(path, options)?);
        }
        let first = &pool[0];
        Ok(Self {
            model,
            release,
            variant,
            slot: slot.to_owned(),
            provider: first.provider.clone(),
            fallbacks: first.fallbacks.clone(),
            inputs: first.inputs.clone(),
            outputs: first.outputs.clone(),
            pool: SessionPool { permits: Semaphore::new(pool.len()), idle: Mutex::new(pool) },
            ok: Default::default(),
            errors: Default::default(),
        })
    }

    pub fn info(&self) -> ServedInfo {
        ServedInfo {
            model: self.model.clone(),
            release: self.release,
            variant: self.variant.clone(),
            slot: self.slot.clone(),
            provider: self.provider.clone(),
            fallbacks: self.fallbacks.clone(),
        }
    }

    /// Runs one request on a free session of this release (waiting for one if all are busy).
    pub async fn infer(
        self: &Arc<Self>,
        inputs: BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, InferError> {
        let permit = self.pool.permits.acquire().await.map_err(|e| InferError::Worker(e.to_string()))?;
        let mut session = self
            .pool
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
        this.pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(session);
        drop(permit);
        let counter = if result.is_ok() { &self.ok } else { &self.errors };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(result?)
    }
}

/// Every model this device serves, each behind its own swappable handle.
#[derive(Debug, Default)]
pub struct ModelTable {
    models: RwLock<HashMap<ModelName, Arc<ArcSwapOption<Served>>>>,
}

impl ModelTable {
    fn handle(&self, name: &ModelName) -> Arc<ArcSwapOption<Served>> {
        if let Some(h) = self.models.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return h.clone();
        }
        self.models.write().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default().clone()
    }

    /// Makes `served` the release that answers new requests for its model; answers the one it replaced.
    pub fn install(&self, served: Served) -> Option<Arc<Served>> {
        self.install_arc(Arc::new(served))
    }

    pub fn install_arc(&self, served: Arc<Served>) -> Option<Arc<Served>> {
        self.handle(&served.model.clone()).swap(Some(served))
    }

    /// The release serving `name` right now.
    pub fn get(&self, name: &str) -> Option<Arc<Served>> {
        let name: ModelName = name.parse().ok()?;
        self.models.read().unwrap_or_else(|p| p.into_inner()).get(&name).and_then(|h| h.load_full())
    }

    pub fn all(&self) -> Vec<Arc<Served>> {
        self.models.read().unwrap_or_else(|p| p.into_inner()).values().filter_map(|h| h.load_full()).collect()
    }
}
