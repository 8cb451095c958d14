//! Users of the operator installed in the test cluster: their kubeconfigs,
//! `remora run --operator kube` as them, their RBAC grants, and what the
//! tests read back (RemoraSessions, reviews, the pod's web server and
//! ruleset). Included by `operator_incluster_kube.rs` and
//! `operator_api_kube.rs` next to `kube_sim.rs`; a test uses only part of it.
#![allow(dead_code)]

use super::kube_sim::*;
use remora_tests::bin_path;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The sim's kubeconfig with another bearer token: a user of its own.
pub fn kubeconfig_for(sim: &Sim, name: &str, token: &str) -> PathBuf {
    let admin = std::fs::read_to_string(&sim.kubeconfig).unwrap();
    let mut swapped = 0;
    let text: Vec<String> = admin
        .lines()
        .map(|line| match line.trim_start().strip_prefix("token: ") {
            Some(_) => {
                swapped += 1;
                format!("    token: {token}")
            }
            None => line.to_owned(),
        })
        .collect();
    assert_eq!(swapped, 1, "one user in {admin}");
    let path = sim.dir.path().join(format!("{name}.kubeconfig"));
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

/// `remora run --operator kube` as the user of `kubeconfig`, with no
/// operator address or token in its environment.
pub fn remora_as(kubeconfig: &Path, user: &str) -> Command {
    let mut command = Command::new(bin_path("remora").unwrap());
    command
        .args(["run", "--operator", "kube", "--kubeconfig"])
        .arg(kubeconfig)
        .env_remove("REMORA_OPERATOR_TOKEN")
        .env_remove("REMORA_OPERATOR")
        .env("REMORA_USER", user);
    command
}

pub fn sessions(sim: &Sim) -> Vec<serde_json::Value> {
    let json = sim.kubectl(&["get", "remorasessions", "-A", "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&json).unwrap()["items"]
        .as_array()
        .unwrap()
        .clone()
}

pub fn reviews(sim: &Sim) -> Vec<serde_json::Value> {
    let json = sim.kubectl(&["get", "--raw", "/remora-sim/reviews"]);
    serde_json::from_str::<serde_json::Value>(&json)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A deployment serving `dir` over HTTP on port 8080 of its pod.
pub fn web_server(sim: &Sim, name: &str, dir: &Path) {
    sim.deployment(
        name,
        &format!(
            "exec python3 -u -m http.server 8080 --directory {}",
            dir.display()
        ),
    );
    wait_ready(sim, name);
    poll(
        || {
            sim.kubectl(&["logs", &format!("deployment/{name}")])
                .contains("Serving HTTP")
        },
        "the pod's http.server",
    );
}

pub fn www(sim: &Sim, name: &str, who: &str) -> PathBuf {
    let dir = sim.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("who"), format!("{who}\n")).unwrap();
    dir
}

pub fn pod_ip(sim: &Sim, app: &str) -> String {
    sim.kubectl(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ])
}

/// `GET /who` on the pod's port 8080, with a header; `Err` when no answer.
pub fn get(ip: &str, header: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-H", header])
        .arg(format!("http://{ip}:8080/who"))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(text(&out.stdout).trim().to_owned())
    } else {
        Err(text(&out.stderr))
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `remora run --steal` of `user` with a header filter, serving `dir` on a
/// local port; stderr goes to `err`.
pub fn steal_as(kubeconfig: &Path, user: &str, filter: &str, dir: &Path, err: &Path) -> Reaped {
    let port = free_port();
    let child = remora_as(kubeconfig, user)
        .args([
            "-t",
            "deployment/web",
            "--steal",
            "--http-header-filter",
            filter,
        ])
        .args(["-p", &format!("{port}:8080"), "--"])
        .args(["python3", "-m", "http.server", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--directory"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(err).unwrap())
        .spawn()
        .unwrap();
    Reaped(child)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The pid of a process of the pod whose command line mentions `marker`.
pub fn pod_pid(marker: &Path) -> u32 {
    let marker = marker.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("http.server 8080") && cmdline.contains(&marker) {
            return pid;
        }
    }
    panic!("no process of the pod serving {marker}");
}

/// Every rule in the network namespace of `pid` (nftables, which also
/// holds iptables-nft's rules).
pub fn ruleset(pid: u32) -> String {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "nft", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// A Role and its RoleBinding for the sim's RBAC-checked user `user`.
pub fn grant(sim: &Sim, user: &str, namespace: &str, name: &str, rules: &str) {
    sim.apply(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {name}, namespace: {namespace}}}
rules:
{rules}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {name}-{user}, namespace: {namespace}}}
subjects: [{{kind: User, name: {user}, apiGroup: rbac.authorization.k8s.io}}]
roleRef: {{kind: Role, name: {name}, apiGroup: rbac.authorization.k8s.io}}
"#
    ));
}

/// The agent Jobs and pods the operator runs (in its namespace).
pub fn operator_agents(sim: &Sim) -> String {
    sim.kubectl(&[
        "get",
        "jobs,pods,secrets",
        "-n",
        OPERATOR_NS,
        "-l",
        AGENT_SELECTOR,
        "-o",
        "name",
    ])
}
