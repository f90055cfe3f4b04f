"""Streams one chat from an edgefleet daemon's OpenAI-compatible API and shows the tokens as they arrive.

Usage: chat_stream.py URL MODEL PROMPT [LABEL]
Prints the answer as it streams, then the release and variant that answered, the time to first token and
the decoding speed. Standard library only.
"""
import json
import sys
import time
import urllib.request

url, model, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
label = sys.argv[4] if len(sys.argv) > 4 else url
body = json.dumps({"model": model, "stream": True, "max_tokens": 48, "temperature": 0,
                   "messages": [{"role": "user", "content": prompt}]}).encode()
req = urllib.request.Request(url.rstrip("/") + "/v1/chat/completions", data=body,
                             headers={"content-type": "application/json"})
start = time.monotonic()
first = last = None
pieces = 0
sys.stdout.write("   %s> " % label)
with urllib.request.urlopen(req, timeout=120) as resp:
    release, variant = resp.headers.get("x-edgefleet-release"), resp.headers.get("x-edgefleet-variant")
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            sys.exit("generation failed: %s" % chunk["error"]["message"])
        for choice in chunk["choices"]:
            text = choice["delta"].get("content")
            if text:
                now = time.monotonic()
                first = first or now
                last = now
                pieces += 1
                sys.stdout.write(text.replace("\n", " "))
                sys.stdout.flush()
ttft = (first - start) * 1000 if first else float("nan")
speed = (pieces - 1) / (last - first) if first and last and last > first else float("nan")
print("\n   %s  [release %s, %s: first token after %.0f ms, then %.1f tokens/s]" % (" " * len(label), release, variant, ttft, speed))
