#!/usr/bin/env bash
# Runs everything CI runs: setup, formatting, lints, and the whole test suite
# (unit, layer, and end-to-end sandbox tests). Exits non-zero on any failure.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -E 'package(remora-config)'   # extra args go to nextest
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

# A CI run builds once from a clean clone: incremental caches would only
# take disk space.
export CARGO_INCREMENTAL=0

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# One build shared by every test: the binaries the end-to-end tests run
# (remora, remora-agent, libremora_layer.so, tests/apps) are built once here.
echo "==> cargo build --workspace"
cargo build --workspace --quiet

echo "==> VS Code extension: npm test (ide/vscode)"
(cd ide/vscode && npm test --silent)

# Sandbox tests must run here, never skip silently.
export REMORA_REQUIRE_SANDBOX=1

if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests; run them first so nextest's summary is
    # the run's closing line.
    echo "==> cargo test --doc"
    cargo test --workspace --doc --quiet
    echo "==> cargo nextest run --workspace"
    cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "==> cargo test --workspace"
    cargo test --workspace --no-fail-fast "$@"
fi
