"""Builds magika inputs from a corpus of real files for the optimizer's benchmark: up to N regular files of the
Python standard library and /usr/share (sources, docs, images, fonts, compressed files, locale data...), each
turned into magika's features (the same layout as make_samples.py), written as one safetensors file of cases
`<i>/bytes`. Usage: make_corpus.py CACHE OUT N [SKIP] — SKIP files of the shuffled list are passed over first, so
two corpora (a calibration set, an evaluation set) share no file."""
import json
import os
import random
import sys
import sysconfig

sys.path.insert(0, os.path.dirname(__file__))
cache, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
skip = int(sys.argv[4]) if len(sys.argv) > 4 else 0
from make_samples import magika_features, write_safetensors  # noqa: E402

cfg = json.load(open(os.path.join(cache, "models/magika/config.min.json")))
paths = []
for root in [sysconfig.get_paths()["stdlib"], "/usr/share"]:
    for d, _, files in os.walk(root):
        paths.extend(os.path.join(d, f) for f in files)
random.Random(17).shuffle(paths)
tensors, skipped = {}, 0
for p in paths:
    if len(tensors) >= n:
        break
    try:
        if not os.path.isfile(p) or os.path.islink(p) or os.path.getsize(p) == 0:
            continue
        with open(p, "rb") as f:
            head = f.read(cfg["block_size"])
            f.seek(max(0, os.path.getsize(p) - cfg["block_size"]))
            tail = f.read(cfg["block_size"])
    except OSError:
        continue
    if skipped < skip:
        skipped += 1
        continue
    # The features read the first and last block only: give them exactly that.
    tensors[f"{len(tensors):05d}/bytes"] = magika_features(head + tail if len(head) == cfg["block_size"] else head, cfg)
write_safetensors(out, tensors)
print(f"corpus: {len(tensors)} files -> {out}", file=sys.stderr)
