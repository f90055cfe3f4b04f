//! Release manifests (signed by the `release` role) and desired-state documents (signed by `fleet`).
//!
//! Signed documents hold no floating-point numbers: canonical JSON cannot express them. Tolerances for golden
//! vectors live inside the golden-vector file, whose digest the manifest signs.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion, VariantId};
use serde::{Deserialize, Serialize};

use crate::artifact::ArtifactRef;
use crate::envelope::Envelope;
use crate::root::DocType;

/// Numeric precision of a variant's weights and compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Int8,
    Int4,
    Mixed,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
            Precision::Mixed => "mixed",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| format!("precision {s:?} is not one of fp32, fp16, int8, int4, mixed"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Onnx,
}

/// Element types of tensors in a model's signature, named as ONNX names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElementType {
    Float32,
    Float16,
    Float64,
    Int8,
    Uint8,
    Int16,
    Int32,
    Int64,
    Bool,
}

impl ElementType {
    pub fn size(self) -> usize {
        match self {
            ElementType::Int8 | ElementType::Uint8 | ElementType::Bool => 1,
            ElementType::Float16 | ElementType::Int16 => 2,
            ElementType::Float32 | ElementType::Int32 => 4,
            ElementType::Float64 | ElementType::Int64 => 8,
        }
    }
}

/// One input or output of a model: name, element type and shape (`-1` for a dimension fixed only at run time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: ElementType,
    pub shape: Vec<i64>,
}

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
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
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
