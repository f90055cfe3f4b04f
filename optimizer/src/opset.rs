//! Raising a model's default operator set, for rewrites that need a newer operator (int4 `DequantizeLinear` is
//! opset 21). From opset 13 on, the operators whose meaning changed are few: the reductions took `axes` as an
//! input instead of an attribute at 18 (rewritten here), and three changed in ways no rewrite preserves (refused
//! with their name). Every other change up to 21 added types or attributes whose defaults keep the old meaning.

use crate::OptimizeError;
use crate::graph::{self, Names};
use crate::onnx::{GraphProto, ModelProto, TensorProto};

/// The oldest operator set the upgrade starts from: before 13, Squeeze, Unsqueeze, Split, ReduceSum and Softmax
/// meant other things.
const OLDEST: i64 = 13;
/// Reductions whose `axes` moved from an attribute to an input at opset 18 (ReduceSum moved at 13).
const REDUCE_18: [&str; 9] = [
    "ReduceMax",
    "ReduceMin",
    "ReduceMean",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
];
/// Operators whose meaning changed between 13 and 21 in a way the upgrade does not rewrite.
const CHANGED: [(&str, i64); 3] = [("GroupNormalization", 21), ("DFT", 20), ("GridSample", 20)];
/// The IR version that opset 21 needs.
const IR_FOR_21: i64 = 10;

pub fn upgrade_to(model: &mut ModelProto, target: i64) -> Result<(), OptimizeError> {
    let from = graph::default_opset(model).ok_or(OptimizeError::NoOpset)?;
    if from >= target {
        return Ok(());
    }
    if from < OLDEST {
        return Err(OptimizeError::Opset(format!(
            "this variant needs opset {target}; the model imports opset {from}, and upgrades start at opset {OLDEST}"
        )));
    }
    let g = model.graph.as_mut().ok_or(OptimizeError::NoGraph)?;
    let mut names = Names::of(g);
    let mut axes_inits = Vec::new();
    upgrade_graph(g, from, target, &mut names, &mut axes_inits)?;
    g.initializer.extend(axes_inits);
    for o in &mut model.opset_import {
        if graph::is_default_domain(o.domain()) {
            o.version = Some(target);
        }
    }
    if target >= 21 {
        model.ir_version = Some(model.ir_version().max(IR_FOR_21));
    }
    Ok(())
}

fn upgrade_graph(
    g: &mut GraphProto,
    from: i64,
    target: i64,
    names: &mut Names,
    inits: &mut Vec<TensorProto>,
) -> Result<(), OptimizeError> {
    for n in &mut g.node {
        for a in &mut n.attribute {
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                upgrade_graph(sub, from, target, names, inits)?;
            }
        }
        if !graph::is_default_domain(n.domain()) {
            continue;
        }
        if let Some((_, at)) = CHANGED.iter().find(|(op, at)| *op == n.op_type() && from < *at && target >= *at) {
            return Err(graph::unsupported(
                n,
                format!("changed meaning at opset {at}; the upgrade from opset {from} to {target} does not rewrite it"),
            ));
        }
        if from < 18 && target >= 18 && REDUCE_18.contains(&n.op_type()) {
            let Some(i) = n.attribute.iter().position(|a| a.name() == "axes") else { continue };
            let axes = n.attribute.remove(i).ints;
            let name = names.fresh(n.name(), "_axes");
            inits.push(graph::int64_tensor(&name, &[axes.len() as i64], &axes));
            n.input.truncate(1);
            n.input.push(name);
        }
    }
    Ok(())
}
