# The two commands of README.md. Both run scripts/setup.sh first, which fetches ONNX Runtime and the real
# models into .cache/ (idempotent; a second run does nothing).
.PHONY: demo test setup bench

demo:
	scripts/demo.sh

test: setup
	cargo nextest run --workspace --no-fail-fast

setup:
	scripts/setup.sh

bench: setup
	cargo run --release -p model-registry --example bench_artifacts
