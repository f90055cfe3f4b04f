//! The release optimizer's ONNX half: a model decoded with the ONNX protobuf schema (`proto/onnx.proto`, compiled
//! by protox and prost, so no `protoc`), rewritten into a variant, encoded again. Every transform is a pure
//! function `&ModelProto -> Result<ModelProto, OptimizeError>`: it reads nothing else, writes nothing, and
//! refuses a graph it cannot rewrite faithfully with the operator named. Running the result (calibration,
//! golden vectors, latency) is the caller's: this crate knows no ONNX Runtime.
//!
//! - `weights.rs` — weight-only int8 and int4 (per-channel symmetric scales, `DequantizeLinear` before the
//!   consumer) and magnitude pruning.
//! - `dynamic.rs` — dynamic int8: `DynamicQuantizeLinear` on the activation, `MatMulInteger`/`ConvInteger`.
//! - `qdq.rs` — static int8 QDQ from calibrated activation ranges (what QNN HTP and OpenVINO's NPU execute).
//! - `fp16.rs` — float16 weights and arithmetic, the graph's inputs and outputs kept as they were.
//! - `opset.rs` — the upgrade to opset 21 that int4's `DequantizeLinear` needs.

mod dynamic;
mod fp16;
pub mod graph;
mod opset;
mod qdq;
mod weights;

#[allow(clippy::all, missing_debug_implementations)]
pub mod onnx {
    //! The ONNX IR's messages as prost generated them.
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use std::fmt;
use std::str::FromStr;

use prost::Message;

pub use graph::DataType;
pub use onnx::ModelProto;
pub use qdq::{Ranges, calibration_model};

/// Why a model cannot be read or rewritten. Nothing is written when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    #[error("not a readable ONNX model (malformed or truncated protobuf): {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("IR version {0} is not one the optimizer knows ({IR_VERSIONS:?})")]
    IrVersion(i64),
    #[error("the model has no graph")]
    NoGraph,
    #[error("the model imports no version of the default ONNX operator set")]
    NoOpset,
    #[error("tensor {0:?} keeps its data in an external file, which the optimizer does not read")]
    ExternalData(String),
    #[error("tensor {name:?}: {why}")]
    Tensor { name: String, why: String },
    #[error("operator {op} (node {node:?}) {why}")]
    Unsupported { op: String, node: String, why: String },
    #[error("{0}")]
    Opset(String),
    #[error("nothing to rewrite: {0}")]
    Nothing(String),
    #[error("calibration: {0}")]
    Calibration(String),
}

/// A variant the optimizer can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// int8 weights with per-output-channel scales, dequantized before use; arithmetic stays float.
    WeightInt8,
    /// int4 weights, per output channel in blocks of [`weights::INT4_BLOCK`] along the reduction axis.
    WeightInt4,
    /// int8 weights and activations quantized at run time (`MatMulInteger`, `ConvInteger`).
    DynamicInt8,
    /// Static int8: QuantizeLinear/DequantizeLinear pairs with scales calibrated on sample inputs.
    QdqInt8,
    /// float16 weights and arithmetic.
    Fp16,
    /// float32 with the smallest-magnitude weights set to zero: this percentage of each weight tensor.
    Prune { percent: u8 },
}

impl Kind {
    /// The name in variant ids and reports: `int8`, `int4`, `dynamic-int8`, `qdq-int8`, `fp16`, `prune50`.
    pub fn name(&self) -> String {
        match self {
            Self::WeightInt8 => "int8".into(),
            Self::WeightInt4 => "int4".into(),
            Self::DynamicInt8 => "dynamic-int8".into(),
            Self::QdqInt8 => "qdq-int8".into(),
            Self::Fp16 => "fp16".into(),
            Self::Prune { percent } => format!("prune{percent}"),
        }
    }

    /// The precision whose golden-vector tolerances the variant is held to: a pruned model is float32 but, like
    /// a quantized one, approximates the reference, so it is held to int8's.
    pub fn tolerance_precision(&self) -> &'static str {
        match self {
            Self::Prune { .. } => "int8",
            other => other.precision(),
        }
    }

    /// The manifest's precision label for this kind.
    pub fn precision(&self) -> &'static str {
        match self {
            Self::WeightInt8 | Self::DynamicInt8 | Self::QdqInt8 => "int8",
            Self::WeightInt4 => "int4",
            Self::Fp16 => "fp16",
            Self::Prune { .. } => "fp32",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "int8" => Self::WeightInt8,
            "int4" => Self::WeightInt4,
            "dynamic-int8" => Self::DynamicInt8,
            "qdq-int8" => Self::QdqInt8,
            "fp16" => Self::Fp16,
            _ => match s.strip_prefix("prune").and_then(|p| p.parse::<u8>().ok()) {
                Some(percent) if (1..100).contains(&percent) => Self::Prune { percent },
                _ => {
                    return Err(format!(
                        "{s:?} is not a variant kind (known: int8, int4, dynamic-int8, qdq-int8, fp16, pruneNN with \
                         NN a percentage 1-99)"
                    ));
                }
            },
        })
    }
}

/// The ONNX IR versions the optimizer reads (3 came with operator sets, 11 is the newest).
pub const IR_VERSIONS: std::ops::RangeInclusive<i64> = 3..=11;

/// Decodes an ONNX model and checks what every transform relies on: a graph, the default operator set, tensor
/// data inside the file.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, OptimizeError> {
    let model = ModelProto::decode(bytes)?;
    if !IR_VERSIONS.contains(&model.ir_version()) {
        return Err(OptimizeError::IrVersion(model.ir_version()));
    }
    let g = model.graph.as_ref().ok_or(OptimizeError::NoGraph)?;
    graph::default_opset(&model).ok_or(OptimizeError::NoOpset)?;
    for t in &g.initializer {
        if t.data_location == Some(1) || !t.external_data.is_empty() {
            return Err(OptimizeError::ExternalData(t.name().to_owned()));
        }
    }
    Ok(model)
}

/// Encodes a model as the bytes of an `.onnx` file.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Makes the variant `kind` of `model`. `ranges` are the calibrated activation ranges that [`Kind::QdqInt8`]
/// needs (from running [`calibration_model`] on the release's samples); the other kinds ignore them.
pub fn optimize(model: &ModelProto, kind: Kind, ranges: Option<&Ranges>) -> Result<ModelProto, OptimizeError> {
    graph::check_known_ops(model)?;
    let mut out = model.clone();
    match kind {
        Kind::WeightInt8 => weights::weight_only(&mut out, weights::Bits::Eight)?,
        Kind::WeightInt4 => {
            opset::upgrade_to(&mut out, weights::INT4_OPSET)?;
            weights::weight_only(&mut out, weights::Bits::Four)?
        }
        Kind::Prune { percent } => weights::prune(&mut out, percent)?,
        Kind::DynamicInt8 => dynamic::dynamic_int8(&mut out)?,
        Kind::QdqInt8 => {
            let ranges = ranges.ok_or_else(|| OptimizeError::Calibration("qdq-int8 needs calibrated ranges".into()))?;
            qdq::qdq_int8(&mut out, ranges)?
        }
        Kind::Fp16 => fp16::to_fp16(&mut out)?,
    }
    let note = format!("edgefleet release optimize: {kind}");
    out.doc_string = Some(match out.doc_string.as_deref() {
        Some(d) if !d.is_empty() => format!("{d}\n{note}"),
        _ => note,
    });
    Ok(out)
}
