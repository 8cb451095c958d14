#!/usr/bin/env bash
# remora against a Kubernetes target on the test cluster, printed as a markdown table:
# start-up of `remora run -t deployment/big -- true` (resolve, agent Job, its pod, the
# agent's ready line, port-forward, environment), and 100 MB downloaded by curl from a
# server on the pod's loopback, through remora (layer, intproxy, the port-forward WebSocket
# the intproxy speaks the remora protocol over, agent) and through a plain `kubectl
# port-forward` relay to the same pod, in the same run; and the latency of a small request
# (a new connection each: the median of 50 sequential 100-byte GETs in one curl) both ways;
# and, against a raw TCP service in a second container of the pod, a 100 MB upload and
# 1-byte round trips on one connection (a python3 client), through remora and through the
# same `kubectl port-forward`.
# Usage: tests/kube-sim/bench/remora_kube.sh [BIN_DIR]   (default target/release; it holds
# remora, remora-agent, libremora_layer.so and remora-kube-sim; needs root, kubectl, curl)
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN=$(cd "${1:-target/release}" && pwd)
RUNS=${RUNS:-5}
work=$(mktemp -d)
chmod 755 "$work"
# The agent Job's `remora-agent` command runs from $BIN (the sim runs containers as host processes).
PATH="$BIN:$PATH" "$BIN/remora-kube-sim" serve --exit-with-parent --kubeconfig "$work/kc" 2>"$work/sim.log" &
sim_pid=$!
pf_pid=
local_pid=
cleanup() {
    [ -n "$local_pid" ] && { kill "$local_pid" 2>/dev/null || true; wait "$local_pid" 2>/dev/null || true; }
    [ -n "$pf_pid" ] && { kill "$pf_pid" 2>/dev/null || true; wait "$pf_pid" 2>/dev/null || true; }
    kill "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 300); do [ -f "$work/kc" ] && break; sleep 0.1; done
k() { kubectl --kubeconfig "$work/kc" "$@"; }
now() { date +%s.%N; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
load_start=$(load)

mkdir -p "$work/www"
head -c 100000000 /dev/zero > "$work/www/big"
head -c 100 /dev/zero > "$work/www/small"
# A raw TCP service for the upload and round-trip rows, in a second container of the pod:
# a connection's first byte picks the mode, `U` (read to the end, answer the byte count)
# or `E` (echo every read back).
cat > "$work/tcp_server.py" <<'PY'
import socket, sys, threading
def serve(c):
    with c:
        mode = c.recv(1)
        if mode == b"U":
            n = 0
            while (b := c.recv(1 << 20)):
                n += len(b)
            c.sendall(str(n).encode())
        elif mode == b"E":
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while (b := c.recv(65536)):
                c.sendall(b)
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
PY
# Its client: `upload PORT` sends 100 MB and prints the seconds until the count came back;
# `rt PORT` prints the median seconds of 2,000 1-byte round trips on one connection.
cat > "$work/tcp_client.py" <<'PY'
import socket, statistics, sys, time
mode, port = sys.argv[1], int(sys.argv[2])
for _ in range(50):
    try:
        c = socket.create_connection(("127.0.0.1", port))
        break
    except OSError:
        time.sleep(0.1)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if mode == "upload":
    chunk = bytes(1 << 20)
    t0 = time.perf_counter()
    c.sendall(b"U")
    for _ in range(100):
        c.sendall(chunk[:1000000])
    c.shutdown(socket.SHUT_WR)
    reply = b""
    while (b := c.recv(64)):
        reply += b
    t = time.perf_counter() - t0
    assert reply == b"100000000", reply
    print(f"{t:.6f}")
else:
    c.sendall(b"E")
    times = []
    for _ in range(2000):
        t0 = time.perf_counter()
        c.sendall(b"x")
        assert c.recv(1) == b"x"
        times.append(time.perf_counter() - t0)
    print(f"{statistics.median(times):.9f}")
PY
cat > "$work/d.yaml" <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: big}
spec:
  replicas: 1
  selector: {matchLabels: {app: big}}
  template:
    metadata: {labels: {app: big}}
    spec:
      containers:
      - name: app
        image: python:3
        command: [python3, -m, http.server, "8080", --bind, 127.0.0.1, --directory, "$work/www"]
        readinessProbe:
          exec: {command: [python3, -c, "import socket; socket.create_connection(('127.0.0.1', 8080))"]}
          periodSeconds: 1
      - name: tcp
        image: python:3
        command: [python3, "$work/tcp_server.py", "8081"]
        readinessProbe:
          exec: {command: [python3, -c, "import socket; socket.create_connection(('127.0.0.1', 8081))"]}
          periodSeconds: 1
YAML
k apply -f "$work/d.yaml" >/dev/null
k wait --for=condition=Available deployment/big --timeout=120s >/dev/null

# "min–max (median)" of numbers, one per line.
summary() { python3 -c '
import statistics, sys
v = sorted(float(x) for x in sys.stdin.read().split())
print(f"{v[0]:.3f}–{v[-1]:.3f} s (median {statistics.median(v):.3f} s)")'; }
summary_ms() { python3 -c '
import statistics, sys
v = sorted(1000 * float(x) for x in sys.stdin.read().split())
print(f"{v[0]:.2f}–{v[-1]:.2f} ms (median {statistics.median(v):.2f} ms)")'; }
summary_us() { python3 -c '
import statistics, sys
v = sorted(1e6 * float(x) for x in sys.stdin.read().split())
print(f"{v[0]:.0f}–{v[-1]:.0f} µs (median {statistics.median(v):.0f} µs)")'; }
rate() { python3 -c '
import statistics, sys
v = sorted(float(x) for x in sys.stdin.read().split())
print(f"{100 / v[-1]:.0f}–{100 / v[0]:.0f} MB/s (median {100 / statistics.median(v):.0f})")'; }

remora() { "$BIN/remora" run --kubeconfig "$work/kc" -t deployment/big -- "$@"; }
startup=()
for _ in $(seq "$RUNS"); do
    t0=$(now)
    remora true
    startup+=("$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$(now)")")
done

# The three downloads alternate, round after round, so that a change in the
# machine's load (it is shared) falls on all of them alike.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
tcp_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
k port-forward deployment/big "$port:8080" "$tcp_port:8081" >"$work/pf.log" 2>&1 &
pf_pid=$!
for _ in $(seq 300); do grep -q Forwarding "$work/pf.log" && break; sleep 0.1; done

# The same download through remora on a local pid/ target (a server of this machine, no
# port-forward): what remora's own path costs without the API server's relay.
local_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$local_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
local_pid=$!
for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$local_port/" && break; sleep 0.1; done

# 50 sequential GETs of a 100-byte file in one curl (python3's http.server closes each
# connection, so each is a new connection through the forward): the median of their times.
small_args() { for _ in $(seq 50); do printf '%s\n' -o /dev/null "$1"; done; }
median() { python3 -c '
import statistics, sys
print(f"{statistics.median(float(x) for x in sys.stdin.read().split()):.6f}")'; }
mapfile -t small_remote < <(small_args http://127.0.0.1:8080/small)
mapfile -t small_kubectl < <(small_args "http://127.0.0.1:$port/small")

through_remora=()
through_kubectl=()
through_local=()
small_through_remora=()
small_through_kubectl=()
up_remora=()
up_kubectl=()
rt_remora=()
rt_kubectl=()
for _ in $(seq "$RUNS"); do
    up_remora+=("$(remora python3 "$work/tcp_client.py" upload 8081)")
    up_kubectl+=("$(python3 "$work/tcp_client.py" upload "$tcp_port")")
    rt_remora+=("$(remora python3 "$work/tcp_client.py" rt 8081)")
    rt_kubectl+=("$(python3 "$work/tcp_client.py" rt "$tcp_port")")
    through_remora+=("$(remora curl -sS -o /dev/null -w '%{time_total}' http://127.0.0.1:8080/big)")
    through_kubectl+=("$(curl -sS -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/big")")
    through_local+=("$("$BIN/remora" run -t "pid/$local_pid" -- curl -sS -o /dev/null -w '%{time_total}' "http://127.0.0.1:$local_port/big")")
    small_through_remora+=("$(remora curl -sS -w '%{time_total}\n' "${small_remote[@]}" | median)")
    small_through_kubectl+=("$(curl -sS -w '%{time_total}\n' "${small_kubectl[@]}" | median)")
done
kill "$local_pid"; wait "$local_pid" 2>/dev/null || true
local_pid=

build=$(basename "$BIN")
echo "### remora on a Kubernetes target (remora-kube-sim, $build build, $RUNS runs each)"
echo
echo "$(date -u +%F), $(nproc) CPUs, load average at start $load_start, at end $(load) (the machine is shared)."
echo
echo "| what | time | throughput |"
echo "| --- | --- | --- |"
echo "| start-up: \`remora run -t deployment/big -- true\` | $(printf '%s\n' "${startup[@]}" | summary) | |"
echo "| 100 MB: \`remora run -t deployment/big -- curl\` (curl's time) | $(printf '%s\n' "${through_remora[@]}" | summary) | $(printf '%s\n' "${through_remora[@]}" | rate) |"
echo "| 100 MB: \`remora run -t pid/<local server> -- curl\` (no port-forward) | $(printf '%s\n' "${through_local[@]}" | summary) | $(printf '%s\n' "${through_local[@]}" | rate) |"
echo "| 100 MB: \`kubectl port-forward\` + curl | $(printf '%s\n' "${through_kubectl[@]}" | summary) | $(printf '%s\n' "${through_kubectl[@]}" | rate) |"
echo "| small GET, new connection each (median of 50 per run): \`remora run -t deployment/big -- curl\` | $(printf '%s\n' "${small_through_remora[@]}" | summary_ms) | |"
echo "| small GET, new connection each (median of 50 per run): \`kubectl port-forward\` + curl | $(printf '%s\n' "${small_through_kubectl[@]}" | summary_ms) | |"
echo "| 100 MB upload, one connection (python3 client, until the server's count is back): \`remora run -t deployment/big\` | $(printf '%s\n' "${up_remora[@]}" | summary) | $(printf '%s\n' "${up_remora[@]}" | rate) |"
echo "| 100 MB upload, one connection: \`kubectl port-forward\` | $(printf '%s\n' "${up_kubectl[@]}" | summary) | $(printf '%s\n' "${up_kubectl[@]}" | rate) |"
echo "| 1-byte round trip, one connection (median of 2,000 per run): \`remora run -t deployment/big\` | $(printf '%s\n' "${rt_remora[@]}" | summary_us) | |"
echo "| 1-byte round trip, one connection (median of 2,000 per run): \`kubectl port-forward\` | $(printf '%s\n' "${rt_kubectl[@]}" | summary_us) | |"
