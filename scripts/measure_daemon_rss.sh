#!/usr/bin/env bash
# Measures the resident memory of a real edgefleet-daemon process: enrolled and checking in with nothing
# assigned (ONNX Runtime not loaded), then serving magika. For BENCHMARKS.md. Loopback only; stops itself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet --bin edgefleet --bin edgefleet-server --bin edgefleet-daemon
T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$T"' EXIT
E="$PWD/target/release/edgefleet"; S="$PWD/target/release/edgefleet-server"; D="$PWD/target/release/edgefleet-daemon"
C="$PWD/.cache"
cd "$T"
for k in root alice fleet; do "$E" keys generate -o $k.key >/dev/null; done
"$E" trust init --root-key root.pub --release-key alice.pub --fleet-key fleet.pub -o root.json >/dev/null
"$E" trust sign root.json --key root.key >/dev/null
EDGEFLEET_DATA_DIR=srv EDGEFLEET_TRUST_ROOT=root.json EDGEFLEET_FLEET_KEY=fleet.key EDGEFLEET_LISTEN=127.0.0.1:0 \
  RUST_LOG=warn "$S" serve > server.log 2>&1 &
for _ in $(seq 1 100); do grep -q fingerprint server.log 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^edgefleet-server listening on //p' server.log); fp=$(sed -n 's/.*fingerprint //p' server.log)
export EDGEFLEET_CLI_CONFIG="$T/login.json"
"$E" login --server "$url" --token "$(EDGEFLEET_DATA_DIR=srv "$S" token create --name m --role admin)" --fingerprint "$fp" >/dev/null
token=$("$E" --json enroll-token create --label site=lab | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
mkdir -p hw/proc && printf 'processor\t: 0\nflags\t\t: avx2 avx512f\n' > hw/proc/cpuinfo && printf 'MemTotal: 8000000 kB\n' > hw/proc/meminfo
RUST_LOG=warn "$D" --hardware-root hw run --server "$url" --server-ca srv/tls/server.crt --data-dir dev --trust-root root.json \
  --device-id rss-1 --enroll-token "$token" --ort-lib "$C/lib/libonnxruntime.so.1.31.1" --listen 127.0.0.1:0 --wait 2 --bake-secs 1 > daemon.log 2>&1 &
dpid=$!
sleep 8
rss() { awk '/VmRSS/ {r=$2} /RssAnon/ {a=$2} /RssFile/ {f=$2} END {printf "%.1f MiB (anonymous %.1f, file-backed %.1f)", r/1024, a/1024, f/1024}' /proc/$dpid/status; }
echo "daemon enrolled and checking in, nothing assigned (ONNX Runtime not loaded): $(rss)"
"$E" release pack --model magika --version 1 --variant "id=cpu-fp32,file=$C/models/magika/model.onnx,precision=fp32" \
  --samples "$C/samples/magika.safetensors" -o magika-1 --ort-lib "$C/lib/libonnxruntime.so.1.31.1" >/dev/null
"$E" release sign magika-1 --key alice.key >/dev/null && "$E" release push magika-1 >/dev/null
"$E" assign magika 1 --selector site=lab >/dev/null
for _ in $(seq 1 300); do grep -q '"magika"' dev/state.json 2>/dev/null && break; sleep 0.2; done
sleep 2
echo "daemon serving magika (2 sessions): $(rss)"
