#!/usr/bin/env python3
"""Watch events per second of a running remora-kube-sim.

Usage: remora-kube-sim serve --kubeconfig /tmp/kc & ; python3 watch_events.py /tmp/kc [N]
Creates N configmaps over one keep-alive connection while a watch counts their ADDED events.
"""
import http.client
import json
import re
import sys
import threading
import time

kubeconfig = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
server = re.search(r"server: http://([\d.]+):(\d+)", open(kubeconfig).read())
host, port = server.group(1), int(server.group(2))
seen = 0
done = threading.Event()


def watch():
    global seen
    c = http.client.HTTPConnection(host, port)
    c.request("GET", "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=1")
    r = c.getresponse()
    while True:
        line = r.fp.readline()
        if not line:
            break
        if b'"ADDED"' in line and b"bench-" in line:
            seen += 1
            if seen >= N:
                done.set()
                return


threading.Thread(target=watch, daemon=True).start()
time.sleep(0.3)
c = http.client.HTTPConnection(host, port)
start = time.time()
for i in range(N):
    body = json.dumps({"metadata": {"name": f"bench-{i}"}})
    c.request("POST", "/api/v1/namespaces/default/configmaps", body, {"content-type": "application/json"})
    c.getresponse().read()
created = time.time() - start
done.wait(60)
total = time.time() - start
print(f"{N} creates in {created:.2f}s ({N / created:.0f}/s); "
      f"watch saw {seen} ADDED events in {total:.2f}s ({seen / total:.0f} events/s)")
