//! Release manifests (signed by the `release` role) and desired-state documents (signed by `fleet`).
//!
//! Signed documents hold no floating-point numbers: canonical JSON cannot express them. Tolerances for golden
//! vectors live inside the golden-vector file, whose digest the manifest signs.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion, Sha256Digest, VariantId};
use serde::{Deserialize, Serialize};

use crate::artifact::ArtifactRef;
use crate::envelope::Envelope;
use crate::root::DocType;

/// Numeric precision of a variant's weights and compute: for ONNX models the element type, for GGUF models
/// llama.cpp's quantization type (as its `quantize` tool names them, lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Precision {
    #[serde(rename = "fp32")]
    Fp32,
    #[serde(rename = "fp16")]
    Fp16,
    #[serde(rename = "int8")]
    Int8,
    #[serde(rename = "int4")]
    Int4,
    #[serde(rename = "mixed")]
    Mixed,
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "bf16")]
    Bf16,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q6_k")]
    Q6K,
    #[serde(rename = "q5_k_m")]
    Q5KM,
    #[serde(rename = "q5_k_s")]
    Q5KS,
    #[serde(rename = "q5_1")]
    Q5_1,
    #[serde(rename = "q5_0")]
    Q5_0,
    #[serde(rename = "q4_k_m")]
    Q4KM,
    #[serde(rename = "q4_k_s")]
    Q4KS,
    #[serde(rename = "q4_1")]
    Q4_1,
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "iq4_nl")]
    Iq4Nl,
    #[serde(rename = "iq4_xs")]
    Iq4Xs,
    #[serde(rename = "q3_k_l")]
    Q3KL,
    #[serde(rename = "q3_k_m")]
    Q3KM,
    #[serde(rename = "q3_k_s")]
    Q3KS,
    #[serde(rename = "q2_k")]
    Q2K,
}

impl Precision {
    /// The ONNX precisions, which a GGUF variant cannot have.
    pub const ONNX: [Precision; 5] =
        [Precision::Fp32, Precision::Fp16, Precision::Int8, Precision::Int4, Precision::Mixed];

    pub fn is_onnx(self) -> bool {
        Self::ONNX.contains(&self)
    }

    fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            format!(
                "precision {s:?} is not one of fp32, fp16, int8, int4, mixed (ONNX) or a llama.cpp type \
                 (f32, f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q5_1, q5_0, q4_k_m, q4_k_s, q4_1, q4_0, iq4_nl, \
                 iq4_xs, q3_k_l, q3_k_m, q3_k_s, q2_k)"
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Onnx,
    /// A llama.cpp model file: weights, tokenizer and chat template in one.
    Gguf,
}

impl ModelFormat {
    /// The file name a staged model of this format has in its slot.
    pub fn file_name(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "model.onnx",
            ModelFormat::Gguf => "model.gguf",
        }
    }
}

/// What a device must know of a language model before it loads it (GGUF variants only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSpec {
    /// The model's architecture as its GGUF names it (`llama`, `gemma3`).
    pub architecture: String,
    /// Parameters in the model.
    pub parameters: u64,
    /// Tokens one sequence may hold (prompt and completion) on a device running this release.
    pub context_length: u32,
    /// Tokens in the vocabulary.
    pub vocab_size: u32,
    /// Bytes the model needs to serve one sequence at `context_length`: weights plus KV cache (f16). A device
    /// serving several sequences at once adds the KV cache per extra sequence.
    pub memory_bytes: u64,
    /// Of which the KV cache of one sequence at `context_length`.
    pub kv_cache_bytes: u64,
    /// The chat template to use instead of the GGUF's own (`tokenizer.chat_template`), for a GGUF that carries
    /// none or a wrong one: a llama.cpp built-in name (`gemma`, `chatml`, …) or a template's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// SHA-256 of the chat template in use (`chat_template`, else the GGUF's); `None` when there is none, and
    /// the model serves completions only. A device whose GGUF has another refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_sha256: Option<Sha256Digest>,
}

pub use edgefleet_protocol::tensor::{ElementType, TensorSpec};

/// What a device must have to run a variant. Empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// ONNX Runtime execution providers this variant is built for, best first (`QNNExecutionProvider`, ...);
    /// the device must offer at least one.
    #[serde(default)]
    pub execution_providers: Vec<String>,
    /// CPU architectures (`x86_64`, `aarch64`); the device must be one of them.
    #[serde(default)]
    pub arch: Vec<String>,
    /// Memory the device must have, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory_bytes: Option<u64>,
    /// SoC or NPU generations this variant was compiled for (`sm8550`, `htp-v73`, `tegra234`).
    #[serde(default)]
    pub soc: Vec<String>,
}

impl Requirements {
    /// What a device with `hw` lacks to run a variant with these requirements in `format`, in words; `None`
    /// when it fits. For ONNX the providers are ONNX Runtime execution providers, for GGUF llama.cpp backends.
    /// The server picks variants by it, and the device checks the server's pick by it again.
    pub fn unmet(&self, format: ModelFormat, hw: &edgefleet_protocol::api::HardwareProfile) -> Option<String> {
        let any = |wanted: &[String], have: &[String]| wanted.is_empty() || wanted.iter().any(|w| have.contains(w));
        let offered = match format {
            ModelFormat::Onnx => &hw.execution_providers,
            ModelFormat::Gguf => &hw.llm_backends,
        };
        if !any(&self.execution_providers, offered) {
            return Some(format!("needs one of {:?}; this device offers {offered:?}", self.execution_providers));
        }
        if !any(&self.arch, std::slice::from_ref(&hw.arch)) {
            return Some(format!("built for {:?}; this device is {}", self.arch, hw.arch));
        }
        if !any(&self.soc, &hw.soc) {
            return Some(format!("compiled for {:?}; this device has {:?}", self.soc, hw.soc));
        }
        match self.min_memory_bytes {
            Some(m) if hw.memory_bytes < m => {
                Some(format!("needs {m} bytes of memory; this device has {}", hw.memory_bytes))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub id: VariantId,
    pub requirements: Requirements,
    pub precision: Precision,
    pub format: ModelFormat,
    /// The model file as it is loaded.
    pub raw: ArtifactRef,
    /// The model file compressed with zstd: what travels.
    pub zstd: ArtifactRef,
    /// Golden vectors (safetensors) that this variant must reproduce before it may serve.
    pub golden: ArtifactRef,
    /// The tensors an ONNX model takes and gives (empty for a GGUF model).
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Present exactly when the format is GGUF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmSpec>,
}

/// The signed part of a release manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    #[serde(rename = "_type")]
    pub doc_type: DocType,
    pub model: ModelName,
    pub version: ReleaseVersion,
    /// Devices that saw this release refuse any release of this model below this version from now on.
    pub security_floor: ReleaseVersion,
    pub created: DateTime<Utc>,
    #[serde(default)]
    pub description: String,
    pub variants: Vec<Variant>,
    /// For a language model, where its requests may be answered (absent: always on the device). Signed with
    /// the rest: only the release keys decide whether a prompt may leave a device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<crate::routing::RoutingPolicy>,
}

/// Why a release manifest is not well formed, whatever its signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("`_type` is {0:?}, not \"release\"")]
    Type(DocType),
    #[error("security_floor {floor} is above the release version {version}")]
    FloorAboveVersion { floor: ReleaseVersion, version: ReleaseVersion },
    #[error("a release needs at least one variant")]
    NoVariants,
    #[error("variant id {0} appears twice")]
    DuplicateVariant(VariantId),
    #[error("variant {0}: {1}")]
    Variant(VariantId, &'static str),
    #[error("routing policy: {0}")]
    Routing(String),
}

impl ReleaseManifest {
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.doc_type != DocType::Release {
            return Err(ManifestError::Type(self.doc_type));
        }
        if self.security_floor > self.version {
            return Err(ManifestError::FloorAboveVersion { floor: self.security_floor, version: self.version });
        }
        if self.variants.is_empty() {
            return Err(ManifestError::NoVariants);
        }
        let mut ids = BTreeSet::new();
        for v in &self.variants {
            if !ids.insert(&v.id) {
                return Err(ManifestError::DuplicateVariant(v.id.clone()));
            }
            let bad = |why| Err(ManifestError::Variant(v.id.clone(), why));
            match (v.format, &v.llm) {
                (ModelFormat::Onnx, Some(_)) => return bad("an ONNX variant carries no language-model facts"),
                (ModelFormat::Onnx, None) if !v.precision.is_onnx() => {
                    return bad("a llama.cpp quantization type is not an ONNX precision");
                }
                (ModelFormat::Gguf, None) => return bad("a GGUF variant must say what a device needs to load it"),
                (ModelFormat::Gguf, Some(_)) if v.precision.is_onnx() => {
                    return bad("a GGUF variant's precision is its llama.cpp quantization type (q4_k_m, q8_0, …)");
                }
                (ModelFormat::Gguf, Some(llm)) if llm.context_length == 0 => {
                    return bad("a context length of 0 tokens");
                }
                _ => {}
            }
        }
        if let Some(policy) = &self.routing {
            if self.variants.iter().any(|v| v.format != ModelFormat::Gguf) {
                return Err(ManifestError::Routing(
                    "a routing policy is for a language model's (GGUF) releases".into(),
                ));
            }
            policy.validate().map_err(ManifestError::Routing)?;
        }
        Ok(())
    }

    pub fn variant(&self, id: &VariantId) -> Option<&Variant> {
        self.variants.iter().find(|v| &v.id == id)
    }
}

/// One model a device should run: the exact signed release, and the variant chosen for this device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAssignment {
    pub model: ModelName,
    pub variant: VariantId,
    pub release: Envelope,
    /// Variants of the release to run on its golden inputs, off the request path, and report (a rollout that
    /// chooses each device class's variant by measurement); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measure: Vec<VariantId>,
}

/// The signed part of a desired-state document: what one device should run, fresh until `expires`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    #[serde(rename = "_type")]
    pub doc_type: DocType,
    pub device: DeviceId,
    /// Goes up with every document issued to this device; a device accepts only a higher one.
    pub sequence: u64,
    pub issued: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    pub models: Vec<ModelAssignment>,
}
