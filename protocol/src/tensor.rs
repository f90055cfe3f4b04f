//! Tensors as the daemon, the CLI and the runtimes exchange them: element types named as ONNX names them,
//! signatures (name, type, shape) and host tensors (little-endian bytes). Here rather than in the trust crate so
//! that the runtimes need nothing of trust to run a model.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

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

/// A tensor in host memory: element type, shape and little-endian bytes.
#[derive(Clone, PartialEq)]
pub struct HostTensor {
    pub dtype: ElementType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Named tensors per case: `case -> tensor name -> tensor`.
pub type Cases = BTreeMap<String, BTreeMap<String, HostTensor>>;

/// Bytes that do not fill a tensor's shape exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tensor {name}: {len} bytes do not fit shape {shape:?} of {dtype:?}")]
pub struct SizeError {
    pub name: String,
    pub dtype: ElementType,
    pub shape: Vec<usize>,
    pub len: usize,
}

impl fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostTensor({:?}, {:?}, {} bytes)", self.dtype, self.shape, self.data.len())
    }
}

impl HostTensor {
    pub fn new(name: &str, dtype: ElementType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self, SizeError> {
        let want = shape.iter().product::<usize>() * dtype.size();
        if want != data.len() {
            return Err(SizeError { name: name.to_owned(), dtype, shape, len: data.len() });
        }
        Ok(Self { dtype, shape, data })
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        Self { dtype: ElementType::Float32, shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every element as f64, for comparison.
    pub fn to_f64(&self) -> Vec<f64> {
        fn each<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
            data.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
        }
        match self.dtype {
            ElementType::Float32 => each(&self.data, |b| f64::from(f32::from_le_bytes(b))),
            ElementType::Float64 => each(&self.data, f64::from_le_bytes),
            ElementType::Float16 => each(&self.data, |b| f16_to_f64(u16::from_le_bytes(b))),
            ElementType::Int8 => each(&self.data, |b: [u8; 1]| f64::from(b[0] as i8)),
            ElementType::Uint8 => each(&self.data, |b: [u8; 1]| f64::from(b[0])),
            ElementType::Bool => each(&self.data, |b: [u8; 1]| f64::from(u8::from(b[0] != 0))),
            ElementType::Int16 => each(&self.data, |b| f64::from(i16::from_le_bytes(b))),
            ElementType::Int32 => each(&self.data, |b| f64::from(i32::from_le_bytes(b))),
            ElementType::Int64 => each(&self.data, |b| i64::from_le_bytes(b) as f64),
        }
    }
}

/// IEEE 754 half precision to f64.
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}
