"""Makes a deliberately wrong copy of a model for tests: the largest float weight tensor is reversed, so the model
still loads and runs with the same signature but computes something else. Golden-vector checks must catch it."""
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

src, dst = sys.argv[1], sys.argv[2]
model = onnx.load(src)
inits = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
target = max(inits, key=lambda i: int(np.prod(i.dims)))
arr = numpy_helper.to_array(target)
target.CopyFrom(numpy_helper.from_array(arr[::-1].copy() * -1.0, target.name))
tmp = dst + ".tmp.onnx"
onnx.save(model, tmp)
os.replace(tmp, dst)
print(f"wrong model: reversed {target.name} {list(target.dims)} -> {dst}", file=sys.stderr)
