#!/usr/bin/env bash
# The benchmarks recorded in docs/benchmarks.md: a sandbox pod, and start-up, local
# calls, the pod's files and the pod's TCP service measured directly and through
# `remora run`, in one run, printed as a markdown table (also saved to
# target/bench-results.md). Release build: debug numbers would mislead.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "==> building remora (release)" >&2
cargo build --release --workspace --quiet
# remora-bench looks in $REMORA_BIN_DIR first: pin it, so a debug build named there
# cannot slip into a release table (remora finds its agent and layer next to itself).
export REMORA_BIN_DIR="$PWD/target/release"
./target/release/remora-bench | tee target/bench-results.md
echo >> target/bench-results.md
# Its pass-through is compared with HAProxy in the same run; without it the rows are
# missing and the table says so.
command -v haproxy >/dev/null || echo "bench: HAProxy is missing (apt-get install haproxy): the incoming table has no reverse-proxy rows" >&2
./target/release/remora-bench-incoming | tee -a target/bench-results.md
echo >> target/bench-results.md
./target/release/remora-bench-operator | tee -a target/bench-results.md
echo >> target/bench-results.md
./target/release/remora-bench-outgoing | tee -a target/bench-results.md
echo >> target/bench-results.md
./target/release/remora-bench-seccomp | tee -a target/bench-results.md
echo >> target/bench-results.md
./target/release/remora-bench-db-branches | tee -a target/bench-results.md
echo >> target/bench-results.md
# Queue splitting: the local RabbitMQ (setup.sh starts it), and SQS on moto_server and
# Kafka on tansu, which the bench starts itself (setup.sh installs them).
./target/release/remora-bench-queues | tee -a target/bench-results.md
echo >> target/bench-results.md
# The test cluster (needs root for its pod namespaces, cgroups and bridge).
./tests/kube-sim/bench/kube_sim.sh target/release/remora-kube-sim | tee -a target/bench-results.md
RUNTIME=containerd ./tests/kube-sim/bench/kube_sim.sh target/release/remora-kube-sim | tee -a target/bench-results.md
echo >> target/bench-results.md
# remora on a Kubernetes target of the test cluster: start-up, and 100 MB through
# remora's port-forward data path against a plain `kubectl port-forward` in the same run.
./tests/kube-sim/bench/remora_kube.sh target/release | tee -a target/bench-results.md
