#!/usr/bin/env bash
# Language-model serving, side by side with llama.cpp itself, on the same GGUF and thread count, in one run:
# llama.cpp's own llama-bench (prefill of a 128-token prompt, decoding of 128 tokens) and batched-bench (1, 4
# and 8 parallel sequences), built from the very llama.cpp source the llama-cpp-2 crate vendors and with the
# same CPU flags (GGML_NATIVE=OFF: the Rust target's features, plain x86-64 here), then the daemon's serving
# stack over HTTP (device-daemon/examples/bench_llm.rs).
#
#   scripts/bench_llm.sh [MODEL.gguf] [THREADS] [SWAPS] [CHAT_TEMPLATE]
#   (default: Gemma 3 270M Q4_K_M from .cache, 2 threads, 100 swaps, the gemma template)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODEL=${1:-.cache/models/llm/gemma-3-270m-q4_k_m.gguf}
THREADS=${2:-2}
SWAPS=${3:-100}
TEMPLATE=${4:-gemma}
T=.cache/llama-tools
if [ ! -x "$T/bin/llama-bench" ] || [ ! -x "$T/bin/llama-batched-bench" ]; then
  src=$(cargo metadata --format-version 1 --locked | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = next(p for p in m["packages"] if p["name"] == "llama-cpp-sys-2")
print(os.path.join(os.path.dirname(p["manifest_path"]), "llama.cpp"))')
  echo "bench: building llama-bench and llama-batched-bench from $src" >&2
  cmake -S "$src" -B "$T/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
  cmake --build "$T/build" --target llama-bench llama-batched-bench -j"$(nproc)" >/dev/null
  mkdir -p "$T/bin" && cp "$T/build/bin/llama-bench" "$T/build/bin/llama-batched-bench" "$T/bin/"
fi
echo "== machine"; uname -m; nproc; grep -m1 'model name' /proc/cpuinfo; free -g | sed -n 2p
echo "== llama.cpp llama-bench: pp128 (prefill of 128 tokens) and tg128 (decoding 128), $THREADS threads"
"$T/bin/llama-bench" -m "$MODEL" -t "$THREADS" -p 128 -n 128 -r 3 -o md
echo "== llama.cpp batched-bench: 128-token prompts, 64 tokens each, 1/4/8 parallel sequences"
"$T/bin/llama-batched-bench" -m "$MODEL" -t "$THREADS" -c 4096 -b 256 -ub 256 -npp 128 -ntg 64 -npl 1,4,8 2>/dev/null | grep -E '^\|' || true
echo "== edgefleet daemon serving stack over HTTP, $THREADS threads"
cargo run --release --quiet -p edgefleet-daemon --example bench_llm -- "$MODEL" "$THREADS" "$SWAPS" $TEMPLATE
