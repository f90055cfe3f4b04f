"""Makes a genuinely slower copy of a model for latency-gate tests: the same inputs, the same outputs to the last
bit, plus real work that depends on the input (a chain of 1024x1024 matrix products with tanh between them whose
sum is multiplied by zero and added to the first output). ONNX Runtime cannot fold it away, since it depends on
the request; golden vectors still pass, since x + 0 * s == x for finite s (tanh keeps s finite).

With LAYERS = "fails", it makes instead a model that loads and then fails every request at run time: the input
is reshaped to rows of 3 values, which no real input (2048 bytes per row) divides into.

usage: make_slow_model.py SRC DST [LAYERS | fails]"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

src, dst = sys.argv[1], sys.argv[2]
mode = sys.argv[3] if len(sys.argv) > 3 else "32"
fails = mode == "fails"
layers = 0 if fails else int(mode)
model = onnx.load(src)
g = model.graph
x = g.input[0].name
out = g.output[0].name
pre = out + "__before_slow"
for node in g.node:
    node.output[:] = [pre if o == out else o for o in node.output]
rng = np.random.default_rng(7)
w_in = (rng.standard_normal((64, 1024)) / 8.0).astype(np.float32)
w = (rng.standard_normal((1024, 1024)) / 32.0).astype(np.float32)
g.initializer.extend(([] if fails else [numpy_helper.from_array(w_in, "slow_w_in"), numpy_helper.from_array(w, "slow_w")]) + [
    numpy_helper.from_array(np.array([-1, 3 if fails else 64], dtype=np.int64), "slow_shape"),
    numpy_helper.from_array(np.array(0.0, dtype=np.float32), "slow_zero"),
])
nodes = [
    helper.make_node("Cast", [x], ["slow_f"], to=TensorProto.FLOAT),
    helper.make_node("Reshape", ["slow_f", "slow_shape"], ["slow_r"]),
    helper.make_node("MatMul", ["slow_r", "slow_w_in"], ["slow_h0"]) if not fails else
    helper.make_node("Identity", ["slow_r"], ["slow_h0"]),
]
for i in range(layers):
    nodes.append(helper.make_node("MatMul", [f"slow_h{i}", "slow_w"], [f"slow_m{i}"]))
    nodes.append(helper.make_node("Tanh", [f"slow_m{i}"], [f"slow_h{i + 1}"]))
nodes += [
    helper.make_node("ReduceSum", [f"slow_h{layers}"], ["slow_s"], keepdims=0),
    helper.make_node("Mul", ["slow_s", "slow_zero"], ["slow_z"]),
    helper.make_node("Add", [pre, "slow_z"], [out]),
]
g.node.extend(nodes)
onnx.checker.check_model(model)
tmp = dst + ".tmp.onnx"
onnx.save(model, tmp)
os.replace(tmp, dst)
print(f"slow model: {'fails at run time' if fails else f'{layers} extra 1024x1024 layers'} -> {dst}", file=sys.stderr)
