#!/usr/bin/env bash
# Builds the daemon's .deb for this machine's architecture into target/debian/: a release build, ONNX Runtime
# from the PyPI wheel of the same architecture (x86_64 or aarch64; llama.cpp is compiled into the daemon), the
# hardened systemd unit and the settings file. Installs cargo-deb from crates.io on first use.
#   scripts/package_daemon.sh            # then: sudo apt install ./target/debian/edgefleet-daemon_*.deb
# For another architecture, run it on a machine (or CI runner) of that architecture.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_VERSION=1.31.1
case "$(uname -m)" in
  x86_64) platform=manylinux_2_28_x86_64 ;;
  aarch64) platform=manylinux_2_28_aarch64 ;;
  *) echo "package_daemon: no ONNX Runtime wheel for $(uname -m)" >&2; exit 1 ;;
esac
scripts/setup.sh
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
mkdir -p .cache/package
if [ ! -s .cache/package/libonnxruntime.so ]; then
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$platform" --dest "$tmp" "onnxruntime==$ORT_VERSION"
  python3 -m zipfile -e "$tmp"/onnxruntime-*.whl "$tmp/x"
  cp "$tmp/x/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" .cache/package/libonnxruntime.so
  rm -rf "$tmp"
fi
cargo build --release --locked -p edgefleet-daemon --bin edgefleet-daemon
cargo deb --no-build -p edgefleet-daemon
ls -l target/debian/
