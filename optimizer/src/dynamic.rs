//! Dynamic int8: weights stored as 8-bit integers with a scale per output channel; the activation quantized at
//! run time (`DynamicQuantizeLinear`, uint8 with its own scale per call), the product in integers
//! (`MatMulInteger`, `ConvInteger`), then scaled back to float by the two scales. ONNX Runtime's own dynamic
//! quantizer makes the same graph with one scale per tensor.
//!
//! Weights are stored uint8 around a zero point of 128 (the symmetric int8 value + 128), not int8: x86 CPUs
//! without VNNI multiply uint8 by int8 through 16-bit pair sums that saturate (ONNX Runtime documents it, and
//! its quantizer's `reduce_range` gives up a bit of weight precision for it); uint8 × uint8 does not saturate.

use crate::OptimizeError;
use crate::graph::{self, DataType, Names, WeightAxes, attr_int, float_tensor, raw_tensor};
use crate::onnx::{GraphProto, ModelProto, NodeProto, TensorProto};
use crate::weights::{Bits, Layout, MIN_WEIGHT_ELEMENTS, quantize};

/// `ConvInteger` and `MatMulInteger` came with opset 10; `DynamicQuantizeLinear` with 11.
const DYNAMIC_OPSET: i64 = 11;

pub fn dynamic_int8(model: &mut ModelProto) -> Result<(), OptimizeError> {
    let opset = graph::default_opset(model).unwrap_or(0);
    if opset < DYNAMIC_OPSET {
        return Err(OptimizeError::Opset(format!(
            "DynamicQuantizeLinear needs opset {DYNAMIC_OPSET}; the model imports opset {opset}"
        )));
    }
    let g = model.graph.as_mut().ok_or(OptimizeError::NoGraph)?;
    let weights = graph::weights(g, MIN_WEIGHT_ELEMENTS);
    let mut names = Names::of(g);
    let mut replaced = vec![None; g.node.len()];
    let mut new_inits = Vec::new();
    let mut removed = Vec::new();
    for (i, axes) in weights {
        let readers = graph::consumers(g).get(g.initializer[i].name()).cloned().unwrap_or_default();
        // One reader, a product: Gather reads rows and multiplies nothing, ConvTranspose has no integer form, and
        // a weight read twice stays float rather than be stored twice. Weight-only int8 covers those.
        let [(n, _)] = readers[..] else { continue };
        if !["MatMul", "Gemm", "Conv"].contains(&g.node[n].op_type()) {
            continue;
        }
        replaced[n] = Some(rewrite(&g.node[n], &g.initializer[i], axes, &mut names, &mut new_inits)?);
        removed.push(i);
    }
    if removed.is_empty() {
        return Err(OptimizeError::Nothing("no MatMul, Gemm or Conv reads a float weight initializer".into()));
    }
    let mut nodes = Vec::with_capacity(g.node.len());
    for (n, old) in std::mem::take(&mut g.node).into_iter().enumerate() {
        match replaced[n].take() {
            Some(new) => nodes.extend(new),
            None => nodes.push(old),
        }
    }
    g.node = nodes;
    remove_initializers(g, &removed);
    g.initializer.extend(new_inits);
    Ok(())
}

fn remove_initializers(g: &mut GraphProto, indices: &[usize]) {
    let mut i = 0;
    g.initializer.retain(|_| {
        i += 1;
        !indices.contains(&(i - 1))
    });
}

/// The nodes that replace one reader `n` of weight `w`: quantize the activation, integer product, scale back.
fn rewrite(
    n: &NodeProto,
    w: &TensorProto,
    axes: WeightAxes,
    names: &mut Names,
    inits: &mut Vec<TensorProto>,
) -> Result<Vec<NodeProto>, OptimizeError> {
    let op = n.op_type();
    if op == "Gemm" {
        let alpha = n.attribute.iter().find(|a| a.name() == "alpha").map_or(1.0, |a| a.f());
        let beta = n.attribute.iter().find(|a| a.name() == "beta").map_or(1.0, |a| a.f());
        if graph::get_int(n, "transA").unwrap_or(0) != 0 || alpha != 1.0 || beta != 1.0 {
            return Err(graph::unsupported(n, "with transA, alpha or beta other than the defaults is not rewritten"));
        }
    }
    let base = n.output.first().cloned().unwrap_or_default();
    let x = n.input[0].as_str();
    // The weight, int8, one scale per output channel; Gemm's transposed B is stored as [K, N] like MatMul's.
    let mut dims = w.dims.clone();
    let mut values = graph::floats(w)?;
    let mut axes = axes;
    if op == "Gemm" && axes.channel == 0 {
        let (rows, cols) = (dims[0] as usize, dims[1] as usize);
        values = (0..rows * cols).map(|i| values[(i % rows) * cols + i / rows]).collect();
        dims = vec![dims[1], dims[0]];
        axes = WeightAxes { channel: 1, reduce: 0 };
    }
    let q = quantize(&values, &Layout::new(&dims, axes, Bits::Eight));
    let wq = names.fresh(w.name(), "_quantized");
    inits.push(raw_tensor(&wq, DataType::UINT8, &dims, q.values.iter().map(|&v| (i16::from(v) + 128) as u8).collect()));
    let wz = names.fresh(w.name(), "_zero_point");
    inits.push(raw_tensor(&wz, DataType::UINT8, &[], vec![128]));
    // The weight's scales shaped to broadcast over the product: [N] for a matrix product, [M, 1, ...] for Conv.
    let ws = names.fresh(w.name(), "_scale");
    let scale_dims: Vec<i64> = if op == "Conv" {
        std::iter::once(q.scales.len() as i64).chain(std::iter::repeat_n(1, dims.len() - 2)).collect()
    } else {
        vec![q.scales.len() as i64]
    };
    inits.push(float_tensor(&ws, &scale_dims, &q.scales));

    let (xq, xs, xz) = (names.fresh(x, "_quantized"), names.fresh(x, "_scale"), names.fresh(x, "_zero_point"));
    let mut out = vec![graph::node(
        "DynamicQuantizeLinear",
        names.fresh(&base, "_quantize_input"),
        &[x],
        &[&xq, &xs, &xz],
        vec![],
    )];
    let product = names.fresh(&base, "_int32");
    let (int_op, attrs) = match op {
        "Conv" => ("ConvInteger", n.attribute.clone()),
        _ => ("MatMulInteger", vec![]),
    };
    out.push(graph::node(int_op, names.fresh(&base, "_integer"), &[&xq, &wq, &xz, &wz], &[&product], attrs));
    let as_float = names.fresh(&base, "_float");
    out.push(graph::node(
        "Cast",
        names.fresh(&base, "_cast"),
        &[&product],
        &[&as_float],
        vec![attr_int("to", i64::from(DataType::FLOAT))],
    ));
    let scale = names.fresh(&base, "_product_scale");
    out.push(graph::node("Mul", names.fresh(&base, "_scales"), &[&xs, &ws], &[&scale], vec![]));
    // Conv's and Gemm's bias, added after scaling.
    let bias = n.input.get(2).filter(|b| !b.is_empty());
    let scaled = if bias.is_some() { names.fresh(&base, "_scaled") } else { base.clone() };
    out.push(graph::node("Mul", names.fresh(&base, "_rescale"), &[&as_float, &scale], &[&scaled], vec![]));
    if let Some(bias) = bias {
        let bias_shaped = if op == "Conv" {
            let shape = names.fresh(bias, "_shape");
            let dims: Vec<i64> = std::iter::once(-1).chain(std::iter::repeat_n(1, dims.len() - 2)).collect();
            inits.push(graph::int64_tensor(&shape, &[dims.len() as i64], &dims));
            let reshaped = names.fresh(bias, "_reshaped");
            out.push(graph::node("Reshape", names.fresh(bias, "_reshape"), &[bias, &shape], &[&reshaped], vec![]));
            reshaped
        } else {
            bias.clone()
        };
        out.push(graph::node("Add", names.fresh(&base, "_bias"), &[&scaled, &bias_shaped], &[&base], vec![]));
    }
    Ok(out)
}
