#!/usr/bin/env bash
# Benchmark: check-ins per second and their latency with a large simulated fleet against a release build of
# edgefleet-server on SQLite, on loopback. The enrolled identities are kept in build/bench-sim/identities.jsonl,
# so a second run with the same DEVICES skips enrollment.
#
#   DEVICES=10000 SECS=60 scripts/bench_sim.sh
#   DEVICES=1000000 SECS=600 CONCURRENCY=256 scripts/bench_sim.sh     # issue 7's full-scale row
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-10000}
SECS=${SECS:-60}
CONCURRENCY=${CONCURRENCY:-64}
cargo build --release --quiet --bin edgefleet --bin edgefleet-server --bin edgefleet-sim
E="$PWD/target/release/edgefleet"
S="$PWD/target/release/edgefleet-server"
SIM="$PWD/target/release/edgefleet-sim"
D="$PWD/build/bench-sim"
mkdir -p "$D" && cd "$D"
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
EDGEFLEET_LISTEN=127.0.0.1:0 RUST_LOG=warn "$S" serve > server.log 2>&1 &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do grep -q fingerprint server.log 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^edgefleet-server listening on //p' server.log)
"$SIM" --server "$url" --server-ca "$EDGEFLEET_DATA_DIR/tls/server.crt" --token "$operator" \
  --devices "$DEVICES" --concurrency "$CONCURRENCY" --duration-secs "$SECS" --identities "identities-$DEVICES.jsonl" \
  --session-checkins 100 --otlp-every 20 --event-every 100 --malformed-rate 0.001 --bad-cert-attempts 20 --flood-devices 2
