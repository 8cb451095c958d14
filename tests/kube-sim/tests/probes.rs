//! Probes held to real servers: readiness with httpGet (python3 http.server), tcpSocket and
//! exec (run in the container's mount namespace); a container is not ready until its probe
//! succeeds, and not ready again once it fails. Liveness failures restart the container
//! (restartCount, `logs --previous`, a Killing event); a startup probe holds the other probes
//! back until it succeeds, and kills the container when it fails. Every transition is
//! driven by a gate file the test writes, never by how long something takes.

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

fn status(sim: &Sim, pod: &str, path: &str) -> String {
    sim.ok(&[
        "get",
        "pod",
        pod,
        "-o",
        &format!("jsonpath={{.status.containerStatuses[0].{path}}}"),
    ])
}

#[test]
fn liveness_failures_restart_the_container_and_count_it() {
    let sim = Sim::start();
    let alive = sim.dir.path().join("alive");
    std::fs::write(&alive, "").unwrap();
    sim.apply_yaml(
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: lively}}
spec:
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "echo a run of the container; exec sleep 1000"]
    livenessProbe: {{exec: {{command: [test, -f, {alive}]}}, periodSeconds: 1, failureThreshold: 2}}
"#,
            alive = alive.display()
        ),
        &[],
    );
    poll(
        || status(&sim, "lively", "ready") == "true",
        "the container to run",
    );
    assert_eq!(status(&sim, "lively", "restartCount"), "0");
    let first = status(&sim, "lively", "containerID");

    std::fs::remove_file(&alive).unwrap();
    poll(
        || status(&sim, "lively", "restartCount") != "0",
        "the liveness probe to restart the container",
    );
    std::fs::write(&alive, "").unwrap();
    poll(
        || {
            !status(&sim, "lively", "state.running.startedAt").is_empty()
                && status(&sim, "lively", "ready") == "true"
        },
        "the restarted container to run",
    );
    assert_ne!(
        status(&sim, "lively", "containerID"),
        first,
        "a new container"
    );
    // sleep was stopped by SIGTERM, as a kubelet stops it: 128 + 15.
    assert_eq!(
        status(&sim, "lively", "lastState.terminated.exitCode"),
        "143"
    );
    let previous = sim.ok(&["logs", "lively", "--previous"]);
    assert!(
        previous.contains("a run of the container")
            && previous.contains("Container app failed liveness probe, will be restarted"),
        "{previous}"
    );
    let events = sim.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=lively",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("Killing"), "{events}");
}

#[test]
fn a_startup_probe_holds_back_liveness_and_readiness_and_kills_when_it_fails() {
    let sim = Sim::start();
    let file = |name: &str| sim.dir.path().join(name).display().to_string();
    let counted = |name: &str, test: &str| {
        format!(
            "[sh, -c, \"echo x >> {}; {test}\"]",
            file(&format!("{name}-count"))
        )
    };
    sim.apply_yaml(
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: slow}}
spec:
  containers:
  - name: app
    image: busybox
    command: [sleep, "1000"]
    startupProbe: {{exec: {{command: {startup}}}, periodSeconds: 1, failureThreshold: 100000}}
    livenessProbe: {{exec: {{command: {liveness}}}, periodSeconds: 1, failureThreshold: 1}}
    readinessProbe: {{exec: {{command: {readiness}}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: never-starts}}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: busybox
    command: [sleep, "1000"]
    startupProbe: {{exec: {{command: [test, -f, {missing}]}}, periodSeconds: 1, failureThreshold: 2}}
"#,
            startup = counted("startup", &format!("test -f {}", file("started"))),
            liveness = counted("liveness", &format!("test -f {}", file("alive"))),
            readiness = counted("readiness", "true"),
            missing = file("missing"),
        ),
        &[],
    );
    let runs = |name: &str| {
        std::fs::read_to_string(file(&format!("{name}-count")))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    poll(|| runs("startup") >= 3, "three startup probes");
    // Until the startup probe succeeds, nothing else is probed (a liveness probe would
    // have failed: there is no `alive` file).
    assert_eq!(runs("liveness"), 0, "liveness probed before the start");
    assert_eq!(runs("readiness"), 0, "readiness probed before the start");
    assert_eq!(status(&sim, "slow", "started"), "false");
    assert_eq!(status(&sim, "slow", "ready"), "false");
    assert_eq!(status(&sim, "slow", "restartCount"), "0");

    std::fs::write(file("alive"), "").unwrap();
    std::fs::write(file("started"), "").unwrap();
    poll(
        || status(&sim, "slow", "started") == "true" && status(&sim, "slow", "ready") == "true",
        "started, then ready",
    );
    poll(
        || runs("liveness") > 0 && runs("readiness") > 0,
        "the liveness and readiness probes to run",
    );
    assert_eq!(status(&sim, "slow", "restartCount"), "0");

    // A startup probe that fails failureThreshold times kills the container; with
    // restartPolicy Never the pod fails.
    poll(
        || {
            sim.ok(&[
                "get",
                "pod",
                "never-starts",
                "-o",
                "jsonpath={.status.phase}",
            ]) == "Failed"
        },
        "the never-starting pod to fail",
    );
    assert_eq!(
        status(&sim, "never-starts", "state.terminated.exitCode"),
        "143"
    );
    assert_eq!(status(&sim, "never-starts", "started"), "false");
    assert_eq!(status(&sim, "never-starts", "restartCount"), "0");
    let messages = sim.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=never-starts",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        messages.contains("Container app failed startup probe, will be restarted"),
        "{messages}"
    );
}
