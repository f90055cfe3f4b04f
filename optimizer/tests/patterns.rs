//! Every supported operator pattern through every kind of variant, checked by ONNX Runtime: the rewritten model
//! loads, runs, computes what the float32 model computes within the kind's error, and holds the operators the
//! kind promises. Graphs are built here, small and exact; the real models are `real.rs`'s.

use std::collections::BTreeMap;

use edgefleet_optimizer::graph::{self, DataType, attr_int};
use edgefleet_optimizer::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, tensor_shape_proto, type_proto,
};
use edgefleet_optimizer::{Kind, Ranges, calibration_model, decode, encode, optimize};
use edgefleet_protocol::tensor::{ElementType, HostTensor};
use edgefleet_runtime::Runtime;

fn runtime() -> &'static Runtime {
    Runtime::shared(Some(&edgefleet_e2e::cache("lib/libonnxruntime.so.1.31.1"))).expect("ONNX Runtime loads")
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn value_info(name: &str, elem_type: i32, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn op(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    graph::node(op, format!("{op}_{output}"), inputs, &[output], attribute)
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), ints: v.to_vec(), r#type: Some(7), ..Default::default() }
}

struct Pattern {
    name: &'static str,
    model: ModelProto,
    input: (String, HostTensor),
}

fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, input: ValueInfoProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) }],
        graph: Some(GraphProto {
            name: Some("pattern".into()),
            node: nodes,
            initializer: inits,
            input: vec![input],
            output: vec![ValueInfoProto { name: Some("y".into()), ..value_info("y", DataType::FLOAT, &[]) }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn floats_in(name: &str, dims: &[usize], seed: u64) -> (String, HostTensor) {
    (name.into(), HostTensor::from_f32(dims.to_vec(), &values(dims.iter().product(), seed)))
}

fn w(name: &str, dims: &[i64], seed: u64) -> TensorProto {
    graph::float_tensor(name, dims, &values(graph::element_count(dims), seed))
}

fn patterns() -> Vec<Pattern> {
    let x = |dims: &[i64]| value_info("x", DataType::FLOAT, dims);
    vec![
        Pattern {
            name: "MatMul, Relu, MatMul",
            model: model(
                vec![
                    op("MatMul", &["x", "w1"], "h", vec![]),
                    op("Relu", &["h"], "r", vec![]),
                    op("MatMul", &["r", "w2"], "y", vec![]),
                ],
                vec![w("w1", &[64, 96], 1), w("w2", &[96, 40], 2)],
                x(&[4, 64]),
                15,
            ),
            input: floats_in("x", &[4, 64], 3),
        },
        Pattern {
            name: "Gemm with transB and a bias",
            model: model(
                vec![op("Gemm", &["x", "w", "b"], "y", vec![attr_int("transB", 1)])],
                vec![w("w", &[48, 64], 4), w("b", &[48], 5)],
                x(&[3, 64]),
                15,
            ),
            input: floats_in("x", &[3, 64], 6),
        },
        Pattern {
            name: "Gemm without a bias",
            model: model(vec![op("Gemm", &["x", "w"], "y", vec![])], vec![w("w", &[64, 32], 7)], x(&[3, 64]), 15),
            input: floats_in("x", &[3, 64], 8),
        },
        Pattern {
            name: "Conv with a bias and padding",
            model: model(
                vec![op("Conv", &["x", "w", "b"], "y", vec![ints("pads", &[1, 1]), ints("kernel_shape", &[3])])],
                vec![w("w", &[32, 16, 3], 9), w("b", &[32], 10)],
                x(&[1, 16, 20]),
                15,
            ),
            input: floats_in("x", &[1, 16, 20], 11),
        },
        Pattern {
            name: "Gather (an embedding), ReduceMax with axes, MatMul",
            model: model(
                vec![
                    op("Gather", &["table", "x"], "e", vec![]),
                    op("ReduceMax", &["e"], "m", vec![ints("axes", &[1]), attr_int("keepdims", 0)]),
                    op("MatMul", &["m", "w"], "y", vec![]),
                ],
                vec![w("table", &[100, 64], 12), w("w", &[64, 24], 13)],
                value_info("x", DataType::INT64, &[2, 5]),
                15,
            ),
            input: (
                "x".into(),
                HostTensor {
                    dtype: ElementType::Int64,
                    shape: vec![2, 5],
                    data: [3i64, 17, 99, 0, 42, 7, 7, 64, 1, 88].iter().flat_map(|v| v.to_le_bytes()).collect(),
                },
            ),
        },
    ]
}

fn run(m: &ModelProto, input: &(String, HostTensor), dir: &std::path::Path, name: &str) -> BTreeMap<String, Vec<f32>> {
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, encode(m)).expect("write");
    let mut model = runtime().open(&path).unwrap_or_else(|e| panic!("{name}: ONNX Runtime refuses it: {e}"));
    let out = model
        .run(&BTreeMap::from([input.clone()]))
        .unwrap_or_else(|e| panic!("{name}: ONNX Runtime cannot run it: {e}"));
    out.into_iter().map(|(k, t)| (k, t.to_f64().iter().map(|&v| v as f32).collect())).collect()
}

fn ops(m: &ModelProto) -> Vec<String> {
    m.graph.as_ref().unwrap().node.iter().map(|n| n.op_type().to_owned()).collect()
}

fn calibrate(p: &Pattern, dir: &std::path::Path) -> Ranges {
    let (exposed, names) = calibration_model(&p.model).expect("calibration model");
    let outputs = run(&exposed, &p.input, dir, "calibration");
    let mut ranges = Ranges::default();
    for n in names {
        let values = match outputs.get(&n) {
            Some(v) => v.clone(),
            None if n == p.input.0 => p.input.1.to_f64().iter().map(|&v| v as f32).collect(),
            None => panic!("activation {n} was not produced"),
        };
        ranges.observe(&n, &values);
    }
    ranges
}

#[test]
fn every_pattern_in_every_kind_loads_runs_and_stays_close_in_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    // The largest error each kind may show, relative to the largest reference output.
    let kinds = [
        (Kind::WeightInt8, 0.03, "DequantizeLinear"),
        (Kind::WeightInt4, 0.35, "DequantizeLinear"),
        (Kind::DynamicInt8, 0.05, "DynamicQuantizeLinear"),
        (Kind::QdqInt8, 0.08, "QuantizeLinear"),
        (Kind::Fp16, 0.01, "Cast"),
    ];
    for p in patterns() {
        let reference = run(&p.model, &p.input, dir.path(), "reference")["y"].clone();
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (kind, bound, must_hold) in kinds {
            let what = format!("{} as {kind}", p.name);
            let ranges = (kind == Kind::QdqInt8).then(|| calibrate(&p, dir.path()));
            let variant = optimize(&p.model, kind, ranges.as_ref()).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(ops(&variant).iter().any(|o| o == must_hold), "{what}: no {must_hold} in {:?}", ops(&variant));
            // The encoding is what a device receives: decode it back before running.
            let again = decode(&encode(&variant)).unwrap_or_else(|e| panic!("{what}: {e}"));
            let got = &run(&again, &p.input, dir.path(), &kind.name())["y"];
            assert_eq!(got.len(), reference.len(), "{what}: output size");
            let err = got.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= bound * scale, "{what}: max |Δ| {err} against a largest output {scale} (bound {bound})");
        }
    }
}

#[test]
fn pruning_zeroes_the_share_asked_and_the_model_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    for p in patterns() {
        let pruned = optimize(&p.model, Kind::Prune { percent: 60 }, None).expect("prune");
        for t in &pruned.graph.as_ref().unwrap().initializer {
            let v = graph::floats(t).unwrap();
            if v.len() >= 1024 {
                let zeros = v.iter().filter(|x| **x == 0.0).count();
                assert_eq!(zeros, v.len() * 60 / 100, "{}: {}", p.name, t.name());
            }
        }
        assert!(!run(&pruned, &p.input, dir.path(), "pruned")["y"].is_empty());
    }
}

#[test]
fn int4_upgrades_the_operator_set_and_moves_reduce_axes_to_an_input() {
    let p = patterns().pop().expect("the Gather pattern");
    let v = optimize(&p.model, Kind::WeightInt4, None).expect("int4");
    assert_eq!(graph::default_opset(&v), Some(21));
    assert!(v.ir_version() >= 10);
    let reduce = v.graph.as_ref().unwrap().node.iter().find(|n| n.op_type() == "ReduceMax").unwrap();
    assert!(reduce.attribute.iter().all(|a| a.name() != "axes"));
    assert_eq!(reduce.input.len(), 2);
    let int4 = v.graph.as_ref().unwrap().initializer.iter().filter(|t| t.data_type() == DataType::INT4).count();
    assert_eq!(int4, 2, "the table and the MatMul weight");
}

#[test]
fn unsupported_graphs_are_refused_with_the_operator_named() {
    let mut custom = patterns().remove(0).model;
    let g = custom.graph.as_mut().unwrap();
    g.node[1].op_type = Some("FancyRelu".into());
    g.node[1].domain = Some("com.example".into());
    let e = optimize(&custom, Kind::WeightInt8, None).unwrap_err().to_string();
    assert!(e.contains("com.example.FancyRelu") && e.contains("Relu_r"), "{e}");

    let mut old = patterns().remove(0).model;
    old.opset_import[0].version = Some(11);
    let e = optimize(&old, Kind::WeightInt4, None).unwrap_err().to_string();
    assert!(e.contains("opset 11"), "{e}");

    let mut grid = patterns().remove(0).model;
    grid.graph.as_mut().unwrap().node[1].op_type = Some("GridSample".into());
    let e = optimize(&grid, Kind::WeightInt4, None).unwrap_err().to_string();
    assert!(e.contains("operator GridSample") && e.contains("changed meaning at opset 20"), "{e}");

    let e = optimize(&patterns().remove(0).model, Kind::QdqInt8, Some(&Ranges::default())).unwrap_err().to_string();
    assert!(e.contains("no range was observed for activation \"x\""), "{e}");

    let no_weights = model(vec![op("Relu", &["x"], "y", vec![])], vec![], value_info("x", DataType::FLOAT, &[2]), 15);
    let e = optimize(&no_weights, Kind::WeightInt8, None).unwrap_err().to_string();
    assert!(e.contains("nothing to rewrite"), "{e}");
}
