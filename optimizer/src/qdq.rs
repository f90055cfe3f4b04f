//! Static int8 in QDQ form: every activation a matrix product or convolution reads or writes passes through a
//! `QuantizeLinear` → `DequantizeLinear` pair with a scale and zero point fixed at optimization time (uint8,
//! asymmetric, from the ranges observed on the release's samples), and weights are int8 per output channel
//! (7 bits of range, see `Bits::EightReduced`) behind a `DequantizeLinear`. Execution providers for NPUs (QNN HTP, OpenVINO) run such a graph in integers;
//! ONNX Runtime's CPU provider fuses the pairs into its quantized kernels.
//!
//! Calibration is two steps around the caller's runtime: [`calibration_model`] exposes the activations as
//! outputs, the caller runs it on every sample and feeds what comes out to [`Ranges::observe`].

use std::collections::{BTreeMap, BTreeSet};

use crate::OptimizeError;
use crate::graph::{self, DataType, Names, float_tensor, raw_tensor};
use crate::onnx::{GraphProto, ModelProto, NodeProto, TypeProto, ValueInfoProto, type_proto};
use crate::weights::{self, Bits, MIN_WEIGHT_ELEMENTS};

/// The smallest and largest value each activation took over the calibration samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranges(pub BTreeMap<String, (f32, f32)>);

impl Ranges {
    /// Widens `name`'s range by `values` (non-finite values are ignored).
    pub fn observe(&mut self, name: &str, values: &[f32]) {
        let r = self.0.entry(name.to_owned()).or_insert((f32::INFINITY, f32::NEG_INFINITY));
        for v in values.iter().filter(|v| v.is_finite()) {
            r.0 = r.0.min(*v);
            r.1 = r.1.max(*v);
        }
    }

    /// uint8 scale and zero point for a range: asymmetric, with 0 exactly representable.
    pub fn scale_zero_point((min, max): (f32, f32)) -> (f32, u8) {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        (scale, (-lo / scale).round().clamp(0.0, 255.0) as u8)
    }
}

/// The activations QDQ quantizes: the float input and the output of every MatMul, Gemm and Conv that reads a
/// float weight initializer, in graph order — those some node reads (a graph output no node reads stays float).
fn activations(g: &GraphProto) -> Vec<String> {
    let readers = graph::consumers(g);
    let mut nodes = BTreeSet::new();
    for (i, _) in graph::weights(g, MIN_WEIGHT_ELEMENTS) {
        for &(n, _) in readers.get(g.initializer[i].name()).into_iter().flatten() {
            if ["MatMul", "Gemm", "Conv"].contains(&g.node[n].op_type()) {
                nodes.insert(n);
            }
        }
    }
    let mut out: Vec<String> = Vec::new();
    for n in nodes {
        for name in [&g.node[n].input[0], &g.node[n].output[0]] {
            if readers.contains_key(name.as_str()) && !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    out
}

/// The model with every activation QDQ would quantize added as a graph output, and their names. A name may be
/// a graph input: its values are the samples themselves (ONNX Runtime does not answer an input as an output).
pub fn calibration_model(model: &ModelProto) -> Result<(ModelProto, Vec<String>), OptimizeError> {
    graph::check_known_ops(model)?;
    let mut out = model.clone();
    let g = out.graph.as_mut().ok_or(OptimizeError::NoGraph)?;
    let names = activations(g);
    if names.is_empty() {
        return Err(OptimizeError::Nothing("no MatMul, Gemm or Conv reads a float weight initializer".into()));
    }
    let existing: BTreeSet<String> = g.output.iter().chain(&g.input).map(|o| o.name().to_owned()).collect();
    for name in names.iter().filter(|n| !existing.contains(*n)) {
        g.output.push(ValueInfoProto {
            name: Some(name.clone()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(DataType::FLOAT),
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Ok((out, names))
}

pub fn qdq_int8(model: &mut ModelProto, ranges: &Ranges) -> Result<(), OptimizeError> {
    let g = model.graph.as_ref().ok_or(OptimizeError::NoGraph)?;
    let acts = activations(g);
    for a in &acts {
        if !ranges.0.get(a).is_some_and(|(lo, hi)| lo.is_finite() && hi.is_finite()) {
            return Err(OptimizeError::Calibration(format!(
                "no range was observed for activation {a:?}: the ranges come from another model or the samples \
                 never reached it"
            )));
        }
    }
    weights::weight_only(model, Bits::EightReduced)?;
    let g = model.graph.as_mut().ok_or(OptimizeError::NoGraph)?;
    let mut names = Names::of(g);
    let produced_by: BTreeMap<&str, usize> =
        g.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    // The Q/DQ pair of each activation, placed right after its producer (or first, for a graph input).
    let mut after: BTreeMap<Option<usize>, Vec<NodeProto>> = BTreeMap::new();
    let mut renamed = BTreeMap::new();
    for a in &acts {
        let (scale, zp) = Ranges::scale_zero_point(ranges.0[a]);
        let (s, z) = (names.fresh(a, "_scale"), names.fresh(a, "_zero_point"));
        g.initializer.push(float_tensor(&s, &[], &[scale]));
        g.initializer.push(raw_tensor(&z, DataType::UINT8, &[], vec![zp]));
        let (q, dq) = (names.fresh(a, "_quantized"), names.fresh(a, "_dequantized"));
        let at = produced_by.get(a.as_str()).copied();
        let pair = after.entry(at).or_default();
        pair.push(graph::node("QuantizeLinear", names.fresh(a, "_quantize"), &[a, &s, &z], &[&q], vec![]));
        pair.push(graph::node("DequantizeLinear", names.fresh(a, "_dequantize"), &[&q, &s, &z], &[&dq], vec![]));
        renamed.insert(a.clone(), dq);
    }
    let mut nodes = after.remove(&None).unwrap_or_default();
    for (i, mut n) in std::mem::take(&mut g.node).into_iter().enumerate() {
        // The pairs are not in this list yet, so only the activations' readers are rewired.
        for input in &mut n.input {
            if let Some(dq) = renamed.get(input.as_str()) {
                input.clone_from(dq);
            }
        }
        nodes.push(n);
        nodes.extend(after.remove(&Some(i)).unwrap_or_default());
    }
    g.node = nodes;
    Ok(())
}
