#!/usr/bin/env bash
# Language-model serving over HTTP through the daemon's own stack (device-daemon/examples/bench_llm.rs): time
# to first token of a 128-token prompt, one stream's decoding speed, aggregate tokens/s with 1, 4 and 8
# concurrent streams, RSS with the model loaded, and hot swaps under a streaming load.
#
#   scripts/bench_llm.sh [MODEL.gguf] [THREADS] [SWAPS] [CHAT_TEMPLATE]
#   (default: Gemma 3 270M Q4_K_M from .cache, 2 threads, 100 swaps, the gemma template)
#
# The peer side (llama.cpp itself on the same GGUF and threads) is not wired yet: the llama.cpp source that the
# llama-cpp-2 crate vendors leaves out tools/ (llama-bench, batched-bench have no CMakeLists there), so the next
# step is llama-cpp-python built from PyPI in the bench venv with the same flags (GGML_NATIVE=OFF).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODEL=${1:-.cache/models/llm/gemma-3-270m-q4_k_m.gguf}
THREADS=${2:-2}
SWAPS=${3:-100}
TEMPLATE=${4:-gemma}
echo "== machine"; uname -m; nproc; grep -m1 'model name' /proc/cpuinfo; free -g | sed -n 2p
echo "== edgefleet daemon serving stack over HTTP, $THREADS threads"
cargo run --release --quiet -p edgefleet-daemon --example bench_llm -- "$MODEL" "$THREADS" "$SWAPS" $TEMPLATE
