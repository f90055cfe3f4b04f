#!/usr/bin/env bash
# Benchmark: the dashboard's fleet page with 100,000 devices (or $DEVICES) in the server's SQLite database.
# Seeds the devices straight into the database (enrollment itself is measured elsewhere), starts the release
# server on loopback, and times in Debian's headless Chromium how long the fleet page takes from a reload to
# usable (overview numbers and the first 50 table rows drawn). Prints the times and the API calls' own times.
#
#   scripts/bench_dashboard.sh            # 100,000 devices, 7 reloads
#   DEVICES=1000000 scripts/bench_dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-100000}
scripts/setup.sh
cargo build --release --quiet --bin edgefleet --bin edgefleet-server
E="$PWD/target/release/edgefleet"
S="$PWD/target/release/edgefleet-server"
D="$PWD/build/bench-dashboard"
rm -rf "$D" && mkdir -p "$D" && cd "$D"
"$E" keys generate -o root.key >/dev/null && "$E" keys generate -o fleet.key >/dev/null
"$E" keys generate -o alice.key >/dev/null
"$E" trust init --root-key root.pub --release-key alice.pub --release-threshold 1 --fleet-key fleet.pub -o root.json >/dev/null
"$E" trust sign root.json --key root.key >/dev/null
export EDGEFLEET_DATA_DIR="$D/server" EDGEFLEET_TRUST_ROOT="$D/root.json" EDGEFLEET_FLEET_KEY="$D/fleet.key"
viewer=$("$S" token create --name bench-viewer --role viewer)
echo "bench: seeding $DEVICES devices into $EDGEFLEET_DATA_DIR/edgefleet.db" >&2
python3 - "$EDGEFLEET_DATA_DIR/edgefleet.db" "$DEVICES" <<'PY'
import json, sqlite3, sys, time
db, n = sys.argv[1], int(sys.argv[2])
now = int(time.time() * 1000)
classes = ["qualcomm-hexagon", "nvidia-jetson", "intel-npu", "raspberry-pi", "x86-server"]
con = sqlite3.connect(db)
def rows():
    for i in range(n):
        cls = classes[i % len(classes)]
        rel = 1 if i % 10 else 2
        report = {"models": [{"model": "magika", "active": {"slot": "a", "release": rel, "variant": "cpu",
                  "provider": "CPUExecutionProvider", "state": "committed"}}]}
        if i % 97 == 0:
            report["last_error"] = "golden vectors failed"
        hw = {"device_class": cls, "arch": "aarch64", "execution_providers": ["CPUExecutionProvider"],
              "memory_bytes": 8 << 30, "soc": [], "power": "unavailable"}
        seen = None if i % 50 == 0 else now - (10_000 if i % 8 else 3_600_000)
        labels = {"site": f"site-{i % 40}"}
        yield (f"dev-{i:07d}", json.dumps(labels), cls, json.dumps(hw), f"{i:x}", now, seen,
               json.dumps(report) if seen else None, int(seen is not None and "last_error" in report), labels, rel)
with con:
    batch = list(rows())
    con.executemany("INSERT INTO devices (id, labels, device_class, hardware, cert_serial, enrolled_at, last_seen, "
                    "report, failing) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [r[:9] for r in batch])
    con.executemany("INSERT INTO device_labels (device_id, key, value) VALUES (?, 'site', ?)",
                    [(r[0], r[9]["site"]) for r in batch])
    # What the server keeps beside each report (as it does when a device checks in).
    con.executemany("INSERT INTO device_running (device_id, model, release) VALUES (?, 'magika', ?)",
                    [(r[0], r[10]) for r in batch if r[7]])
con.close()
PY
EDGEFLEET_LISTEN=127.0.0.1:0 RUST_LOG=warn "$S" serve > server.log 2>&1 &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do grep -q fingerprint server.log 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^edgefleet-server listening on //p' server.log)
time_api() { # path: median of 5 calls, in ms
  for _ in 1 2 3 4 5; do
    curl -s -o /dev/null -w '%{time_total}\n' --cacert server/tls/server.crt -H "authorization: Bearer $viewer" "$url$1"
  done | sort -n | sed -n 3p | awk '{printf "%.1f ms", $1 * 1000}'
}
echo "bench: GET /api/v1/fleet               median $(time_api /api/v1/fleet)"
echo "bench: GET /api/v1/devices?limit=50    median $(time_api '/api/v1/devices?limit=50')"
echo "bench: GET /api/v1/devices?q=dev-00999&limit=50 median $(time_api '/api/v1/devices?q=dev-00999&limit=50')"
echo "bench: GET /api/v1/devices?selector=site=site-7&limit=50 median $(time_api '/api/v1/devices?selector=site%3Dsite-7&limit=50')"
cd "$OLDPWD/dashboards/web"
EDGEFLEET_URL="$url" EDGEFLEET_VIEWER_TOKEN="$viewer" node tests/fleet-timing.mjs
