#!/usr/bin/env bash
# The main job on the embedded default (the local platform): a sandbox pod with
# its own env, files, hostname, hosts file and a loopback-only service, and a
# local program run twice, without and with `remora run --target pid/<pod>`;
# two developers sharing the pod through remora-operator; then a Kubernetes act on
# the test cluster remora-kube-sim (a small shop, `remora run --target
# deployment/storefront`). Everything it starts is stopped, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "==> building remora"
cargo build --workspace --quiet
exec ./target/debug/remora-demo "$@"
