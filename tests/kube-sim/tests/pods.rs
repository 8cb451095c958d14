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
