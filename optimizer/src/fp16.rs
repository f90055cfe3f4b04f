//! float16: weights, constants and arithmetic in half precision (what Core ML and GPUs run fastest), with the
//! graph's float inputs and outputs kept float32 through a `Cast` at each, so callers and golden vectors see the
//! same signature.

use half::f16;

use crate::OptimizeError;
use crate::graph::{self, DataType, Names, attr_int, raw_tensor};
use crate::onnx::{AttributeProto, ModelProto, NodeProto, TensorProto, type_proto};

/// Inputs that ONNX defines as float32 whatever the operator's type: (operator, input index).
const FLOAT32_ONLY: [(&str, usize); 2] = [("Resize", 2), ("Upsample", 1)];

fn to_half(t: &TensorProto) -> Result<TensorProto, OptimizeError> {
    let v = graph::floats(t)?;
    let raw = v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect();
    let mut out = raw_tensor(t.name(), DataType::FLOAT16, &t.dims, raw);
    out.doc_string.clone_from(&t.doc_string);
    Ok(out)
}

fn convert_attr(a: &mut AttributeProto) -> Result<(), OptimizeError> {
    if let Some(t) = a.t.as_mut().filter(|t| t.data_type() == DataType::FLOAT) {
        *t = to_half(t)?;
    }
    Ok(())
}

pub fn to_fp16(model: &mut ModelProto) -> Result<(), OptimizeError> {
    let g = model.graph.as_mut().ok_or(OptimizeError::NoGraph)?;
    for n in &g.node {
        if graph::has_subgraph(n) {
            return Err(graph::unsupported(n, "holds subgraphs, which the float16 conversion does not rewrite"));
        }
        if !graph::is_default_domain(n.domain()) {
            return Err(graph::unsupported(n, "is an ONNX-ML operator, which takes float32 only"));
        }
    }
    let mut names = Names::of(g);
    for t in &mut g.initializer {
        if t.data_type() == DataType::FLOAT {
            *t = to_half(t)?;
        }
    }
    let mut nodes = Vec::with_capacity(g.node.len() + 4);
    // Float inputs arrive as float32 and are cast once, first.
    let mut input_casts = Vec::new();
    for v in &g.input {
        if is_float(v.r#type.as_ref()) && !g.initializer.iter().any(|t| t.name() == v.name()) {
            let half = names.fresh(v.name(), "_fp16");
            input_casts.push((v.name().to_owned(), half.clone()));
            nodes.push(cast(names.fresh(v.name(), "_to_fp16"), v.name(), &half, DataType::FLOAT16));
        }
    }
    // Float outputs are produced in float16 under another name and cast back last.
    let mut output_casts = Vec::new();
    for v in &g.output {
        if is_float(v.r#type.as_ref()) {
            output_casts.push((v.name().to_owned(), names.fresh(v.name(), "_fp16")));
        }
    }
    let rename = |s: &mut String| {
        for (from, to) in input_casts.iter().chain(&output_casts) {
            if s == from {
                s.clone_from(to);
            }
        }
    };
    for mut n in std::mem::take(&mut g.node) {
        n.input.iter_mut().for_each(rename);
        n.output.iter_mut().for_each(rename);
        for a in &mut n.attribute {
            convert_attr(a)?;
        }
        match n.op_type() {
            "Constant" => constant_to_half(&mut n)?,
            "Cast" => {
                for a in n.attribute.iter_mut().filter(|a| a.name() == "to" && a.i() == i64::from(DataType::FLOAT)) {
                    a.i = Some(i64::from(DataType::FLOAT16));
                }
            }
            _ => {
                for a in n.attribute.iter_mut().filter(|a| a.name() == "dtype" && a.i() == i64::from(DataType::FLOAT)) {
                    a.i = Some(i64::from(DataType::FLOAT16));
                }
            }
        }
        let float32_only: Vec<usize> =
            FLOAT32_ONLY.iter().filter(|(op, _)| *op == n.op_type()).map(|&(_, i)| i).collect();
        for index in float32_only {
            if let Some(input) = n.input.get_mut(index).filter(|i| !i.is_empty()) {
                let full = names.fresh(input, "_fp32");
                nodes.push(cast(names.fresh(input, "_to_fp32"), input, &full, DataType::FLOAT));
                *input = full;
            }
        }
        nodes.push(n);
    }
    for (name, half) in &output_casts {
        nodes.push(cast(names.fresh(name, "_to_fp32"), half, name, DataType::FLOAT));
    }
    g.node = nodes;
    // Intermediate types are optional; the float32 ones would now be wrong.
    g.value_info.clear();
    Ok(())
}

fn is_float(t: Option<&crate::onnx::TypeProto>) -> bool {
    matches!(t.and_then(|t| t.value.as_ref()), Some(type_proto::Value::TensorType(t)) if t.elem_type() == DataType::FLOAT)
}

fn cast(name: String, from: &str, to: &str, data_type: i32) -> NodeProto {
    graph::node("Cast", name, &[from], &[to], vec![attr_int("to", i64::from(data_type))])
}

/// `Constant`'s float forms (`value_float`, `value_floats`) as a float16 tensor.
fn constant_to_half(n: &mut NodeProto) -> Result<(), OptimizeError> {
    for a in &mut n.attribute {
        let values = match a.name() {
            "value_float" => vec![a.f()],
            "value_floats" => a.floats.clone(),
            _ => continue,
        };
        let dims: Vec<i64> = if a.name() == "value_float" { vec![] } else { vec![values.len() as i64] };
        let t = graph::float_tensor("", &dims, &values);
        *a = AttributeProto {
            name: Some("value".into()),
            r#type: Some(4),
            t: Some(TensorProto { name: None, ..to_half(&t)? }),
            ..Default::default()
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::GraphProto;

    #[test]
    fn a_graph_with_subgraphs_is_refused_with_the_operator_named() {
        let sub = GraphProto::default();
        let mut model = ModelProto {
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    op_type: Some("If".into()),
                    name: Some("branch".into()),
                    attribute: vec![AttributeProto {
                        name: Some("then_branch".into()),
                        g: Some(sub),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = to_fp16(&mut model).unwrap_err().to_string();
        assert!(e.contains("operator If (node \"branch\") holds subgraphs"), "{e}");
    }
}
