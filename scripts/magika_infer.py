"""Asks an edgefleet-daemon's v2 API what type of file each argument is, the way a device's app would:
magika's features (config.min.json of standard_v3_3) as an INT32 tensor, POST /v2/models/magika/infer."""
import json
import sys
import urllib.request

url, config, files = sys.argv[1], sys.argv[2], sys.argv[3:]
cfg = json.load(open(config))
beg, end, pad, block = cfg["beg_size"], cfg["end_size"], cfg["padding_token"], cfg["block_size"]
for path in files:
    content = open(path, "rb").read()
    head = content[:block].lstrip()[:beg]
    tail = content[-block:].rstrip()[-end:] if content else b""
    features = list(head) + [pad] * (beg - len(head)) + [pad] * (end - len(tail)) + list(tail)
    body = json.dumps({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": features}]})
    req = urllib.request.Request(f"{url}/v2/models/magika/infer", body.encode(), {"Content-Type": "application/json"})
    answer = json.load(urllib.request.urlopen(req, timeout=30))
    scores = answer["outputs"][0]["data"]
    best = max(range(len(scores)), key=scores.__getitem__)
    print(f"   {path}: {cfg['target_labels_space'][best]} ({scores[best]:.2f}), release {answer['model_version']}")
