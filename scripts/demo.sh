#!/usr/bin/env bash
# The edgefleet demo, the whole lifecycle on real models with real ONNX Runtime: keys and a trust root, magika
# and silero-vad packed into signed releases with a variant per kind of hardware, verified, golden-checked,
# attacked and refused; a control plane on SQLite; three devices (a Snapdragon phone, a Jetson, a Raspberry Pi:
# real daemons on fixture files of those devices) that enroll, install the variant for their hardware and
# serve; release 2 rolled out in waves gated on the devices' own latency and energy; the root rotated to revoke
# a release key, reaching the running devices; then a language model on the same devices: SmolLM2 as release
# 1 of `chat`, a streamed chat on each, and Gemma 3 270M rolled out in waves gated on time to first token and
# tokens/s under a streaming load. Everything it makes is under build/demo/ (ignored by git).
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

step "Pack magika (file-type detection): a variant per kind of hardware, best first, golden vectors from real files"
pack_magika() { # version, description
  "$E" release pack --model magika --version "$1" --description "$2" \
    --variant "id=hexagon-int8,file=$C/models/magika/model-int8.onnx,precision=int8,providers=QNNExecutionProvider" \
    --variant "id=tensorrt-fp32,file=$C/models/magika/model.onnx,precision=fp32,providers=TensorrtExecutionProvider" \
    --variant "id=cpu-int8,file=$C/models/magika/model-int8.onnx,precision=int8,arch=x86_64+aarch64" \
    --variant "id=cpu-fp32,file=$C/models/magika/model.onnx,precision=fp32" \
    --reference "$C/models/magika/model.onnx" --samples "$C/samples/magika.safetensors" -o "magika-$1"
}
pack_magika 1 "magika standard_v3_3"

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
echo "   (root v2 stays on this desk for now: the control plane starts on root v1, and gets v2 at the end)"

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

step "Operate: magika release 1 assigned to the EU devices (each device enrolls below with a one-time token)"
"$E" assign magika 1 --selector region=eu

step "Three devices: real edgefleet-daemons, each on the files a real device shows (fixtures/hardware/)"
fixtures=(hexagon-phone jetson-agx-orin raspberry-pi-5)
urls=()
pids=()
trap 'kill $server_pid ${pids[*]} 2>/dev/null || true' EXIT
for f in "${fixtures[@]}"; do
  cp -r "$REPO/fixtures/hardware/$f" "hw-$f"
  labels=(--label region=eu)
  [ "$f" = hexagon-phone ] && labels+=(--label ring=canary)
  shown=$(printf '%s ' "${labels[@]}" | sed 's/--label //g')
  token=$("$E" --json enroll-token create "${labels[@]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  class=$("$DAEMON" --hardware-root "hw-$f" hardware --json | python3 -c 'import json,sys; p=json.load(sys.stdin)["profile"]; print("%s (%s; power: %s)" % (p["device_class"], ", ".join(p["execution_providers"]), p["power"]))')
  echo "   $f: $class; one-time token ${token:0:12}... labels $shown"
  RUST_LOG=warn "$DAEMON" --hardware-root "hw-$f" run --server "$url" --server-ca server/tls/server.crt \
    --data-dir "device-$f" --trust-root root.json --device-id "$f" --enroll-token "$token" \
    --ort-lib "$EDGEFLEET_ORT_LIB" --listen 127.0.0.1:0 --wait 2 --bake-secs 2 --metrics-interval-secs 2 \
    > "daemon-$f.log" 2>&1 &
  pids+=($!)
done
for f in "${fixtures[@]}"; do
  for _ in $(seq 1 100); do grep -q "serving v2 on" "daemon-$f.log" 2>/dev/null && break; sleep 0.1; done
  urls+=("$(sed -n 's/^edgefleet-daemon serving v2 on //p' "daemon-$f.log")")
done
all_urls=$(IFS=,; echo "${urls[*]}")
serving() { # release: waits until every device serves it
  for u in "${urls[@]}"; do
    for _ in $(seq 1 300); do
      curl -sf "$u/v2/models/magika" 2>/dev/null | grep -q "\"release\":$1[,}]" && break; sleep 0.2
    done
  done
}
serving 1
echo "   each device runs the variant for its hardware (this machine's ONNX Runtime is the CPU build, so an"
echo "   accelerator's provider is tried, found missing and fallen back from — and the device says so):"
for i in "${!fixtures[@]}"; do
  curl -s "${urls[$i]}/v2/models/magika" | python3 -c 'import json,sys; e=json.load(sys.stdin)["edgefleet"]; print("   %-16s release %s, variant %-14s on %s%s" % (sys.argv[1], e["release"], e["variant"], e["provider"], ("; " + "; ".join(e["fallbacks"])) if e["fallbacks"] else ""))' "${fixtures[$i]}"
done
echo "   inference requests, as an app on each device would send them:"
python3 "$REPO/scripts/magika_infer.py" "$all_urls" "$C/models/magika/config.min.json" ../../scripts/make_samples.py ../../README.md
"$E" devices list

step "Release 2, rolled out in waves: the canary phone, then half, then all — each wave gated on what devices report"
pack_magika 2 "magika standard_v3_3, release 2"
# alice and bob count under root v1; carol counts from v2 on, so release 2 stays valid across the rotation.
"$E" release sign magika-2 --key alice.key --key bob.key --key carol.key
"$E" release push magika-2
echo "   a steady load on the three devices (their OpenTelemetry metrics are what the gates judge):"
python3 "$REPO/scripts/magika_infer.py" "$all_urls" "$C/models/magika/config.min.json" \
  ../../scripts/make_samples.py ../../README.md ../../Cargo.toml --for-secs 150 &
load_pid=$!
sleep 12 # release 1's own numbers first: the baseline each class is compared with
rollout=$("$E" --json rollout create magika 2 --selector region=eu \
  --wave ring=canary:5s --wave 50:5s --wave 100:5s \
  --gate error-rate=0.02 --gate p95-ratio=3 --gate energy-ratio=3 --gate install-failures=0.1 \
  --min-samples 20 --on-failure rollback | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
last=""
for _ in $(seq 1 600); do
  now=$("$E" --json rollout status "$rollout" | python3 -c 'import json,sys; s=json.load(sys.stdin); st=s["state"]; print(st["state"] + (" wave %d" % (st["wave"] + 1) if "wave" in st else "") + (", %g %% of devices" % s["share_percent"]))')
  [ "$now" != "$last" ] && echo "   $(date +%T) $rollout: $now" && last=$now
  case "$now" in running*|paused*) sleep 0.5 ;; *) break ;; esac
done
"$E" rollout status "$rollout" | sed 's/^/   /'
case "$last" in done*) ;; *) echo "!! the rollout did not finish" >&2; exit 1 ;; esac
serving 2
kill $load_pid 2>/dev/null; wait $load_pid 2>/dev/null || true
python3 "$REPO/scripts/magika_infer.py" "$all_urls" "$C/models/magika/config.min.json" ../../scripts/make_samples.py

step "Telemetry: the devices' OpenTelemetry metrics, per release and class (what the gates judged)"
api() { curl -sf --cacert server/tls/server.crt -H "authorization: Bearer $admin" "$url$1"; }
api /api/v1/models/magika/telemetry | python3 -c '
import json, sys
rows = {}
for w in json.load(sys.stdin)["windows"]:
    r = rows.setdefault((w["release"], w["device_class"]), {"requests": 0, "p95": [], "j": []})
    r["requests"] += w["requests"]
    if w["p95_ms"] is not None: r["p95"].append(w["p95_ms"])
    if w["joules_per_inference"] is not None: r["j"].append(w["joules_per_inference"])
for (release, cls), r in sorted(rows.items()):
    p95 = "p95 %.1f ms" % max(r["p95"]) if r["p95"] else "no latency"
    j = "%.3f J/inference" % (sum(r["j"]) / len(r["j"])) if r["j"] else "no power sensor: no energy figure"
    print("   release %d on %-17s %5d requests, %s, %s" % (release, cls, r["requests"], p95, j))'
echo "   and at $url/metrics, as Prometheus scrapes it (dashboards/grafana has a dashboard for it):"
api /metrics | grep -E '^edgefleet_(devices|inference_requests_total)' | sed 's/^/   /'

step "Root rotation reaches the running fleet: root v2 (bob revoked, carol added) handed to the control plane"
"$E" trust push root-2.json
for f in "${fixtures[@]}"; do
  for _ in $(seq 1 100); do
    [ "$("$E" --json devices show "$f" | python3 -c 'import json,sys; print(json.load(sys.stdin)["report"].get("root_version"))')" = 2 ] && break
    sleep 0.2
  done
  echo "   $f verifies with root version $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["signed"]["version"])' "device-$f/trust/root.json") (no restart)"
done
echo "   a release only bob signed is refused now:"
pack_magika 3 "signed by bob alone" >/dev/null
"$E" release sign magika-3 --key bob.key
refused "$E" release push magika-3

step "A language model on the same devices: SmolLM2-135M-Instruct (Q4_1 GGUF) as release 1 of \"chat\""
prompts="$REPO/fixtures/llm/golden-prompts.json"
"$E" release pack --model chat --version 1 --context-length 1024 \
  --variant "id=cpu-q4-1,file=$C/models/llm/smollm2-135m-instruct-q4_1.gguf,precision=q4_1" \
  --samples "$prompts" --description "SmolLM2-135M-Instruct Q4_1" -o chat-1
"$E" release sign chat-1 --key alice.key --key bob.key --key carol.key
"$E" release push chat-1
"$E" assign chat 1 --selector region=eu
llm_serving() { # release: waits until every device's /v1/models says it serves it
  for u in "${urls[@]}"; do
    for _ in $(seq 1 600); do
      curl -sf "$u/v1/models" 2>/dev/null | grep -q "\"release\":$1[,}]" && break; sleep 0.2
    done
  done
}
llm_serving 1
echo "   each device installed it through the same verified pipeline and golden-checked it (teacher-forced);"
echo "   a chat on each, streamed over its OpenAI-compatible API:"
for i in "${!fixtures[@]}"; do
  python3 "$REPO/scripts/chat_stream.py" "${urls[$i]}" chat "What is the capital of France?" "${fixtures[$i]}"
done

step "Gemma 3 270M (Q4_K_M) as chat release 2, rolled out in waves gated on time to first token and tokens/s"
"$E" release pack --model chat --version 2 --context-length 1024 \
  --variant "id=cpu-q4-k-m,file=$C/models/llm/gemma-3-270m-q4_k_m.gguf,precision=q4_k_m,chat-template=gemma" \
  --samples "$prompts" --description "Gemma 3 270M Q4_K_M (twice SmolLM2's parameters)" -o chat-2
"$E" release sign chat-2 --key alice.key --key bob.key --key carol.key
"$E" release push chat-2
echo "   a streaming load on the three devices for the whole rollout (every stream must complete):"
python3 "$REPO/scripts/chat_load.py" "$all_urls" chat 300 > chat-load.txt &
chat_load_pid=$!
sleep 15 # release 1's own numbers first
echo "   Gemma has twice the parameters: the gates allow its first token 8x and each token 5x SmolLM2's under"
echo "   this load, no more; each wave bakes 30 s and, longer if need be, until every device class it reached has"
echo "   reported enough streams of Gemma to judge"
rollout=$("$E" --json rollout create chat 2 --selector region=eu \
  --wave ring=canary:30s --wave 50:30s --wave 100:30s \
  --gate ttft-ratio=8 --gate tpot-ratio=5 --gate error-rate=0.02 --gate install-failures=0.1 \
  --min-samples 5 --on-failure rollback | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
last=""
for _ in $(seq 1 900); do
  now=$("$E" --json rollout status "$rollout" | python3 -c 'import json,sys; s=json.load(sys.stdin); st=s["state"]; print(st["state"] + (" wave %d" % (st["wave"] + 1) if "wave" in st else "") + (", %g %% of devices" % s["share_percent"]))')
  [ "$now" != "$last" ] && echo "   $(date +%T) $rollout: $now" && last=$now
  case "$now" in running*|paused*) sleep 0.5 ;; *) break ;; esac
done
"$E" rollout status "$rollout" | sed 's/^/   /'
case "$last" in done*) ;; *) echo "!! the language-model rollout did not finish" >&2; exit 1 ;; esac
llm_serving 2
wait $chat_load_pid || { cat chat-load.txt; echo "!! streams failed during the rollout" >&2; exit 1; }
cat chat-load.txt
echo "   (this Gemma GGUF is the pretrained 270M model, not the instruction-tuned one — it carries no chat template"
echo "   and continues text rather than answering; the release pipeline, gates and serving are the same)"
for i in "${!fixtures[@]}"; do
  python3 "$REPO/scripts/chat_stream.py" "${urls[$i]}" chat "What is the capital of France?" "${fixtures[$i]}"
done
echo "   per release and class, what the gates judged (joules per token only where a sensor exists):"
api /api/v1/models/chat/telemetry | python3 -c '
import json, sys
rows = {}
for w in json.load(sys.stdin)["windows"]:
    l = w.get("llm")
    if not l: continue
    r = rows.setdefault((w["release"], w["device_class"]), {"ttft": [], "tps": [], "j": [], "out": 0})
    r["out"] += l["output_tokens"]
    if l["ttft_p95_ms"] is not None: r["ttft"].append(l["ttft_p95_ms"])
    if l["tokens_per_second"] is not None: r["tps"].append(l["tokens_per_second"])
    if l["joules_per_token"] is not None: r["j"].append(l["joules_per_token"])
for (release, cls), r in sorted(rows.items()):
    ttft = "TTFT p95 %.0f ms" % max(r["ttft"]) if r["ttft"] else "no TTFT"
    tps = "%.1f tokens/s" % (sum(r["tps"]) / len(r["tps"])) if r["tps"] else "no speed"
    j = "%.4f J/token" % (sum(r["j"]) / len(r["j"])) if r["j"] else "no power sensor: no energy figure"
    print("   release %d on %-17s %5d tokens out, %s, %s, %s" % (release, cls, r["out"], ttft, tps, j))'

step "The web dashboard: served by the control plane itself"
viewer=$("$S" token create --name demo-viewer --role viewer)
curl -sf --cacert server/tls/server.crt "$url/" | grep -q '<div id="app">' && echo "   $url/ serves the dashboard"
curl -sf --cacert server/tls/server.crt -H "authorization: Bearer $viewer" "$url/api/v1/fleet" \
  | python3 -c 'import json,sys; f=json.load(sys.stdin); print("   what its Fleet page shows: %d device(s), %d online, running %s" % (f["devices"], f["online"], ", ".join("%s release %d" % (r["model"], r["release"]) for r in f["by_release"])))'
echo "   open $url/ and sign in with the viewer token $viewer"
echo "   (the certificate is the server's own: build/demo/server/tls/server.crt, fingerprint $fingerprint)"

step "The audit log tells the story"
"$E" audit --limit 20
if [ "${KEEP:-}" = 1 ]; then
  echo "KEEP=1: the server and the devices keep running for the dashboard; Ctrl-C stops them"
  wait $server_pid
fi
step "A clean stop: devices and server get SIGTERM"
kill "${pids[@]}" $server_pid 2>/dev/null; wait "${pids[@]}" $server_pid 2>/dev/null || true
trap - EXIT

step "Done. Everything is in build/demo/ (the server's data in build/demo/server)"
