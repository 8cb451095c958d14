#!/usr/bin/env bash
# The main job on the embedded default (the local platform): a sandbox pod with
# its own env, files, hostname, hosts file and a loopback-only service, and a
# local program run twice, without and with `remora run --target pid/<pod>`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "==> building remora"
cargo build --workspace --quiet
exec ./target/debug/remora-demo "$@"
