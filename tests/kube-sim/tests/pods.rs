//! What a pod looks like from the node, held to the real `kubectl` and to remora's agent:
//! container ids, cgroups.

mod common;

use std::path::Path;

use common::{Sim, pids_in_cgroup_segment, poll};

const CGROUP_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: cg}
spec:
  containers:
  - name: main
    image: busybox
    # The setsid'ed sleep leaves the process group: only the cgroup still holds it.
    command: ["sh", "-c", "setsid sleep 302 & exec sleep 301"]
"#;

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn container_processes_live_in_a_cgroup_named_by_the_container_id() {
    let sim = Sim::start();
    sim.apply_yaml(CGROUP_POD, &[]);
    sim.ok(&["wait", "--for=condition=Ready", "pod/cg", "--timeout=30s"]);
    let pod = sim.json(&["get", "pod", "cg"]);
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let container_id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = container_id
        .strip_prefix("remora-sim://")
        .unwrap_or_else(|| panic!("containerID {container_id:?} is remora-sim://<id>"))
        .to_owned();

    // remora's agent finds the container's main process by the id, as on a real node.
    let mut main_pid = 0;
    poll(
        || {
            main_pid =
                remora_agent::container::find_container_pid(Path::new("/proc"), &container_id)
                    .unwrap_or(0);
            cmdline(main_pid).trim() == "sleep 301"
        },
        "the agent to find `sleep 301` by the container id",
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{main_pid}/cgroup")).unwrap();
    let expected = format!("0::/remora-kube-sim-{}/pod{uid}/{id}", sim.pid());
    assert!(
        cgroup.lines().any(|l| l == expected),
        "{cgroup:?} has {expected:?}"
    );
    poll(
        || {
            pids_in_cgroup_segment(&id)
                .iter()
                .any(|p| cmdline(*p).trim() == "sleep 302")
        },
        "the setsid'ed child in the same cgroup",
    );

    sim.ok(&["delete", "pod", "cg", "--wait=true"]);
    let pod_cgroup = sim.cgroup().join(format!("pod{uid}"));
    poll(
        || !pod_cgroup.exists() && pids_in_cgroup_segment(&id).is_empty(),
        "the pod's cgroup and every process in it (also the one outside the process group) to be gone",
    );
    assert!(
        sim.cgroup().is_dir(),
        "the run's cgroup stays until shutdown"
    );
}

/// The controller's limit file for `pid`: its cgroup v2 directory's when the controller is
/// there, else (a hybrid host) the one of its cgroup in the controller's v1 hierarchy.
fn limit_file(pid: u32, controller: &str, v2_file: &str, v1_file: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let v2_path = common::cgroup2_mount()
        .join(v2.trim_start_matches('/'))
        .join(v2_file);
    if v2_path.exists() {
        return std::fs::read_to_string(v2_path).unwrap().trim().to_owned();
    }
    let v1 = cgroups
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_owned())
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup in {cgroups}"));
    let path = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(v1.trim_start_matches('/'))
        .join(v1_file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// `resources.limits` reach the container's cgroup: memory as its limit (a container that
/// allocates past it is OOM-killed: exit code 137), cpu as a CFS quota per 100 ms.
#[test]
fn resource_limits_are_written_to_the_containers_cgroup_and_enforced() {
    let sim = Sim::start();
    sim.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: limited}
spec:
  restartPolicy: Never
  containers:
  - name: capped
    image: busybox
    command: [sleep, "303"]
    resources: {limits: {memory: 64Mi, cpu: 250m}}
  - name: hog
    image: python
    command: [python3, -c, "b = bytearray(256 * 1024 * 1024); print('survived', len(b))"]
    resources: {limits: {memory: 32Mi}}
"#,
        &[],
    );
    let mut capped_id = String::new();
    poll(
        || {
            let pod = sim.json(&["get", "pod", "limited"]);
            let statuses = pod["status"]["containerStatuses"].as_array().cloned();
            let find = |name: &str| {
                statuses
                    .iter()
                    .flatten()
                    .find(|s| s["name"] == name)
                    .cloned()
            };
            let hog_done = find("hog").is_some_and(|s| s["state"]["terminated"].is_object());
            capped_id = find("capped")
                .and_then(|s| s["containerID"].as_str().map(str::to_owned))
                .unwrap_or_default();
            hog_done && !capped_id.is_empty()
        },
        "the hog to end and the capped container to run",
    );
    let pod = sim.json(&["get", "pod", "limited"]);
    let hog = pod["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "hog")
        .unwrap();
    assert_eq!(
        hog["state"]["terminated"]["exitCode"], 137,
        "killed by the OOM killer: {hog}"
    );
    assert!(
        !sim.ok(&["logs", "limited", "-c", "hog"])
            .contains("survived")
    );

    let id = capped_id.strip_prefix("remora-sim://").unwrap().to_owned();
    let mut pid = 0;
    poll(
        || {
            pid = pids_in_cgroup_segment(&id)
                .into_iter()
                .find(|p| cmdline(*p).trim() == "sleep 303")
                .unwrap_or(0);
            pid != 0
        },
        "the capped container's process",
    );
    let memory = limit_file(pid, "memory", "memory.max", "memory.limit_in_bytes");
    assert_eq!(memory, (64 * 1024 * 1024).to_string());
    let quota = limit_file(pid, "cpu", "cpu.max", "cpu.cfs_quota_us");
    assert!(
        quota == "25000" || quota == "25000 100000",
        "250m is 25 ms per 100 ms: {quota}"
    );
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    sim.ok(&["delete", "pod", "limited", "--wait=true"]);
    for controller in ["memory", "cpu"] {
        let v1 = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(format!("remora-kube-sim-{}/pod{uid}", sim.pid()));
        poll(|| !v1.exists(), "the pod's v1 cgroups to be removed");
    }
}

#[test]
fn a_failed_containers_log_tail_is_its_termination_message_when_asked() {
    let sim = Sim::start();
    sim.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: failing}
spec:
  restartPolicy: Never
  containers:
  - name: fallback
    image: busybox
    terminationMessagePolicy: FallbackToLogsOnError
    command: [sh, -c, "for i in $(seq 1 100); do echo line $i; done; echo 'cannot enter the target' >&2; exit 3"]
  - name: plain
    image: busybox
    command: [sh, -c, "echo not shown; exit 4"]
  - name: fine
    image: busybox
    terminationMessagePolicy: FallbackToLogsOnError
    command: [sh, -c, "echo all good"]
"#,
        &[],
    );
    let terminated = |name: &str| {
        let pod = sim.json(&["get", "pod", "failing"]);
        pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name)
            .map(|s| s["state"]["terminated"].clone())
            .filter(serde_json::Value::is_object)
    };
    poll(
        || {
            ["fallback", "plain", "fine"]
                .iter()
                .all(|c| terminated(c).is_some())
        },
        "all three containers to end",
    );
    let fallback = terminated("fallback").unwrap();
    assert_eq!(fallback["exitCode"], 3, "{fallback}");
    let message = fallback["message"].as_str().unwrap_or_default();
    // The last 80 lines of the log: lines 22..=100 and the error.
    assert!(
        message.ends_with("line 100\ncannot enter the target"),
        "{message:?}"
    );
    assert!(message.starts_with("line 22\n"), "{message:?}");
    let plain = terminated("plain").unwrap();
    assert_eq!(plain["exitCode"], 4);
    assert!(plain["message"].is_null(), "no policy, no message: {plain}");
    let fine = terminated("fine").unwrap();
    assert!(
        fine["message"].is_null(),
        "success keeps no message: {fine}"
    );
}

/// Containers that start and end at the same moment publish their statuses
/// at once: every change must land (a lost one left a pod `Running` with a
/// container that had ended, forever, and waits on it timed out).
#[test]
fn containers_ending_at_once_all_show_their_end() {
    const N: usize = 48;
    let sim = Sim::start();
    let containers: String = (0..N)
        .map(|i| {
            format!(
                "  - {{name: c{i}, image: busybox, command: [sh, -c, 'sleep 1; exit {}']}}\n",
                i % 3
            )
        })
        .collect();
    sim.apply_yaml(
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: many}}\nspec:\n  restartPolicy: Never\n  containers:\n{containers}"
        ),
        &[],
    );
    let ended = || {
        let pod = sim.json(&["get", "pod", "many"]);
        pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["state"]["terminated"].is_object())
            .count()
    };
    poll(|| ended() == N, "every container's end to show");
    let pod = sim.json(&["get", "pod", "many"]);
    assert_eq!(pod["status"]["phase"], "Failed", "{}", pod["status"]);
    for (i, status) in pod["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(status["name"], format!("c{i}"));
        assert_eq!(status["state"]["terminated"]["exitCode"], i % 3, "{status}");
    }
}
