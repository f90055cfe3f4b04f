#!/usr/bin/env bash
# Benchmark: edgefleet's release optimizer against ONNX Runtime's own quantizer, in one run on this machine.
#
#   N=2000 scripts/bench_optimizer.sh
#
# magika: every ONNX variant kind, plus onnxruntime's `quantize_dynamic` output (--compare), checked on N real
# files of the Python standard library and /usr/share (scripts/make_corpus.py) for size, zstd size, top-1
# agreement with fp32 and latency per file; qdq-int8 is calibrated on 200 other files. Gemma 3 270M: requantized
# by llama.cpp to q8_0 and q4_0 and scored on the golden prompts (next-token agreement, log-probability error,
# time per token). Reports: build/bench-optimizer/{magika,gemma}/report.json (a refused variant is listed with
# its numbers and not written).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
scripts/setup.sh
cargo build --release --quiet --bin edgefleet
E="$PWD/target/release/edgefleet"
C="$PWD/.cache"
D=build/bench-optimizer
rm -rf "$D" && mkdir -p "$D"
export EDGEFLEET_ORT_LIB="$C/lib/libonnxruntime.so.1.31.1"
"$C/venv/bin/python" scripts/make_corpus.py "$C" "$D/corpus.safetensors" "$N"
"$C/venv/bin/python" scripts/make_corpus.py "$C" "$D/calibration.safetensors" 200 "$N"
"$C/venv/bin/python" scripts/quantize.py "$C/models/magika/model.onnx" "$D/magika-ort-dynamic.onnx"
echo "== magika on $N files, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$E" release optimize "$C/models/magika/model.onnx" --to int8,int4,dynamic-int8,qdq-int8,fp16,prune50 \
  --samples "$D/corpus.safetensors" --calibration "$D/calibration.safetensors" \
  --compare "ort-dynamic=$D/magika-ort-dynamic.onnx" --runs 1 -o "$D/magika" || true
echo "== Gemma 3 270M (Q4_K_M source) requantized by llama.cpp"
"$E" release optimize "$C/models/llm/gemma-3-270m-q4_k_m.gguf" --to q8_0,q4_0 \
  --samples fixtures/llm/golden-prompts.json --chat-template gemma -o "$D/gemma" || true
