//! `serve --runtime containerd`: containers run through a real containerd + runc (Debian's
//! packages, installed by scripts/setup.sh) with no image: env, a configMap volume, the pod's
//! hostname and network, a PID namespace of their own, `kubectl exec` and exec probes through
//! `ctr task exec`; containerd's API (`ctr task ls`) gives the container's pid, the same one
//! remora's agent finds by the id in `/proc/*/cgroup`. Nothing is left after SIGTERM, nor
//! after a SIGKILL followed by a restart (containerd, its shims, the containers, the cgroups
//! runc makes in every v1 hierarchy).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{Sim, cgroup2_mount, pids_in_cgroup_segment, poll};

const POD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {k: from-the-configmap}
---
apiVersion: v1
kind: Pod
metadata: {name: boxed}
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "echo greeting=$GREETING; cat /data/config/k; echo; echo host=$(hostname) pid=$$; exec sleep 1000"]
    env: [{name: GREETING, value: hello}]
    volumeMounts: [{name: cfg, mountPath: /data/config}]
    readinessProbe: {exec: {command: [cat, /data/config/k]}, periodSeconds: 1}
  volumes: [{name: cfg, configMap: {name: cfg}}]
"#;

/// The container id (without `containerd://`) once the pod is ready.
fn ready_container(sim: &Sim) -> String {
    sim.apply_yaml(POD, &[]);
    sim.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/boxed",
        "--timeout=60s",
    ]);
    let id = sim.ok(&[
        "get",
        "pod",
        "boxed",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]);
    id.strip_prefix("containerd://")
        .unwrap_or_else(|| panic!("a containerd id: {id}"))
        .to_owned()
}

/// Directories of the run in the cgroup v1 hierarchies (a hybrid host has them).
fn v1_dirs(run: &str) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup").then(|| PathBuf::from(mount).join(run))
        })
        .filter(|d| d.exists())
        .collect()
}

/// Processes whose command line names `text` (containerd and its shims name the state dir).
fn processes_naming(text: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(text))
        })
        .collect()
}

#[test]
fn containers_run_through_containerd_and_runc_and_nothing_is_left() {
    let run_containerd_existed = Path::new("/run/containerd").exists();
    let mut sim = Sim::start_with(&["--runtime", "containerd"]);
    let id = ready_container(&sim);
    let logs = sim.ok(&["logs", "boxed"]);
    assert_eq!(
        logs.lines().collect::<Vec<_>>(),
        ["greeting=hello", "from-the-configmap", "host=boxed pid=1"],
        "env, volume, the pod's hostname, a PID namespace of its own"
    );
    // containerd's API knows the task and its pid; remora's agent finds the same by the id.
    let socket = sim.state_dir().join("containerd/containerd.sock");
    let tasks = Command::new("ctr")
        .arg("-a")
        .arg(&socket)
        .args(["-n", "k8s.io", "task", "ls"])
        .output()
        .unwrap();
    let tasks = String::from_utf8_lossy(&tasks.stdout).into_owned();
    let pid: u32 = tasks
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id.as_str())).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{id} in {tasks}"));
    assert_eq!(
        remora_agent::container::find_container_pid(Path::new("/proc"), &id).unwrap(),
        pid
    );
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .starts_with("sleep"),
        "the container's command"
    );
    assert_eq!(
        sim.ok(&[
            "exec",
            "boxed",
            "--",
            "sh",
            "-c",
            "echo $GREETING; hostname"
        ]),
        "hello\nboxed\n"
    );

    let uid = sim.ok(&["get", "pod", "boxed", "-o", "jsonpath={.metadata.uid}"]);
    let run = format!("remora-kube-sim-{}", sim.pid());
    sim.ok(&["delete", "pod", "boxed", "--timeout=30s"]);
    poll(
        || pids_in_cgroup_segment(&id).is_empty(),
        "the container's processes to end",
    );
    poll(
        || v1_dirs(&format!("{run}/pod{uid}")).is_empty(),
        "the pod's v1 cgroups to go",
    );

    let state = sim.state_dir();
    sim.terminate();
    assert!(
        processes_naming(&state.display().to_string()).is_empty(),
        "containerd and its shims are gone"
    );
    assert!(
        !state.exists(),
        "the state dir (containerd's root) is removed"
    );
    assert!(!cgroup2_mount().join(&run).exists(), "no v2 cgroup left");
    assert_eq!(v1_dirs(&run), Vec::<PathBuf>::new(), "no v1 cgroup left");
    assert_eq!(
        Path::new("/run/containerd").exists(),
        run_containerd_existed,
        "containerd's /run stays private"
    );
}

#[test]
fn a_restart_sweeps_what_a_sigkilled_containerd_run_left() {
    let mut sim = Sim::start_with(&["--runtime", "containerd"]);
    let id = ready_container(&sim);
    let state = sim.state_dir();
    let run = format!("remora-kube-sim-{}", sim.pid());
    sim.child.kill().unwrap();
    sim.child.wait().unwrap();
    assert!(
        !processes_naming(&state.display().to_string()).is_empty(),
        "SIGKILL leaves containerd and its shim behind"
    );
    assert!(!pids_in_cgroup_segment(&id).is_empty(), "and the container");
    let _next = Sim::start();
    assert!(
        processes_naming(&state.display().to_string()).is_empty(),
        "the next start kills containerd and the shims"
    );
    assert!(pids_in_cgroup_segment(&id).is_empty(), "and the container");
    assert!(!state.exists(), "and removes the state dir");
    assert!(!cgroup2_mount().join(&run).exists(), "and the v2 cgroups");
    assert_eq!(v1_dirs(&run), Vec::<PathBuf>::new(), "and the v1 cgroups");
}

#[test]
fn kubectl_debug_runs_an_ephemeral_container_in_the_targets_pid_namespace() {
    let sim = Sim::start_with(&["--runtime", "containerd"]);
    sim.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: target}
spec:
  containers:
  - {name: app, image: busybox, command: [sh, -c, "exec sleep 1000"]}
"#,
        &[],
    );
    sim.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/target",
        "--timeout=60s",
    ]);
    sim.ok(&[
        "debug",
        "pod/target",
        "--image=busybox",
        "--target=app",
        "-c",
        "dbg",
        "--",
        "sh",
        "-c",
        "echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline); exec sleep 1000",
    ]);
    poll(
        || {
            !sim.ok(&[
                "get",
                "pod",
                "target",
                "-o",
                "jsonpath={.status.ephemeralContainerStatuses[0].state.running.startedAt}",
            ])
            .is_empty()
        },
        "the ephemeral container to run",
    );
    poll(
        || {
            let out = sim.kubectl(&["logs", "target", "-c", "dbg"]);
            String::from_utf8_lossy(&out.stdout).contains("pid1=sleep 1000")
        },
        "the target's process as the debug container's pid 1",
    );
    // The pod's own status is untouched by it.
    assert_eq!(
        sim.ok(&[
            "get",
            "pod",
            "target",
            "-o",
            "jsonpath={.status.containerStatuses[*].name} {.status.phase}",
        ]),
        "app Running"
    );
}
