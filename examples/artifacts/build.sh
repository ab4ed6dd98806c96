#!/usr/bin/env bash
# Rebuilds the example artifacts `skiff server` and `skiff up` carry in their embedded
# registry (registry.skiff.internal/http-hello:v1 and /wasi-hello:v1) from the examples'
# sources. Run it after changing an example, then rebuild skiff.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
rustup target add wasm32-wasip1 wasm32-wasip2
cargo build --release --target wasm32-wasip2 --manifest-path http-hello/Cargo.toml
cargo build --release --target wasm32-wasip1 --manifest-path wasi-hello/Cargo.toml
cp "$target/wasm32-wasip2/release/http-hello.wasm" "$target/wasm32-wasip1/release/wasi-hello.wasm" artifacts/
