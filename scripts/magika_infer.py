"""Asks edgefleet-daemons' v2 API what type of file each argument is, the way a device's app would: magika's
features (config.min.json of standard_v3_3) as an INT32 tensor, POST /v2/models/magika/infer.

    magika_infer.py URL[,URL...] CONFIG FILE...                 one answer per device and file
    magika_infer.py URL[,URL...] CONFIG FILE... --for-secs N    a steady load (about 20 requests a second in
                                                                all, bounded by N seconds), then a summary;
                                                                exits 1 if any request failed
"""
import json
import sys
import time
import urllib.request

args = sys.argv[1:]
for_secs = None
if "--for-secs" in args:
    i = args.index("--for-secs")
    for_secs = float(args[i + 1])
    del args[i : i + 2]
urls, config, files = args[0].split(","), args[1], args[2:]
cfg = json.load(open(config))
beg, end, pad, block = cfg["beg_size"], cfg["end_size"], cfg["padding_token"], cfg["block_size"]


def features(path):
    content = open(path, "rb").read()
    head = content[:block].lstrip()[:beg]
    tail = content[-block:].rstrip()[-end:] if content else b""
    return list(head) + [pad] * (beg - len(head)) + [pad] * (end - len(tail)) + list(tail)


def infer(url, feats):
    body = json.dumps({"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": feats}]})
    req = urllib.request.Request(f"{url}/v2/models/magika/infer", body.encode(), {"Content-Type": "application/json"})
    answer = json.load(urllib.request.urlopen(req, timeout=30))
    scores = answer["outputs"][0]["data"]
    best = max(range(len(scores)), key=scores.__getitem__)
    return cfg["target_labels_space"][best], scores[best], answer["model_version"]


inputs = [(path, features(path)) for path in files]
if for_secs is None:
    for url in urls:
        for path, feats in inputs:
            label, score, release = infer(url, feats)
            print(f"   {url} {path}: {label} ({score:.2f}), release {release}")
    sys.exit(0)

sent, failed, deadline = 0, 0, time.monotonic() + for_secs
while time.monotonic() < deadline and sent < 100_000:
    url, (path, feats) = urls[sent % len(urls)], inputs[sent % len(inputs)]
    sent += 1
    try:
        infer(url, feats)
    except Exception as e:  # noqa: BLE001 - every failure is counted and the first few shown
        failed += 1
        if failed <= 3:
            print(f"   request to {url} failed: {e}", file=sys.stderr)
    time.sleep(0.05)
print(f"   load: {sent} requests over {len(urls)} devices, {failed} failed")
sys.exit(1 if failed else 0)
