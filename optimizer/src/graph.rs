//! Reading and building pieces of an ONNX graph: tensors' float data, attributes, nodes, unique names, who
//! consumes what, and which initializers are weights (and along which axes their channels lie).

use std::collections::{BTreeSet, HashMap};

use crate::OptimizeError;
use crate::onnx::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

/// ONNX `TensorProto.DataType` values the optimizer reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataType;

impl DataType {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const INT4: i32 = 22;
}

/// The operator-set domains whose operators the optimizer knows (the default domain under both spellings, and
/// ONNX-ML, whose operators it never rewrites).
const KNOWN_DOMAINS: [&str; 3] = ["", "ai.onnx", "ai.onnx.ml"];

pub fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// The version of the default operator set the model imports.
pub fn default_opset(model: &ModelProto) -> Option<i64> {
    model.opset_import.iter().find(|o| is_default_domain(o.domain())).map(|o| o.version())
}

/// Every node of the graph and of its subgraphs, depth first.
pub fn all_nodes(g: &GraphProto) -> Vec<&NodeProto> {
    let mut out = Vec::new();
    for n in &g.node {
        out.push(n);
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                out.extend(all_nodes(sub));
            }
        }
    }
    out
}

/// Refuses operators of a custom domain: the optimizer cannot know what such an operator does with a tensor it
/// rewrites.
pub fn check_known_ops(model: &ModelProto) -> Result<(), OptimizeError> {
    let g = model.graph.as_ref().ok_or(OptimizeError::NoGraph)?;
    for n in all_nodes(g) {
        if !KNOWN_DOMAINS.contains(&n.domain()) {
            return Err(OptimizeError::Unsupported {
                op: format!("{}.{}", n.domain(), n.op_type()),
                node: n.name().to_owned(),
                why: "is of a custom operator set, which the optimizer does not rewrite around".into(),
            });
        }
    }
    Ok(())
}

pub fn unsupported(n: &NodeProto, why: impl Into<String>) -> OptimizeError {
    OptimizeError::Unsupported { op: n.op_type().to_owned(), node: n.name().to_owned(), why: why.into() }
}

/// Whether a node holds a subgraph (`If`, `Loop`, `Scan`).
pub fn has_subgraph(n: &NodeProto) -> bool {
    n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())
}

// === tensors ===

pub fn element_count(dims: &[i64]) -> usize {
    dims.iter().map(|&d| d.max(0) as usize).product()
}

/// A float32 tensor's values, from `raw_data` or `float_data`.
pub fn floats(t: &TensorProto) -> Result<Vec<f32>, OptimizeError> {
    let bad = |why: String| OptimizeError::Tensor { name: t.name().to_owned(), why };
    if t.data_type() != DataType::FLOAT {
        return Err(bad(format!("is of data type {}, not float32", t.data_type())));
    }
    let n = element_count(&t.dims);
    let values: Vec<f32> = match &t.raw_data {
        Some(raw) => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        None => t.float_data.clone(),
    };
    if values.len() != n {
        return Err(bad(format!("holds {} values for dims {:?} ({n})", values.len(), t.dims)));
    }
    Ok(values)
}

/// A tensor with its data in `raw_data`.
pub fn raw_tensor(name: &str, data_type: i32, dims: &[i64], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.to_owned()),
        data_type: Some(data_type),
        dims: dims.to_vec(),
        raw_data: Some(raw),
        ..Default::default()
    }
}

pub fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    raw_tensor(name, DataType::FLOAT, dims, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

pub fn int64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    raw_tensor(name, DataType::INT64, dims, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

// === attributes and nodes ===

pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), i: Some(i), r#type: Some(2), ..Default::default() }
}

pub fn get_int(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name() == name).map(|a| a.i())
}

pub fn node(op: &str, name: String, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: outputs.iter().map(|s| (*s).to_owned()).collect(),
        attribute,
        ..Default::default()
    }
}

/// Names already used in a graph (values, initializers, nodes, subgraphs included), and fresh ones.
#[derive(Debug, Default)]
pub struct Names(BTreeSet<String>);

impl Names {
    pub fn of(g: &GraphProto) -> Self {
        let mut set = BTreeSet::new();
        fn walk(g: &GraphProto, set: &mut BTreeSet<String>) {
            set.extend(g.initializer.iter().map(|t| t.name().to_owned()));
            set.extend(g.input.iter().chain(&g.output).chain(&g.value_info).map(|v| v.name().to_owned()));
            for n in &g.node {
                set.insert(n.name().to_owned());
                set.extend(n.input.iter().chain(&n.output).cloned());
                for a in &n.attribute {
                    for sub in a.g.iter().chain(&a.graphs) {
                        walk(sub, set);
                    }
                }
            }
        }
        walk(g, &mut set);
        Self(set)
    }

    /// `base` + `suffix`, with a number added if that is taken.
    pub fn fresh(&mut self, base: &str, suffix: &str) -> String {
        let mut name = format!("{base}{suffix}");
        let mut i = 1;
        while self.0.contains(&name) {
            name = format!("{base}{suffix}_{i}");
            i += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

/// For each value name, the (node index, input index) pairs of the top-level nodes that read it.
pub fn consumers(g: &GraphProto) -> HashMap<&str, Vec<(usize, usize)>> {
    let mut out: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for (j, input) in n.input.iter().enumerate() {
            if !input.is_empty() {
                out.entry(input.as_str()).or_default().push((i, j));
            }
        }
    }
    out
}

/// Names read inside any subgraph (outer-scope references included).
pub fn read_in_subgraphs(g: &GraphProto) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for n in &g.node {
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                for m in all_nodes(sub) {
                    out.extend(m.input.iter().cloned());
                }
            }
        }
    }
    out
}

/// How a weight is laid out for its consumer: the axis of its output channels (one scale each) and the axis it
/// is reduced over (int4's blocks run along it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightAxes {
    pub channel: usize,
    pub reduce: usize,
}

/// The layout of input `input` of node `n` when it is a weight that the optimizer knows, or `None`.
pub fn weight_axes(n: &NodeProto, input: usize, rank: usize) -> Option<WeightAxes> {
    if !is_default_domain(n.domain()) {
        return None;
    }
    match (n.op_type(), input, rank) {
        ("MatMul", 1, r) if r >= 2 => Some(WeightAxes { channel: r - 1, reduce: r - 2 }),
        ("Gemm", 1, 2) => Some(if get_int(n, "transB").unwrap_or(0) == 0 {
            WeightAxes { channel: 1, reduce: 0 }
        } else {
            WeightAxes { channel: 0, reduce: 1 }
        }),
        ("Conv", 1, r) if r >= 3 => Some(WeightAxes { channel: 0, reduce: 1 }),
        ("ConvTranspose", 1, r) if r >= 3 => Some(WeightAxes { channel: 1, reduce: 0 }),
        ("Gather", 0, 2) if get_int(n, "axis").unwrap_or(0) == 0 => Some(WeightAxes { channel: 0, reduce: 1 }),
        _ => None,
    }
}

/// Float initializers big enough to matter that are read only as a weight of known layout, each with its
/// layout: (initializer index, axes). An initializer that is also a graph input (overridable), read in a
/// subgraph, or read with two different layouts is left alone.
pub fn weights(g: &GraphProto, min_elements: usize) -> Vec<(usize, WeightAxes)> {
    let readers = consumers(g);
    let inputs: BTreeSet<&str> = g.input.iter().map(|v| v.name()).collect();
    let in_subgraphs = read_in_subgraphs(g);
    let mut out = Vec::new();
    for (i, t) in g.initializer.iter().enumerate() {
        let name = t.name();
        if t.data_type() != DataType::FLOAT
            || element_count(&t.dims) < min_elements
            || inputs.contains(name)
            || in_subgraphs.contains(name)
        {
            continue;
        }
        let Some(uses) = readers.get(name) else { continue };
        let axes: Vec<Option<WeightAxes>> =
            uses.iter().map(|&(n, j)| weight_axes(&g.node[n], j, t.dims.len())).collect();
        if let Some(Some(first)) = axes.first()
            && axes.iter().all(|a| *a == Some(*first))
        {
            out.push((i, *first));
        }
    }
    out
}
