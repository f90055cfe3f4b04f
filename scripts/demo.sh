#!/usr/bin/env bash
# The edgefleet demo, on real models with real ONNX Runtime: keys and a trust root, magika and silero-vad packed
# into signed releases with fp32 and int8 variants, verified, golden-checked, then attacked and refused, and the
# root rotated to revoke a release key. Everything it makes is under build/demo/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet --bin edgefleet --bin edgefleet-server --bin edgefleet-daemon
E="$PWD/target/release/edgefleet"
S="$PWD/target/release/edgefleet-server"
DAEMON="$PWD/target/release/edgefleet-daemon"
REPO="$PWD"
export EDGEFLEET_ORT_LIB="$PWD/.cache/lib/libonnxruntime.so.1.31.1"
C="$PWD/.cache"
D=build/demo
rm -rf "$D"
mkdir -p "$D"
cd "$D"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
refused() { # runs a command that must be refused; shows why
  if "$@" 2>refusal.txt; then echo "!! accepted, but should have been refused" >&2; exit 1; fi
  sed 's/^/   /' refusal.txt
}

step "Keys: one offline root key, two ML engineers (alice, bob), the control plane's fleet key"
for k in root alice bob fleet; do "$E" --json keys generate -o "$k.key" | python3 -c 'import json,sys; k=json.load(sys.stdin); print("   %s  %s" % (k["keyid"][:16], k["private"]))'; done
ls -l ./*.key | awk '{print "   " $1 " " $NF}'

step "Trust root: release manifests need BOTH alice and bob (threshold 2)"
"$E" trust init --root-key root.pub --release-key alice.pub --release-key bob.pub --release-threshold 2 \
  --fleet-key fleet.pub -o root.json
"$E" trust sign root.json --key root.key
"$E" trust show root.json

step "Pack magika (file-type detection): fp32 and int8 variants, golden vectors from real files"
"$E" release pack --model magika --version 1 --description "magika standard_v3_3" \
  --variant "id=cpu-fp32,file=$C/models/magika/model.onnx,precision=fp32,providers=CPUExecutionProvider" \
  --variant "id=cpu-int8,file=$C/models/magika/model-int8.onnx,precision=int8,providers=CPUExecutionProvider,arch=x86_64+aarch64" \
  --samples "$C/samples/magika.safetensors" -o magika-1

step "Pack silero-vad (voice activity): the recurrent state is left out of the int8 check, the probability is held to 0.01"
"$E" release pack --model silero-vad --version 1 --description "silero-vad 16 kHz; int8 checks output only" \
  --variant "id=cpu-fp32,file=$C/models/silero_vad.onnx,precision=fp32" \
  --variant "id=cpu-int8,file=$C/models/silero_vad-int8.onnx,precision=int8" \
  --tolerance int8:stateN=skip --tolerance output=max_abs:0.01 \
  --samples "$C/samples/silero_vad.safetensors" -o silero-vad-1

step "Sign: alice alone is not enough"
"$E" release sign magika-1 --key alice.key
refused "$E" release verify magika-1 --root root.json
"$E" release sign magika-1 --key bob.key
"$E" release sign silero-vad-1 --key alice.key --key bob.key

step "Verify: signatures against the root, then every blob streamed through its signed digests"
"$E" release verify magika-1 --root root.json
"$E" release verify silero-vad-1 --root root.json

step "Golden vectors: the int8 variants run on this machine, against fp32's reference outputs"
"$E" release golden magika-1 --variant cpu-int8
"$E" release golden silero-vad-1 --variant cpu-int8

step "Attack: one byte flipped in a model blob"
cp -r magika-1 tampered
blob=$(python3 -c 'import json;print(json.load(open("tampered/manifest.json"))["signed"]["variants"][1]["zstd"]["sha256"])')
python3 - "tampered/blobs/$blob" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 1; open(p, "wb").write(b)
PY
refused "$E" release verify tampered --root root.json

step "Attack: the manifest edited after signing (a new description)"
cp -r magika-1 edited
python3 - <<'PY'
import json
m = json.load(open("edited/manifest.json")); m["signed"]["description"] = "totally safe"
json.dump(m, open("edited/manifest.json", "w"))
PY
refused "$E" release verify edited --root root.json

step "Attack: a device that has seen security floor 2 is offered release 1"
refused "$E" release verify magika-1 --root root.json --floor 2

step "Root rotation: bob's key is revoked, carol's added (root v2, signed by the root key)"
"$E" keys generate -o carol.key
"$E" trust rotate --from root.json --revoke bob.pub --add-release-key carol.pub -o root-2.json
"$E" trust sign root-2.json --key root.key
"$E" trust verify --trusted root.json root-2.json
echo "   release 1 was signed by alice and bob; under root v2 bob no longer counts:"
refused "$E" release verify magika-1 --root root.json --chain root-2.json
"$E" release sign magika-1 --key carol.key
"$E" release verify magika-1 --root root.json --chain root-2.json

step "Control plane: edgefleet-server on SQLite in build/demo/server (self-signed TLS, device CA made at first start)"
export EDGEFLEET_DATA_DIR="$PWD/server" EDGEFLEET_TRUST_ROOT="$PWD/root.json" EDGEFLEET_FLEET_KEY="$PWD/fleet.key"
EDGEFLEET_LISTEN=127.0.0.1:0 RUST_LOG=warn "$S" serve > server.log 2>&1 &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q fingerprint server.log 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^edgefleet-server listening on //p' server.log)
fingerprint=$(sed -n 's/.*fingerprint //p' server.log)
sed 's/^/   /' server.log
admin=$("$S" token create --name demo-admin --role admin)
export EDGEFLEET_CLI_CONFIG="$PWD/login.json"
"$E" login --server "$url" --token "$admin" --fingerprint "$fingerprint"

step "Push: blobs first, then the manifest, which the server verifies against its own copy of the root"
"$E" release push magika-1
"$E" release push silero-vad-1
echo "   pushing the tampered copy is refused by the server too:"
refused "$E" release push edited
"$E" models
"$E" releases magika

step "Operate: a one-time enrollment token for EU devices, an assignment"
token=$("$E" --json enroll-token create --label region=eu | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
echo "   enrollment token ${token:0:16}... (one-time, labels region=eu)"
"$E" assign magika 1 --selector region=eu

step "A device: edgefleet-daemon on this very machine (hardware read from /), enrolls, installs, serves"
"$DAEMON" hardware | sed 's/^/   /'
RUST_LOG=warn "$DAEMON" run --server "$url" --server-ca server/tls/server.crt --data-dir device \
  --trust-root root.json --device-id demo-edge-1 --enroll-token "$token" --ort-lib "$EDGEFLEET_ORT_LIB" \
  --listen 127.0.0.1:0 --wait 2 --bake-secs 2 --metrics-interval-secs 2 > daemon.log 2>&1 &
daemon_pid=$!
trap 'kill $server_pid $daemon_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q "serving v2 on" daemon.log 2>/dev/null && break; sleep 0.1; done
v2=$(sed -n 's/^edgefleet-daemon serving v2 on //p' daemon.log)
for _ in $(seq 1 300); do curl -sf "$v2/v2/models/magika/ready" >/dev/null 2>&1 && break; sleep 0.2; done
echo "   v2 API at $v2; magika metadata:"
curl -s "$v2/v2/models/magika" | python3 -c 'import json,sys; e=json.load(sys.stdin)["edgefleet"]; print("   release %s, variant %s, slot %s, provider %s" % (e["release"], e["variant"], e["slot"], e["provider"]))'
echo "   inference requests, as an app on the device would send them:"
python3 "$REPO/scripts/magika_infer.py" "$v2" "$C/models/magika/config.min.json" \
  ../../scripts/make_samples.py ../../Cargo.toml ../../README.md root.json
# The release is committed once it survived its bake window.
for _ in $(seq 1 100); do grep -q '"magika"' device/state.json 2>/dev/null && break; sleep 0.1; done
"$DAEMON" status --data-dir device | sed 's/^/   /'
"$E" devices list

step "Telemetry: the device's OpenTelemetry metrics reached the control plane (what rollout gates judge)"
metrics() { curl -s --cacert server/tls/server.crt -H "authorization: Bearer $admin" "$url/metrics"; }
for _ in $(seq 1 100); do metrics | grep -q '^edgefleet_inference_requests_total{model="magika"' && break; sleep 0.2; done
echo "   from $url/metrics, as Prometheus scrapes it (dashboards/grafana has a dashboard for it):"
metrics | grep -E '^edgefleet_(devices|inference_requests_total|inference_latency_seconds|otlp_points_total)' | sed 's/^/   /'

step "The web dashboard: served by the control plane itself"
viewer=$("$S" token create --name demo-viewer --role viewer)
curl -sf --cacert server/tls/server.crt "$url/" | grep -q '<div id="app">' && echo "   $url/ serves the dashboard"
curl -sf --cacert server/tls/server.crt -H "authorization: Bearer $viewer" "$url/api/v1/fleet" \
  | python3 -c 'import json,sys; f=json.load(sys.stdin); print("   what its Fleet page shows: %d device(s), %d online, running %s" % (f["devices"], f["online"], ", ".join("%s release %d" % (r["model"], r["release"]) for r in f["by_release"])))'
echo "   open $url/ and sign in with the viewer token $viewer"
echo "   (the certificate is the server's own: build/demo/server/tls/server.crt, fingerprint $fingerprint)"

step "The audit log tells the story"
"$E" audit --limit 14
if [ "${KEEP:-}" = 1 ]; then
  echo "KEEP=1: the server and the device keep running for the dashboard; Ctrl-C stops them"
  wait $server_pid
fi
kill $daemon_pid $server_pid 2>/dev/null; wait $daemon_pid $server_pid 2>/dev/null || true
trap - EXIT

step "Done. Everything is in build/demo/ (the server's data in build/demo/server)"
