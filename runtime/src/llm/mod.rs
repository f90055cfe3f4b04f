//! Language models through llama.cpp (the `llama-cpp-2` crate, built from its vendored source): load a GGUF on
//! the best backend this build and this device offer (each one skipped recorded with why, down to the CPU), read
//! what a device must know before serving it ([`LlmFacts`]), tokenize and apply its chat template, and serve it
//! with an [`Engine`]: one llama.cpp context on a thread of its own that decodes every running sequence in one
//! batch.
//!
//! llama.cpp contexts are not thread-safe and several contexts on one model in parallel are unsound (creating one
//! mutates the model), so a model has exactly one context, owned by its engine's thread; everything else talks to
//! it through channels.

mod engine;
pub mod golden;
mod quantize;

use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

pub use engine::{Engine, EngineConfig, Finish, GenEvent, GenRequest, Sampling, StepScore, Submitted};
pub use quantize::{quantize, quantize_types};

/// llama.cpp's name for its CPU backend; always the last resort.
pub const CPU_BACKEND: &str = "CPU";

/// The accelerator backends this build of edgefleet compiled llama.cpp with (cargo features of the runtime).
pub fn compiled_backends() -> Vec<&'static str> {
    let mut out = Vec::new();
    if cfg!(feature = "cuda") {
        out.push("CUDA");
    }
    if cfg!(feature = "vulkan") {
        out.push("Vulkan");
    }
    if cfg!(feature = "opencl") {
        out.push("OpenCL");
    }
    if cfg!(feature = "metal") {
        out.push("Metal");
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("starting llama.cpp: {0}")]
    Backend(String),
    #[error(
        "llama.cpp could not load {path} as a GGUF model (a file that is not GGUF, truncated, or whose header \
         does not match its tensors; llama.cpp's log says which)"
    )]
    Load { path: PathBuf },
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("creating a llama.cpp context: {0}")]
    Context(String),
    #[error("the chat template: {0}")]
    Template(String),
    #[error("quantizing: {0}")]
    Quantize(String),
    #[error("llama.cpp: {0}")]
    Decode(String),
    #[error("the model's engine has stopped")]
    Stopped,
}

/// Whether this CPU has the x86 extensions llama.cpp was compiled to use (`.cargo/config.toml` chooses them at
/// build time; llama.cpp would die of an illegal instruction on a CPU without them).
fn cpu_supports_build() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    {
        let wanted = [
            (option_env!("GGML_AVX"), "avx", std::arch::is_x86_feature_detected!("avx")),
            (option_env!("GGML_AVX2"), "avx2", std::arch::is_x86_feature_detected!("avx2")),
            (option_env!("GGML_FMA"), "fma", std::arch::is_x86_feature_detected!("fma")),
            (option_env!("GGML_F16C"), "f16c", std::arch::is_x86_feature_detected!("f16c")),
            (option_env!("GGML_BMI2"), "bmi2", std::arch::is_x86_feature_detected!("bmi2")),
        ];
        let missing: Vec<&str> =
            wanted.iter().filter(|(built, _, has)| *built == Some("ON") && !has).map(|(_, name, _)| *name).collect();
        if !missing.is_empty() {
            return Err(format!(
                "this build's llama.cpp uses {} which this CPU lacks; build the daemon for this device class with \
                 those GGML_* variables set to OFF",
                missing.join(", ")
            ));
        }
    }
    Ok(())
}

/// The process's llama.cpp, initialised once; its log goes to `tracing` (target `llama-cpp-2`).
fn backend() -> Result<&'static LlamaBackend, LlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            cpu_supports_build()?;
            // llama.cpp's KV caches and compute buffers are model-sized too: the same reason as ONNX Runtime's.
            crate::keep_large_allocations_mapped();
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LlmError::Backend(e.clone()))
}

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LlmOptions {
    /// llama.cpp backends to try, best first (`CUDA`, `Vulkan`, `OpenCL`, `Metal`); the CPU is the last
    /// resort, listed or not.
    pub backends: Vec<String>,
}

/// What a device must know of a model before it serves it, read from the GGUF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmFacts {
    pub architecture: String,
    pub parameters: u64,
    pub vocab_size: u32,
    /// The context the model was trained with (the most a release may ask for).
    pub trained_context: u32,
    /// Bytes of the weights as loaded.
    pub weight_bytes: u64,
    /// Bytes of KV cache (f16) one token of one sequence takes. An upper bound for models with sliding-window
    /// layers, whose cache llama.cpp keeps smaller.
    pub kv_bytes_per_token: u64,
    /// The chat template the GGUF carries, if any.
    pub chat_template: Option<String>,
}

impl LlmFacts {
    pub fn kv_cache_bytes(&self, context_length: u32) -> u64 {
        self.kv_bytes_per_token * u64::from(context_length)
    }

    /// Weights plus the KV cache of `sequences` sequences of `context_length` tokens.
    pub fn memory_bytes(&self, context_length: u32, sequences: u32) -> u64 {
        self.weight_bytes + self.kv_cache_bytes(context_length) * u64::from(sequences.max(1))
    }
}

/// A chat message as the template takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A loaded GGUF model: weights, vocabulary, chat template; shared (read-only) by its engine and its callers.
#[derive(Debug)]
pub struct LlmModel {
    pub path: PathBuf,
    model: LlamaModel,
    pub facts: LlmFacts,
    template: Option<LlamaChatTemplate>,
    /// The backend the weights run on (`CPU`, `CUDA`, …).
    pub backend: String,
    /// Backends tried before it, each with the reason it was not used.
    pub fallbacks: Vec<String>,
}

impl LlmModel {
    /// Loads the GGUF at `path` on the first backend of `options.backends` that this build has and that has a
    /// device here; the CPU otherwise.
    pub fn load(path: &Path, options: &LlmOptions) -> Result<Self, LlmError> {
        let backend = backend()?;
        let model_err = |message: String| LlmError::Model { path: path.to_owned(), message };
        if !path.is_file() {
            return Err(model_err("no such file".into()));
        }
        let devices = llama_cpp_2::list_llama_ggml_backend_devices();
        let compiled = compiled_backends();
        let mut fallbacks = Vec::new();
        let mut chosen = None;
        for name in &options.backends {
            if name.eq_ignore_ascii_case(CPU_BACKEND) {
                break;
            }
            if !compiled.iter().any(|c| c.eq_ignore_ascii_case(name)) {
                fallbacks.push(format!("{name}: not compiled into this edgefleet build"));
                continue;
            }
            match devices.iter().find(|d| d.backend.eq_ignore_ascii_case(name)) {
                Some(d) => {
                    chosen = Some((d.backend.clone(), d.index));
                    break;
                }
                None => fallbacks.push(format!("{name}: compiled in, but llama.cpp found no {name} device")),
            }
        }
        for f in &fallbacks {
            tracing::info!(fallback = %f, "llama.cpp backend not used; trying the next");
        }
        let mut params = LlamaModelParams::default();
        let backend_name = match &chosen {
            Some((name, index)) => {
                params = params
                    .with_devices(&[*index])
                    .map_err(|e| model_err(format!("selecting {name}: {e}")))?
                    .with_n_gpu_layers(u32::MAX);
                name.clone()
            }
            None => {
                params = params.with_n_gpu_layers(0);
                CPU_BACKEND.to_owned()
            }
        };
        let model =
            LlamaModel::load_from_file(backend, path, &params).map_err(|_| LlmError::Load { path: path.to_owned() })?;
        let chat_template = model.chat_template(None).ok();
        let facts = facts(&model, chat_template.as_ref().and_then(|t| t.to_string().ok()));
        Ok(Self { path: path.to_owned(), model, facts, template: chat_template, backend: backend_name, fallbacks })
    }

    /// Uses `template` instead of the chat template the GGUF carries (or lacks): one of llama.cpp's built-in
    /// template names (`gemma`, `chatml`, `llama3`, …) or a template's text.
    pub fn with_chat_template(mut self, template: &str) -> Result<Self, LlmError> {
        let t = LlamaChatTemplate::new(template).map_err(|e| LlmError::Template(e.to_string()))?;
        // Try it once: llama.cpp answers an error for a template it does not know.
        let probe = [LlamaChatMessage::new("user".into(), "hi".into()).map_err(|e| LlmError::Template(e.to_string()))?];
        self.model
            .apply_chat_template(&t, &probe, true)
            .map_err(|e| LlmError::Template(format!("llama.cpp does not know the chat template {template:?}: {e}")))?;
        self.template = Some(t);
        self.facts.chat_template = Some(template.to_owned());
        Ok(self)
    }

    /// The prompt a chat becomes under the model's template, ending where the assistant's answer starts.
    pub fn apply_chat(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        let template = self
            .template
            .as_ref()
            .ok_or_else(|| LlmError::Template("this model carries no chat template; use completions".into()))?;
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LlmError::Template(format!("a message holds a NUL byte: {e}")))?;
        self.model.apply_chat_template(template, &chat, true).map_err(|e| LlmError::Template(e.to_string()))
    }

    /// Tokens of `text`; `add_special` adds the model's start-of-text token where the model wants one (Gemma
    /// does, SmolLM2 not); llama.cpp's chat templates leave it out of the text, so chats want it too.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Vec<i32> {
        self.model.vocab().tokenize(text.as_bytes(), add_special, true).into_iter().map(|t| t.0).collect()
    }

    /// The bytes a token stands for (a piece of UTF-8, possibly a partial character); special tokens as nothing.
    pub fn piece(&self, token: i32) -> Vec<u8> {
        self.model.vocab().token_to_piece(LlamaToken(token), false, None::<NonZeroU16>)
    }

    /// Whether `token` ends generation (end of sequence or of turn).
    pub fn is_end(&self, token: i32) -> bool {
        self.model.vocab().is_eog(LlamaToken(token))
    }

    pub(crate) fn inner(&self) -> &LlamaModel {
        &self.model
    }
}

fn facts(model: &LlamaModel, chat_template: Option<String>) -> LlmFacts {
    let architecture = model.meta_val_str("general.architecture").unwrap_or_default();
    let meta_u64 = |key: String| model.meta_val_str(&key).ok().and_then(|v| v.trim().parse::<u64>().ok());
    let n_head = u64::from(model.n_head().max(1));
    let default_head = u64::try_from(model.n_embd()).unwrap_or(0) / n_head;
    let k = meta_u64(format!("{architecture}.attention.key_length")).unwrap_or(default_head);
    let v = meta_u64(format!("{architecture}.attention.value_length")).unwrap_or(default_head);
    let kv_bytes_per_token = u64::from(model.n_layer()) * u64::from(model.n_head_kv()) * (k + v) * 2;
    LlmFacts {
        architecture,
        parameters: model.n_params(),
        vocab_size: u32::try_from(model.n_vocab()).unwrap_or(0),
        trained_context: model.n_ctx_train(),
        weight_bytes: model.size(),
        kv_bytes_per_token,
        chat_template,
    }
}

/// `log(softmax(logits))[token]`.
pub(crate) fn log_prob(logits: &[f32], token: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let at = logits.get(token).copied().unwrap_or(f32::NEG_INFINITY);
    (f64::from(at - max) - sum.ln()) as f32
}

/// The index of the largest logit.
pub(crate) fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prob_is_a_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let total: f64 = (0..3).map(|i| f64::from(log_prob(&logits, i)).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert!(log_prob(&logits, 2) > log_prob(&logits, 1));
        assert_eq!(argmax(&logits), 2);
        assert_eq!(log_prob(&logits, 7), f32::NEG_INFINITY);
    }
}
