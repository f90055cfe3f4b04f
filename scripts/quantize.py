"""The peer in the optimizer's benchmark (scripts/bench_optimizer.sh): the int8 variant of an ONNX model made by
ONNX Runtime's own dynamic quantizer (weights int8, activations quantized at run time). The project's own
variants come from `edgefleet release optimize`. Writes to a temporary file and renames, so an interrupted run leaves nothing behind."""
import os
import sys

from onnxruntime.quantization import QuantType, quantize_dynamic

src, dst = sys.argv[1], sys.argv[2]
tmp = dst + ".tmp.onnx"
quantize_dynamic(src, tmp, weight_type=QuantType.QInt8)
os.replace(tmp, dst)
print(f"quantize: {src} -> {dst} ({os.path.getsize(dst)} bytes)", file=sys.stderr)
