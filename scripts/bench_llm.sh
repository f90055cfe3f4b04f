#!/usr/bin/env bash
# Language-model serving over HTTP through the daemon's own stack (device-daemon/examples/bench_llm.rs): time
# to first token of a 128-token prompt, one stream's decoding speed, aggregate tokens/s with 1, 4 and 8
# concurrent streams, RSS with the model loaded, and hot swaps under a streaming load.
#
#   scripts/bench_llm.sh [MODEL.gguf] [THREADS] [SWAPS] [CHAT_TEMPLATE]
#   (default: Gemma 3 270M Q4_K_M from .cache, 2 threads, 100 swaps, the gemma template)
#
# The peer is llama.cpp itself through its Python binding, llama-cpp-python (scripts/bench_llm_peer.py), built from
# PyPI's source into .cache/bench-venv with the same instruction set as the daemon's llama.cpp (.cargo/config.toml:
# x86-64-v3, not -march=native) and run in-process on the same GGUF, prompt, threads, context and batch size.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODEL=${1:-.cache/models/llm/gemma-3-270m-q4_k_m.gguf}
THREADS=${2:-2}
SWAPS=${3:-100}
TEMPLATE=${4:-gemma}
echo "== machine"; uname -m; nproc; grep -m1 'model name' /proc/cpuinfo; free -g | sed -n 2p
PEER=llama-cpp-python==0.3.36
if ! .cache/bench-venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
  echo "bench: building $PEER (llama.cpp from source, several minutes)" >&2
  python3 -m venv .cache/bench-venv
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_OPENMP=ON" \
    .cache/bench-venv/bin/python -m pip install --quiet --no-binary llama-cpp-python "$PEER"
fi
echo "== llama.cpp itself ($PEER, in-process), $THREADS threads"
.cache/bench-venv/bin/python scripts/bench_llm_peer.py "$MODEL" "$THREADS"
echo "== edgefleet daemon serving stack over HTTP, $THREADS threads"
cargo run --release --quiet -p edgefleet-daemon --example bench_llm -- "$MODEL" "$THREADS" "$SWAPS" $TEMPLATE
