//! `pods/exec` held to the real clients: `kubectl exec` (WebSocket v5.channel.k8s.io) with
//! stdout, stderr, stdin and exit codes, and kube-rs `Api::<Pod>::exec`; the command runs in
//! the container's namespaces (hostname) and mounts (a configMap volume).

mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
};

use common::Sim;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    api::AttachParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {key: from-the-volume}
---
apiVersion: v1
kind: Pod
metadata: {name: box}
spec:
  volumes: [{name: cfg, configMap: {name: cfg}}]
  containers:
  - name: main
    image: busybox
    command: [sleep, "1000"]
    env: [{name: GREETING, value: hi}]
    volumeMounts: [{name: cfg, mountPath: /etc/remora-sim-exec}]
"#;

fn kubectl(sim: &Sim, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&sim.kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn kubectl_exec_runs_in_the_container() {
    let sim = Sim::start();
    sim.apply_yaml(POD, &[]);
    sim.ok(&["wait", "--for=condition=Ready", "pod/box", "--timeout=30s"]);
    let out = kubectl(
        &sim,
        &[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo $(hostname) $GREETING $(cat /etc/remora-sim-exec/key); echo oops >&2; exit 3",
        ],
        "",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "box hi from-the-volume\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("oops\n"), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(3),
        "kubectl exits with the command's code"
    );

    let out = kubectl(
        &sim,
        &["exec", "-i", "box", "--", "tr", "a-z", "A-Z"],
        "from stdin\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "FROM STDIN\n");
}

#[tokio::test]
async fn kube_rs_exec() {
    let sim = Sim::start();
    sim.apply_yaml(POD, &[]);
    sim.ok(&["wait", "--for=condition=Ready", "pod/box", "--timeout=30s"]);
    let kubeconfig = Kubeconfig::read_from(&sim.kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(Client::try_from(config).unwrap());
    let mut attached = pods
        .exec(
            "box",
            ["cat"],
            &AttachParams::default().stdin(true).stderr(false),
        )
        .await
        .expect("exec");
    let mut stdin = attached.stdin().unwrap();
    let mut stdout = attached.stdout().unwrap();
    stdin.write_all(b"through kube-rs\n").await.unwrap();
    // Its stdin is half of a split stream: shutdown, not drop, ends it (v5 close signal).
    stdin.shutdown().await.unwrap();
    let mut out = String::new();
    stdout.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "through kube-rs\n");
    let status = attached.take_status().unwrap().await.expect("a status");
    assert_eq!(status.status.as_deref(), Some("Success"));
    attached.join().await.expect("the session ends cleanly");
}
