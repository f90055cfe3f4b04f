#!/usr/bin/env bash
# Benchmark: check-ins per second and their latency with a large simulated fleet against a release build of
# edgefleet-server on SQLite, on loopback. The enrolled identities are kept in build/bench-sim/identities.jsonl,
# so a second run with the same DEVICES skips enrollment.
#
#   DEVICES=10000 SECS=60 scripts/bench_sim.sh
#   DEVICES=1000000 SECS=600 CONCURRENCY=256 scripts/bench_sim.sh     # issue 7's full-scale row
#   SLOWLORIS=5000 DEVICES=10000 SECS=60 scripts/bench_sim.sh   # and 5,000 idle connections held meanwhile
#   CONVERGE=1 DEVICES=10000 scripts/bench_sim.sh   # every device long-polls; a new magika release (packed from
#                                                   # .cache/, scripts/setup.sh) is assigned; time to 99 % received
#   MEMORY=1 DEVICES=1000000 scripts/bench_sim.sh   # the server's RSS after enrolling the fleet, after every device
#                                                   # checked in and exported once, and after every one is revoked
#                                                   # (and refused at its next check-in); a fresh server each time
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-10000}
SECS=${SECS:-60}
CONCURRENCY=${CONCURRENCY:-64}
# The request budget must not end the run before SECS do (the simulator's default is 10,000,000).
MAX_REQUESTS=${MAX_REQUESTS:-100000000}
cargo build --release --quiet --bin edgefleet --bin edgefleet-server --bin edgefleet-sim
E="$PWD/target/release/edgefleet"
S="$PWD/target/release/edgefleet-server"
SIM="$PWD/target/release/edgefleet-sim"
D="$PWD/build/bench-sim"
mkdir -p "$D" && cd "$D"
# MEMORY revokes its whole fleet: it never reuses a database or identities.
[ -n "${MEMORY:-}" ] && rm -rf "server-$DEVICES" "identities-$DEVICES.jsonl"
if [ ! -s "server-$DEVICES/edgefleet.db" ] || [ ! -s "identities-$DEVICES.jsonl" ]; then
  rm -rf "server-$DEVICES" "identities-$DEVICES.jsonl"
  [ -s root.json ] || {
    for k in root fleet alice; do "$E" keys generate -o "$k.key" >/dev/null; done
    "$E" trust init --root-key root.pub --release-key alice.pub --release-threshold 1 --fleet-key fleet.pub -o root.json >/dev/null
    "$E" trust sign root.json --key root.key >/dev/null
  }
fi
export EDGEFLEET_DATA_DIR="$D/server-$DEVICES" EDGEFLEET_TRUST_ROOT="$D/root.json" EDGEFLEET_FLEET_KEY="$D/fleet.key"
operator=$("$S" token create --name "bench-$(date +%s)" --role operator)
# The simulator runs sessions of 100 check-ins back to back on one device (a load generator's shortcut, not a
# device's behaviour) and enrolls its whole fleet from one address: those limits are lifted for it.
printf 'checkins_per_sec = 1e9\ncheckin_burst = 1e9\nenrollments_per_sec = 1e9\nenrollment_burst = 1e9\n' > server.toml
EDGEFLEET_CONFIG=server.toml EDGEFLEET_LISTEN=127.0.0.1:0 RUST_LOG=warn "$S" serve > server.log 2>&1 &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do grep -q fingerprint server.log 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^edgefleet-server listening on //p' server.log)
if [ -n "${CONVERGE:-}" ]; then
  # A release nobody has yet (its version the time of day, so every run assigns something new).
  v=$(date +%s)
  C="$(cd ../.. && pwd)/.cache"
  export EDGEFLEET_CLI_CONFIG="$D/login.json" EDGEFLEET_ORT_LIB="$C/lib/libonnxruntime.so.1.31.1"
  "$E" login --server "$url" --token "$("$S" token create --name "bench-pub-$v" --role publisher)" \
    --fingerprint "$(sed -n 's/.*fingerprint //p' server.log)" >/dev/null
  "$E" release pack --model magika --version "$v" --variant "id=cpu,file=$C/models/magika/model.onnx,precision=fp32" \
    --samples "$C/samples/magika.safetensors" -o "magika-$v" >/dev/null
  "$E" release sign "magika-$v" --key alice.key >/dev/null
  "$E" release push "magika-$v" >/dev/null
  "$SIM" --server "$url" --server-ca "$EDGEFLEET_DATA_DIR/tls/server.crt" --token "$operator" \
    --devices "$DEVICES" --concurrency "$CONCURRENCY" --duration-secs "$SECS" --identities "identities-$DEVICES.jsonl" \
    --converge-to "magika:$v"
  exit
fi
rss() { echo "server RSS $1: $(awk '/^VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/$server_pid/status"), peak $(awk '/^VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$server_pid/status")"; }
if [ -n "${MEMORY:-}" ]; then
  sim() { "$SIM" --server "$url" --server-ca "$EDGEFLEET_DATA_DIR/tls/server.crt" --token "$operator" \
    --devices "$DEVICES" --concurrency "$CONCURRENCY" --identities "identities-$DEVICES.jsonl" "$@"; }
  rss "at start"
  sim --max-requests 0
  rss "after $DEVICES devices enrolled"
  # Devices are visited in turn: one check-in and one OTLP export each (a series per device).
  sim --max-requests $((2 * DEVICES)) --duration-secs 7200 --session-checkins 1 --otlp-every 1 --event-every 0
  rss "after every device checked in and exported"
  sim --max-requests 0 --duration-secs 7200 --revoke-all
  rss "after every device was revoked and refused"
  exit
fi
if [ -n "${SLOWLORIS:-}" ]; then
  # SLOWLORIS=5000: that many idle connections held against the server for the whole run (scripts/slowloris.py).
  python3 ../../scripts/slowloris.py "${url#https://}" "$SLOWLORIS" "$((SECS + 600))" &
  slowloris_pid=$!
  sleep 5
fi
"$SIM" --server "$url" --server-ca "$EDGEFLEET_DATA_DIR/tls/server.crt" --token "$operator" \
  --devices "$DEVICES" --concurrency "$CONCURRENCY" --duration-secs "$SECS" --identities "identities-$DEVICES.jsonl" \
  --max-requests "$MAX_REQUESTS" \
  --session-checkins 100 --otlp-every 20 --event-every 100 --malformed-rate 0.001 --bad-cert-attempts 20 --flood-devices 2
if [ -n "${SLOWLORIS:-}" ]; then kill -TERM "$slowloris_pid"; wait "$slowloris_pid" || true; fi
# The server's memory after every device checked in, exported and reported (its per-device caches full).
rss "after the run"
