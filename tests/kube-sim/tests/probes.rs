//! Readiness probes held to real servers: httpGet (python3 http.server), tcpSocket and exec
//! (run in the container's mount namespace); a container is not ready until its probe
//! succeeds, and not ready again once it fails.

mod common;

use common::{Sim, poll};

fn ready(sim: &Sim, container: &str) -> String {
    sim.ok(&[
        "get",
        "pod",
        "probed",
        "-o",
        &format!("jsonpath={{.status.containerStatuses[?(@.name==\"{container}\")].ready}}"),
    ])
}

#[test]
fn readiness_follows_http_tcp_and_exec_probes() {
    let sim = Sim::start();
    let gate = |name: &str| sim.dir.path().join(name);
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  volumes: [{{name: state, emptyDir: {{}}}}]
  containers:
  - name: http
    image: python
    command: [sh, -c, "until [ -f {http} ]; do sleep 0.1; done; exec python3 -m http.server 8080"]
    ports: [{{name: web, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /, port: web}}, periodSeconds: 1}}
  - name: tcp
    image: python
    command: [sh, -c, "until [ -f {tcp} ]; do sleep 0.1; done; exec python3 -m http.server 9090"]
    readinessProbe: {{tcpSocket: {{port: 9090}}, periodSeconds: 1}}
  - name: exec
    image: busybox
    command:
    - sh
    - -c
    - |
      until [ -f {exec} ]; do sleep 0.1; done
      touch /tmp/remora-sim-probe/ready
      until [ -f {unready} ]; do sleep 0.1; done
      rm /tmp/remora-sim-probe/ready
      exec sleep 1000
    volumeMounts: [{{name: state, mountPath: /tmp/remora-sim-probe}}]
    # Only true inside the container's mount namespace.
    readinessProbe: {{exec: {{command: [test, -f, /tmp/remora-sim-probe/ready]}}, periodSeconds: 1, failureThreshold: 1}}
"#,
        http = gate("http").display(),
        tcp = gate("tcp").display(),
        exec = gate("exec").display(),
        unready = gate("unready").display(),
    );
    sim.apply_yaml(&manifest, &[]);
    poll(
        || {
            sim.ok(&[
                "get",
                "pod",
                "probed",
                "-o",
                "jsonpath={.status.containerStatuses[*].started}",
            ]) == "true true true"
        },
        "the three containers to run",
    );
    // Nothing can succeed before its gate opens.
    for c in ["http", "tcp", "exec"] {
        assert_eq!(ready(&sim, c), "false", "{c} before its gate");
    }
    for c in ["http", "tcp", "exec"] {
        std::fs::write(gate(c), "").unwrap();
        poll(|| ready(&sim, c) == "true", &format!("{c} to become ready"));
    }
    sim.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/probed",
        "--timeout=30s",
    ]);
    std::fs::write(gate("unready"), "").unwrap();
    sim.ok(&[
        "wait",
        "--for=condition=Ready=false",
        "pod/probed",
        "--timeout=30s",
    ]);
    assert_eq!(ready(&sim, "exec"), "false");
    assert_eq!(ready(&sim, "http"), "true");
}
