"""The Python reference for BENCHMARKS.md's serving rows: magika on onnxruntime's own Python API, the same model,
input and settings as `device-daemon/examples/bench_v2.rs` (batch 1, one session, one intra-op thread, CPU
execution provider, onnxruntime 1.31.1 — the wheel set-up installs into .cache/venv).

    .cache/venv/bin/python scripts/bench_python_ort.py [REQUESTS]
"""
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
cache = ".cache/models/magika"
cfg = json.load(open(f"{cache}/config.min.json"))
beg, end, pad, block = cfg["beg_size"], cfg["end_size"], cfg["padding_token"], cfg["block_size"]
# The same input as the Rust benchmark: a small Python program (edgefleet_e2e::PYTHON_SOURCE).
source = b'''import json
import sys


def main(path):
    """Print the keys of a JSON document."""
    with open(path) as f:
        doc = json.load(f)
    for key in sorted(doc):
        print(key, type(doc[key]).__name__)


if __name__ == "__main__":
    main(sys.argv[1])
'''
head = source[:block].lstrip()[:beg]
tail = source[-block:].rstrip()[-end:]
features = list(head) + [pad] * (beg - len(head)) + [pad] * (end - len(tail)) + list(tail)
x = np.array([features], dtype=np.int32)

opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
session = ort.InferenceSession(f"{cache}/model.onnx", opts, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
for _ in range(50):
    session.run(None, {name: x})
took = []
for _ in range(n):
    t = time.perf_counter()
    session.run(None, {name: x})
    took.append(time.perf_counter() - t)
took.sort()


def pct(p):
    return took[round((len(took) - 1) * p)] * 1e3


print(f"python onnxruntime {ort.__version__}: {n} runs, p50 {pct(0.5):.2f} ms, p99 {pct(0.99):.2f} ms, "
      f"mean {statistics.fmean(took) * 1e3:.2f} ms")
