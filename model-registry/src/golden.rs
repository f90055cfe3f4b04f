//! Golden vectors: input tensors and the reference outputs the unquantized model gave for them at release
//! time, with per-output tolerances, in one safetensors file. A device runs them on a new session before it
//! swaps; a variant outside tolerance is never served.
//!
//! Layout: tensors `input/<case>/<name>` and `output/<case>/<name>`; the safetensors metadata key
//! `edgefleet.golden` holds `{"version":1,"tolerances":{"<output>":{"max_abs_error":..,"min_top1_agreement":..}}}`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use edgefleet_protocol::tensor::SizeError;
pub use edgefleet_protocol::tensor::{Cases, HostTensor};

use crate::manifest::{ElementType, Precision};

const META_KEY: &str = "edgefleet.golden";

/// Why a golden-vector or samples file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("not a safetensors file: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
    #[error("tensor {name}: element type {dtype:?} is not supported")]
    Dtype { name: String, dtype: Dtype },
    #[error("tensor {name:?} is not named input/<case>/<name> or output/<case>/<name>")]
    Name { name: String },
    #[error("metadata `{META_KEY}` is missing")]
    MissingMeta,
    #[error("metadata `{META_KEY}` is not valid: {0}")]
    Meta(serde_json::Error),
    #[error("golden vectors have no cases")]
    Empty,
    #[error("case {case} has no reference output {output}, which has a tolerance")]
    MissingOutput { case: String, output: String },
    #[error(transparent)]
    Size(#[from] SizeError),
}

fn to_dtype(t: ElementType) -> Dtype {
    match t {
        ElementType::Float32 => Dtype::F32,
        ElementType::Float16 => Dtype::F16,
        ElementType::Float64 => Dtype::F64,
        ElementType::Int8 => Dtype::I8,
        ElementType::Uint8 => Dtype::U8,
        ElementType::Int16 => Dtype::I16,
        ElementType::Int32 => Dtype::I32,
        ElementType::Int64 => Dtype::I64,
        ElementType::Bool => Dtype::BOOL,
    }
}

fn from_dtype(name: &str, d: Dtype) -> Result<ElementType, GoldenError> {
    Ok(match d {
        Dtype::F32 => ElementType::Float32,
        Dtype::F16 => ElementType::Float16,
        Dtype::F64 => ElementType::Float64,
        Dtype::I8 => ElementType::Int8,
        Dtype::U8 => ElementType::Uint8,
        Dtype::I16 => ElementType::Int16,
        Dtype::I32 => ElementType::Int32,
        Dtype::I64 => ElementType::Int64,
        Dtype::BOOL => ElementType::Bool,
        other => return Err(GoldenError::Dtype { name: name.to_owned(), dtype: other }),
    })
}

/// Reads a samples file: tensors named `<case>/<input>`, or `<input>` alone for a single case named `0`.
pub fn read_samples(bytes: &[u8]) -> Result<Cases, GoldenError> {
    let st = SafeTensors::deserialize(bytes)?;
    let mut cases = Cases::new();
    for (name, view) in st.tensors() {
        let (case, input) = name.split_once('/').unwrap_or(("0", name.as_str()));
        cases.entry(case.to_owned()).or_default().insert(input.to_owned(), host(&name, &view)?);
    }
    if cases.is_empty() {
        return Err(GoldenError::Empty);
    }
    Ok(cases)
}

fn host(name: &str, view: &TensorView<'_>) -> Result<HostTensor, GoldenError> {
    Ok(HostTensor::new(name, from_dtype(name, view.dtype())?, view.shape().to_vec(), view.data().to_vec())?)
}

// === tolerances ===

/// How far a variant's output may be from the reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Largest allowed |actual - reference| over every element.
    pub max_abs_error: f64,
    /// Smallest allowed fraction of rows (last axis = classes) whose arg-max agrees with the reference's.
    /// Outputs of rank below 2, or with one class, have no top-1 check.
    pub min_top1_agreement: f64,
}

impl Tolerance {
    /// Defaults by precision, for outputs that are probabilities or logits of modest range. Packers override
    /// them per output when a model needs otherwise.
    pub fn default_for(precision: Precision) -> Self {
        let (max_abs_error, min_top1_agreement) = match precision {
            Precision::Fp32 => (1e-4, 1.0),
            Precision::Fp16 => (1e-2, 1.0),
            Precision::Int8 | Precision::Mixed => (0.1, 0.8),
            // llama.cpp types only label GGUF variants, whose golden checks are `llm_golden`'s; were one used
            // for an ONNX model, it is held to the loosest ONNX bound.
            _ => (0.2, 0.7),
        };
        Self { max_abs_error, min_top1_agreement }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    version: u32,
    tolerances: BTreeMap<String, Tolerance>,
}

// === GoldenVectors ===

#[derive(Debug, Clone, PartialEq)]
pub struct GoldenVectors {
    /// `case -> input name -> tensor`.
    pub inputs: Cases,
    /// `case -> output name -> reference tensor`.
    pub outputs: Cases,
    /// Per output name; every output with a tolerance is checked.
    pub tolerances: BTreeMap<String, Tolerance>,
}

impl GoldenVectors {
    pub fn to_bytes(&self) -> Result<Vec<u8>, GoldenError> {
        let mut views = Vec::new();
        for (prefix, cases) in [("input", &self.inputs), ("output", &self.outputs)] {
            for (case, tensors) in cases {
                for (name, t) in tensors {
                    views.push((
                        format!("{prefix}/{case}/{name}"),
                        TensorView::new(to_dtype(t.dtype), t.shape.clone(), &t.data)?,
                    ));
                }
            }
        }
        let meta = Meta { version: 1, tolerances: self.tolerances.clone() };
        let info = HashMap::from([(META_KEY.to_owned(), serde_json::to_string(&meta).map_err(GoldenError::Meta)?)]);
        Ok(safetensors::serialize(views, Some(info))?)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GoldenError> {
        let (_, metadata) = SafeTensors::read_metadata(bytes)?;
        let raw = metadata.metadata().as_ref().and_then(|m| m.get(META_KEY)).ok_or(GoldenError::MissingMeta)?;
        let meta: Meta = serde_json::from_str(raw).map_err(GoldenError::Meta)?;
        let st = SafeTensors::deserialize(bytes)?;
        let mut out = Self { inputs: Cases::new(), outputs: Cases::new(), tolerances: meta.tolerances };
        for (name, view) in st.tensors() {
            let mut parts = name.splitn(3, '/');
            let (Some(kind), Some(case), Some(tensor)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(GoldenError::Name { name });
            };
            let target = match kind {
                "input" => &mut out.inputs,
                "output" => &mut out.outputs,
                _ => return Err(GoldenError::Name { name }),
            };
            target.entry(case.to_owned()).or_default().insert(tensor.to_owned(), host(&name, &view)?);
        }
        if out.inputs.is_empty() {
            return Err(GoldenError::Empty);
        }
        for case in out.inputs.keys() {
            for output in out.tolerances.keys() {
                if !out.outputs.get(case).is_some_and(|o| o.contains_key(output)) {
                    return Err(GoldenError::MissingOutput { case: case.clone(), output: output.clone() });
                }
            }
        }
        Ok(out)
    }

    /// Compares a run's outputs (`case -> output name -> tensor`) with the references.
    pub fn check(&self, actual: &Cases) -> GoldenReport {
        let mut report = GoldenReport::default();
        for (output, tolerance) in &self.tolerances {
            let mut r = OutputReport {
                output: output.clone(),
                tolerance: *tolerance,
                max_abs_error: 0.0,
                top1: None,
                problems: Vec::new(),
            };
            let (mut agree, mut rows) = (0usize, 0usize);
            for (case, references) in &self.outputs {
                let Some(reference) = references.get(output) else { continue };
                let Some(got) = actual.get(case).and_then(|o| o.get(output)) else {
                    r.problems.push(format!("case {case}: no output {output}"));
                    continue;
                };
                if got.shape != reference.shape {
                    r.problems.push(format!("case {case}: shape {:?}, reference {:?}", got.shape, reference.shape));
                    continue;
                }
                let (g, e) = (got.to_f64(), reference.to_f64());
                for (a, b) in g.iter().zip(&e) {
                    let d = (a - b).abs();
                    // NaN compares false with everything: count it as an infinite error.
                    r.max_abs_error = if d.is_nan() { f64::INFINITY } else { r.max_abs_error.max(d) };
                }
                let classes = reference.shape.last().copied().unwrap_or(1);
                if reference.shape.len() >= 2 && classes > 1 {
                    for (gr, er) in g.chunks(classes).zip(e.chunks(classes)) {
                        rows += 1;
                        agree += usize::from(argmax(gr) == argmax(er));
                    }
                }
            }
            if rows > 0 {
                r.top1 = Some(agree as f64 / rows as f64);
            }
            report.outputs.push(r);
        }
        report
    }
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best
}

/// The result of a golden-vector check, per output.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GoldenReport {
    pub outputs: Vec<OutputReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputReport {
    pub output: String,
    pub tolerance: Tolerance,
    pub max_abs_error: f64,
    /// Fraction of rows whose arg-max agrees, where the output has classes.
    pub top1: Option<f64>,
    pub problems: Vec<String>,
}

impl OutputReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
            && self.max_abs_error <= self.tolerance.max_abs_error
            && self.top1.is_none_or(|t| t >= self.tolerance.min_top1_agreement)
    }
}

impl GoldenReport {
    pub fn passed(&self) -> bool {
        !self.outputs.is_empty() && self.outputs.iter().all(OutputReport::passed)
    }
}

impl fmt::Display for GoldenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for o in &self.outputs {
            write!(
                f,
                "{} {}: max abs error {:.3e} (allowed {:.3e})",
                if o.passed() { "ok  " } else { "FAIL" },
                o.output,
                o.max_abs_error,
                o.tolerance.max_abs_error
            )?;
            if let Some(t) = o.top1 {
                write!(
                    f,
                    ", top-1 agreement {:.1}% (needed {:.1}%)",
                    t * 100.0,
                    o.tolerance.min_top1_agreement * 100.0
                )?;
            }
            for p in &o.problems {
                write!(f, "; {p}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
