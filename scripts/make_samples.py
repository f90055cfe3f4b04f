"""Builds sample inputs for golden vectors from real files, as safetensors files keyed `<case>/<input name>`.

magika: the model's own feature layout (config.min.json): the first `beg_size` bytes of the whitespace-stripped
start of the file, padded at the end, then the last `end_size` bytes of the stripped end, padded at the start,
with `padding_token`. The files are sources that ship with Python itself and the onnxruntime wheel, so the
samples are real content of known types (Python, JSON, ELF, zip).
silero-vad: 512-sample chunks at 16 kHz of a synthetic voiced signal and of silence, with zero state.
"""
import json
import os
import struct
import sys
import sysconfig
import zipfile

import numpy as np

def write_safetensors(path, tensors):
    dtypes = {np.dtype("int32"): "I32", np.dtype("float32"): "F32", np.dtype("int64"): "I64"}
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtypes[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def magika_features(content, cfg):
    beg, end, pad, block = cfg["beg_size"], cfg["end_size"], cfg["padding_token"], cfg["block_size"]
    head = content[:block].lstrip()[:beg]
    tail = content[-block:].rstrip()[-end:] if content else b""
    feat = list(head) + [pad] * (beg - len(head)) + [pad] * (end - len(tail)) + list(tail)
    return np.array([feat], dtype=np.int32)


def main(cache):
    cfg = json.load(open(os.path.join(cache, "models/magika/config.min.json")))
    stdlib = sysconfig.get_paths()["stdlib"]
    wheel = sorted(f for f in os.listdir(os.path.join(cache, "wheels")) if f.startswith("onnxruntime-"))[0]
    with zipfile.ZipFile(os.path.join(cache, "wheels", wheel)) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA")))
    files = {
        "python": open(os.path.join(stdlib, "json", "decoder.py"), "rb").read(),
        "json": json.dumps({"name": "edgefleet", "models": ["magika", "silero-vad"], "waves": [1, 10, 50, 100]}, indent=2).encode() * 8,
        "elf": open(sys.executable, "rb").read(1 << 20),
        "zip": open(os.path.join(cache, "wheels", wheel), "rb").read(1 << 16),
        "text": meta,
    }
    write_safetensors(os.path.join(cache, "samples/magika.safetensors"),
                      {f"{case}/bytes": magika_features(content, cfg) for case, content in files.items()})

    t = np.arange(512, dtype=np.float32) / 16000.0
    voiced = (0.4 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    rng = np.random.default_rng(7)
    cases = {"voiced": voiced[None, :], "silence": np.zeros((1, 512), np.float32),
             "noise": (0.05 * rng.standard_normal((1, 512))).astype(np.float32)}
    tensors = {}
    for case, x in cases.items():
        tensors[f"{case}/input"] = x
        tensors[f"{case}/state"] = np.zeros((2, 1, 128), np.float32)
        tensors[f"{case}/sr"] = np.array(16000, dtype=np.int64)
    write_safetensors(os.path.join(cache, "samples/silero_vad.safetensors"), tensors)
    print("samples: written", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
