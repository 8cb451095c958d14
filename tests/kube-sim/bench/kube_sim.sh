#!/usr/bin/env bash
# remora-kube-sim benchmarks, printed as a markdown table: apply → Ready of one pod (each
# pod with its own network namespace, veth and cgroup), a 100-replica deployment (apply →
# rollout status, then delete), and watch events per second.
# Usage: [RUNTIME=process|containerd] tests/kube-sim/bench/kube_sim.sh [path/to/remora-kube-sim]
# (needs root, kubectl; containerd and runc for RUNTIME=containerd)
set -euo pipefail
cd "$(dirname "$0")/../../.."
SIM=${1:-target/release/remora-kube-sim}
RUNTIME=${RUNTIME:-process}
work=$(mktemp -d)
"$SIM" serve --runtime "$RUNTIME" --exit-with-parent --kubeconfig "$work/kc" 2>"$work/sim.log" &
sim_pid=$!
cleanup() { kill "$sim_pid" 2>/dev/null || true; wait "$sim_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do [ -f "$work/kc" ] && break; sleep 0.1; done
k() { kubectl --kubeconfig "$work/kc" "$@"; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

# apply → Ready, 5 times: the median and the range.
times=()
for i in 1 2 3 4 5; do
    cat > "$work/p.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata: {name: p$i}
spec:
  containers: [{name: m, image: busybox, command: [sleep, "1000"]}]
YAML
    t0=$(now)
    k apply -f "$work/p.yaml" >/dev/null
    k wait --for=condition=Ready "pod/p$i" --timeout=60s >/dev/null
    times+=("$(elapsed "$t0" "$(now)")")
done
ready=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
range="$(printf '%s\n' "${times[@]}" | sort -n | head -1)–$(printf '%s\n' "${times[@]}" | sort -n | tail -1)"
k delete pod p1 p2 p3 p4 p5 --wait=true >/dev/null

cat > "$work/d.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: many}
spec:
  replicas: 100
  selector: {matchLabels: {app: many}}
  template:
    metadata: {labels: {app: many}}
    spec:
      containers: [{name: m, image: busybox, command: [sleep, "1000"]}]
YAML
t0=$(now)
k apply -f "$work/d.yaml" >/dev/null
k rollout status deployment/many --timeout=300s >/dev/null
rollout=$(elapsed "$t0" "$(now)")
running=$(k get pods -l app=many --field-selector=status.phase=Running -o name | wc -l)
t0=$(now)
k delete deployment many --wait=true >/dev/null
while [ "$(k get pods -l app=many -o name | wc -l)" != 0 ]; do sleep 0.1; done
deleted=$(elapsed "$t0" "$(now)")

watch=$(python3 tests/kube-sim/bench/watch_events.py "$work/kc" 2000)

echo "| remora-kube-sim ($(basename "$(dirname "$SIM")") build, --runtime $RUNTIME) | measured |"
echo "|---|---|"
echo "| kubectl apply → kubectl wait Ready, one pod (median of 5, range) | ${ready} s (${range} s) |"
echo "| 100-replica deployment: apply → rollout status | ${rollout} s (${running} pods Running) |"
echo "| delete it until no pod is listed | ${deleted} s |"
echo "| watch events | ${watch} |"
