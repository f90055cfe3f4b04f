"""A steady streaming load on edgefleet daemons' OpenAI-compatible APIs, for a bounded time.

Usage: chat_load.py URL[,URL...] MODEL SECONDS
One client per daemon streams short chats one after another until SECONDS have passed. Prints how many
streams each release answered and how many failed; exits 1 if any failed. Standard library only.
"""
import collections
import json
import sys
import threading
import time
import urllib.request

urls, model, seconds = sys.argv[1].split(","), sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + seconds
answered = collections.Counter()
failures = []
lock = threading.Lock()


def client(url, n):
    i = 0
    while time.monotonic() < deadline and i < 10_000:
        i += 1
        body = json.dumps({"model": model, "stream": True, "max_tokens": 16, "temperature": 0.7, "seed": i,
                           "messages": [{"role": "user", "content": "Give me a fact about the number %d." % (i + n)}]}).encode()
        req = urllib.request.Request(url.rstrip("/") + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                release = resp.headers.get("x-edgefleet-release")
                text = resp.read().decode()
            ok = text.endswith("data: [DONE]\n\n") and '"error"' not in text
        except Exception as e:  # a refused or broken stream is what this counts
            ok, release, text = False, None, str(e)
        with lock:
            if ok:
                answered[release] += 1
            else:
                failures.append(text[:200])


threads = [threading.Thread(target=client, args=(u, n)) for n, u in enumerate(urls)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("   streams answered by release: %s; failed: %d" % (", ".join("%s: %d" % kv for kv in sorted(answered.items())), len(failures)))
for f in failures[:3]:
    print("   failure: %s" % f)
sys.exit(1 if failures else 0)
