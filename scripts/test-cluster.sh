#!/usr/bin/env bash
# Runs remora's Kubernetes end-to-end checks against a cluster named by
# KUBECONFIG (a real one, or remora-kube-sim): in a namespace of its own it
# deploys a small web workload, then checks that `remora run --target
# deployment/web` gives a command the pod's environment, files, hostname and
# loopback network, that `remora ls` lists the deployment, that failures say
# what was found, and that no agent Job is left. The namespace is deleted at
# the end, also on failure.
#
#   KUBECONFIG=~/.kube/staging.yaml REMORA_AGENT_IMAGE=registry/remora-agent:dev \
#       ./scripts/test-cluster.sh
#
# REMORA_AGENT_IMAGE: an agent image the cluster can pull (agent/Containerfile;
#   default: the config's default image). remora-kube-sim ignores images.
# REMORA_TEST_IMAGE: the workload's image; it needs sh and python3
#   (default python:3.12-slim).
# REMORA: the remora binary (default target/debug/remora; build it first).
#
# Exits 2, saying so, when no KUBECONFIG is given: it never guesses a cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${KUBECONFIG:-}" ]]; then
    echo "test-cluster.sh: no cluster: set KUBECONFIG to the kubeconfig of the cluster to test" >&2
    echo "  (nothing was run; the test cluster's own suite is \`cargo nextest run -p remora-tests -E 'binary(run_kube)'\`)" >&2
    exit 2
fi
for tool in kubectl; do
    command -v "$tool" >/dev/null || { echo "test-cluster.sh: $tool is not installed" >&2; exit 2; }
done
REMORA="${REMORA:-target/debug/remora}"
[[ -x "$REMORA" ]] || { echo "test-cluster.sh: $REMORA missing: cargo build -p remora-cli -p remora-layer -p remora-agent" >&2; exit 2; }
IMAGE="${REMORA_TEST_IMAGE:-python:3.12-slim}"
NS="remora-e2e-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
PORT=18080
WORK="$(mktemp -d)"
failures=0

cleanup() {
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    rm -rf "$WORK"
    # remora-kube-sim's containers are processes of this machine: their
    # files are here.
    if [[ "$(kubectl config current-context 2>/dev/null)" == remora-sim ]]; then
        rm -rf "/srv/$NS"
    fi
}
trap cleanup EXIT

check() { # name, expected, actual
    if [[ "$2" == "$3" ]]; then
        echo "ok   $1"
    else
        echo "FAIL $1: expected [$2], got [$3]"
        failures=$((failures + 1))
    fi
}
contains() { # name, needle, haystack
    if [[ "$3" == *"$2"* ]]; then
        echo "ok   $1"
    else
        echo "FAIL $1: [$2] not in [$3]"
        failures=$((failures + 1))
    fi
}

{
    echo "[agent]"
    [[ -n "${REMORA_AGENT_IMAGE:-}" ]] && echo "image = \"$REMORA_AGENT_IMAGE\""
    echo "startup_timeout = 120"
} >"$WORK/remora.toml"

echo "==> namespace $NS, deployment web ($IMAGE)"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
cat >"$WORK/web.yaml" <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: $IMAGE
        command: ["sh", "-c", "mkdir -p /srv/$NS && echo a file of the pod > /srv/$NS/hello.txt && exec python3 -u -m http.server $PORT --bind 127.0.0.1 --directory /srv/$NS"]
        env: [{name: GREETING, value: hello-from-the-pod}]
EOF
kubectl apply -f "$WORK/web.yaml" >/dev/null
kubectl -n "$NS" wait --for=condition=Available deployment/web --timeout=180s >/dev/null
for _ in $(seq 60); do
    kubectl -n "$NS" logs deployment/web 2>/dev/null | grep -q "Serving HTTP" && break
    sleep 1
done
POD="$(kubectl -n "$NS" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')"

run() { "$REMORA" run -f "$WORK/remora.toml" -n "$NS" "$@"; }

echo "==> remora run -t deployment/web"
start=$(date +%s.%N)
out="$(run -t deployment/web -- sh -c 'echo "$GREETING"; cat /srv/'"$NS"'/hello.txt; python3 -c "import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:'"$PORT"'/hello.txt\").read().decode().strip())"; uname -n')"
end=$(date +%s.%N)
mapfile -t lines <<<"$out"
check "the pod's environment" "hello-from-the-pod" "${lines[0]:-}"
check "a file of the pod" "a file of the pod" "${lines[1]:-}"
check "a server on the pod's loopback" "a file of the pod" "${lines[2]:-}"
check "the pod's hostname" "$POD" "${lines[3]:-}"
echo "     (remora run took $(awk "BEGIN {print $end - $start}") s)"

echo "==> remora ls"
contains "ls lists the deployment" '"target":"deployment/web"' \
    "$("$REMORA" ls -f "$WORK/remora.toml" -n "$NS" --platform kubernetes --json)"

echo "==> failures"
contains "unknown container" 'has no container `worker`' \
    "$(run -t deployment/web/container/worker -- true 2>&1 | sed 's/│//g' | tr -s ' \n' ' ' || true)"
contains "not found" "deployment/nope not found in namespace $NS" \
    "$(run -t deployment/nope -- true 2>&1 | sed 's/│//g' | tr -s ' \n' ' ' || true)"

echo "==> no agent left"
left=""
for _ in $(seq 60); do
    left="$(kubectl -n "$NS" get jobs,pods,secrets -l app.kubernetes.io/name=remora-agent -o name)"
    [[ -z "$left" ]] && break
    sleep 1
done
check "agent objects left" "" "$left"

if ((failures > 0)); then
    echo "test-cluster.sh: $failures check(s) failed" >&2
    exit 1
fi
echo "test-cluster.sh: all checks passed against $(kubectl config current-context)"
