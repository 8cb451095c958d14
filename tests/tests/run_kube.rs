//! End-to-end tests of the Kubernetes platform against the test cluster
//! `remora-kube-sim`: `remora run --target deployment/web` starts the agent Job
//! (the sim runs its `remora-agent` command from target/debug as a host
//! process), reaches it through `pods/portforward`, and the command sees the
//! pod's environment, reads a pod file and connects out; the Job is deleted
//! afterwards, also when the command is killed. Failures say what was found.
//!
//! Needs root (cgroups, setns) and the workspace binaries `remora`,
//! `remora-agent`, `libremora_layer.so` and `remora-kube-sim`.
//!
//! The sim's pods have their own network namespace (so a server on the pod's
//! loopback is reachable only through the agent) but share the host's
//! filesystem: the pod file is hidden from the command by a private mount
//! namespace instead (docs/kubernetes.md).

use remora_tests::{bin_path, require_sandbox};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "support/kube_sim.rs"]
mod kube_sim;

use kube_sim::*;

/// A directory under /srv (not local by default, so remora reads it from the
/// target), removed on drop.
struct PodDir(PathBuf);

impl Drop for PodDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `remora run` inside a private mount namespace where `hidden` is an empty
/// tmpfs: the command can read what is there only through the agent.
fn run_hiding(sim: &Sim, hidden: &Path, target: &str, script: &str) -> Output {
    assert!(!script.contains('\''), "the script is single-quoted");
    let remora = bin_path("remora").unwrap();
    let inner = format!(
        "mount -t tmpfs remora-e2e-hide {hidden} && test ! -e {hidden}/hello.txt && \
         exec {remora} run --kubeconfig {kc} -t {target} -- sh -c '{script}'",
        hidden = hidden.display(),
        remora = remora.display(),
        kc = sim.kubeconfig.display(),
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &inner])
        .output()
        .unwrap()
}

#[test]
fn a_deployment_target_gives_the_command_the_pods_env_files_and_network_then_the_job_goes() {
    require_sandbox!();
    let sim = Sim::start(true);
    let pod_dir = PodDir(PathBuf::from(format!(
        "/srv/remora-kube-e2e-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&pod_dir.0).unwrap();
    std::fs::write(pod_dir.0.join("hello.txt"), "a file of the pod\n").unwrap();
    // A download of many data frames through the port-forward (in varied
    // bytes, so a lost, doubled or reordered chunk changes the digest).
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let big: Vec<u8> = (0..8_000_003)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect();
    std::fs::write(pod_dir.0.join("big.bin"), &big).unwrap();
    let big_digest = Command::new("sha256sum")
        .arg(pod_dir.0.join("big.bin"))
        .output()
        .unwrap();
    let big_digest = text(&big_digest.stdout);
    let big_digest = big_digest.split_whitespace().next().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    sim.deployment(
        "web",
        &format!(
            "exec python3 -u -m http.server {port} --bind 127.0.0.1 --directory {}",
            pod_dir.0.display()
        ),
    );
    wait_ready(&sim, "web");
    poll(
        || {
            sim.kubectl(&["logs", "deployment/web"])
                .contains("Serving HTTP")
        },
        "the pod's http.server",
    );
    // The pod has its own network namespace: its loopback server is not
    // reachable from here, only from inside the pod.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the pod's port {port} is reachable locally: the outgoing check would prove nothing"
    );

    let script = format!(
        "echo GREETING=$GREETING; cat {}/hello.txt; \
         curl -sS http://127.0.0.1:{port}/hello.txt; uname -n; \
         curl -sS http://127.0.0.1:{port}/big.bin | sha256sum | head -c 64; echo",
        pod_dir.0.display()
    );
    let out = run_hiding(&sim, &pod_dir.0, "deployment/web", &script);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "remora run failed: {stdout}\n{}",
        text(&out.stderr)
    );
    let pod = sim.kubectl(&["get", "pods", "-l", "app=web", "-o", "name"]);
    let pod = pod.trim().trim_start_matches("pod/");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "GREETING=hello-from-the-pod",
            "a file of the pod",
            "a file of the pod",
            pod,
            big_digest,
        ],
        "{}",
        text(&out.stderr)
    );
    assert!(
        std::env::var("GREETING").is_err(),
        "the variable comes only from the pod"
    );
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the agent Job and pod to be deleted after the run",
    );

    // `remora ls` lists the deployment and its pod.
    let out = sim
        .remora(&["ls", "--platform", "kubernetes", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let targets: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["target"].as_str())
        .collect();
    assert!(targets.contains(&"deployment/web"), "{targets:?}");
    assert!(
        targets.iter().any(|t| t.starts_with("pod/web-")),
        "{targets:?}"
    );

    // The phases, as `remora ext --json` reports them to an IDE; with no
    // process started, the intproxy gives up after a second and deletes the Job.
    let out = sim
        .remora(&["ext", "--json", "--wait-timeout", "1", "-t", "deploy/web"])
        .output()
        .unwrap();
    let lines = text(&out.stdout);
    assert!(out.status.success(), "{lines}\n{}", text(&out.stderr));
    let progress: Vec<String> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "progress")
        .filter_map(|v| v["message"].as_str().map(str::to_owned))
        .collect();
    let position = |needle: &str| {
        progress
            .iter()
            .position(|m| m.contains(needle))
            .unwrap_or_else(|| panic!("no phase {needle:?} in {progress:#?}"))
    };
    let order = [
        position("resolving deployment/web in namespace default"),
        position("creating the agent job remora-agent-"),
        position("waiting for the agent's pod"),
        position("connecting through port-forward"),
    ];
    assert!(order.is_sorted(), "{progress:#?}");
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the agent Job to be deleted once the intproxy gave up",
    );

    // A command killed by SIGTERM: the Job goes too.
    let mut child = sim
        .remora(&["run", "-t", "deployment/web", "--", "sleep", "60"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    poll(
        || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep"),
        "remora run to exec sleep",
    );
    assert!(!sim.agent_objects().trim().is_empty(), "the agent runs");
    // Its token is in a Secret the Job refers to and owns, not in the Job.
    let of_job = |path: &str| {
        sim.kubectl(&[
            "get",
            "jobs",
            "-l",
            AGENT_SELECTOR,
            "-o",
            &format!("jsonpath={path}"),
        ])
        .trim()
        .to_owned()
    };
    let job = of_job("{.items[0].metadata.name}");
    assert!(job.starts_with("remora-agent-"), "{job}");
    assert_eq!(
        of_job("{.items[0].spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef.name}"),
        job
    );
    assert_eq!(
        of_job("{.items[0].spec.template.spec.containers[0].env[0].value}"),
        ""
    );
    let owner = sim.kubectl(&[
        "get",
        "secret",
        &job,
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
    ]);
    assert_eq!(owner.trim(), format!("Job/{job}"));
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the agent Job to be deleted after SIGTERM",
    );
}

#[test]
fn failures_say_what_was_found_and_leave_no_agent() {
    require_sandbox!();
    // No remora-agent on the containers' PATH: the agent cannot start.
    let sim = Sim::start(false);
    sim.deployment("web", "exec sleep 600");
    // Never ready (a container without probes counts as ready while it
    // runs, so a crashing one would be ready for an instant).
    sim.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: unready}
spec:
  replicas: 1
  selector: {matchLabels: {app: unready}}
  template:
    metadata: {labels: {app: unready}}
    spec:
      containers:
      - name: app
        image: python:3
        command: ["sh", "-c", "exec sleep 600"]
        readinessProbe: {exec: {command: ["false"]}, periodSeconds: 1}
"#,
    );
    wait_ready(&sim, "web");
    let fail = |args: &[&str]| {
        let out = sim.remora(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        text(&out.stderr)
    };

    let err = fail(&["run", "-t", "deployment/web/container/worker", "--", "true"]);
    assert!(
        says(
            &err,
            "has no container `worker` (named in the target); its containers: app"
        ),
        "{err}"
    );
    let err = fail(&["run", "-t", "deployment/nope", "--", "true"]);
    assert!(
        says(&err, "deployment/nope not found in namespace default"),
        "{err}"
    );
    let err = fail(&["run", "-n", "shop", "-t", "deployment/web", "--", "true"]);
    assert!(
        says(&err, "deployment/web not found in namespace shop"),
        "{err}"
    );
    poll(
        || {
            sim.kubectl(&["get", "pods", "-l", "app=unready", "-o", "name"])
                .contains("pod/")
        },
        "the unready deployment's pod",
    );
    let err = fail(&["run", "-t", "deployment/unready", "--", "true"]);
    assert!(
        says(
            &err,
            "deployment/unready in namespace default has no ready pod: unready-"
        ),
        "{err}"
    );

    // An agent that cannot run (its image's command is not there): the
    // error says so at once, and the Job is deleted.
    let err = fail(&["run", "-t", "deployment/web", "--", "true"]);
    assert!(
        says(
            &err,
            "the agent container of image ghcr.io/remora-dev/remora-agent:0.1.0 cannot start: RunContainerError"
        ),
        "{err}"
    );
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the failed agent's Job to be deleted",
    );
}

#[test]
fn every_target_kind_the_sim_runs_reaches_its_pod() {
    require_sandbox!();
    let sim = Sim::start(true);
    let template = |app: &str| {
        format!(
            r#"
    metadata: {{labels: {{app: {app}}}}}
    spec:
      containers:
      - name: app
        image: busybox
        command: ["sh", "-c", "exec sleep 600"]
        env: [{{name: WHO, value: {app}}}]"#
        )
    };
    sim.apply(&format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:{db}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: cache}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: cache}}}}
  template:{cache}
---
apiVersion: v1
kind: Service
metadata: {{name: cache}}
spec:
  selector: {{app: cache}}
  ports: [{{port: 80}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: migrate}}
spec:
  template:{migrate}
      restartPolicy: Never
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: nightly}}
spec:
  schedule: "0 3 * * *"
  suspend: true
  jobTemplate:
    spec:
      template:{nightly}
          restartPolicy: Never
---
apiVersion: v1
kind: Pod
metadata: {{name: solo, labels: {{app: solo}}}}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "exec sleep 600"]
    env: [{{name: WHO, value: solo}}]
  - name: sidecar
    image: busybox
    command: ["sh", "-c", "exec sleep 600"]
    env: [{{name: WHO, value: solo-sidecar}}]
"#,
        db = template("db"),
        cache = template("cache"),
        migrate = template("migrate"),
        nightly = template("nightly").replace("\n", "\n    "),
    ));
    // The suspended CronJob's Job, made by hand with kubectl (owned by the CronJob; kubectl
    // POSTs it as protobuf, which the test cluster decodes).
    let kc = sim.kubeconfig.display().to_string();
    let made = Command::new("kubectl")
        .args([
            "--kubeconfig",
            &kc,
            "create",
            "job",
            "--from=cronjob/nightly",
            "nightly-by-hand",
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    for pod in ["pod/db-0", "pod/solo"] {
        sim.kubectl(&["wait", "--for=condition=Ready", pod, "--timeout=60s"]);
    }
    for app in ["cache", "migrate", "nightly"] {
        sim.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            &format!("app={app}"),
            "--timeout=60s",
        ]);
    }
    for (target, who) in [
        ("job/migrate", "migrate"),
        ("cronjob/nightly", "nightly"),
        ("statefulset/db", "db"),
        ("sts/db", "db"),
        ("replicaset/cache", "cache"),
        ("service/cache", "cache"),
        ("pod/solo", "solo"),
        ("pod/solo/container/sidecar", "solo-sidecar"),
    ] {
        let out = sim
            .remora(&["run", "-t", target, "--", "sh", "-c", "echo $WHO"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{target}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), who, "{target}");
    }
    // Names resolve as in the pod: the cluster DNS gives the service's cluster IP (getent
    // reads only this machine's files without remora, so nothing asks a real DNS server).
    let cluster_ip = sim.kubectl(&[
        "get",
        "service",
        "cache",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let out = sim
        .remora(&[
            "run",
            "-t",
            "replicaset/cache",
            "--",
            "sh",
            "-c",
            "getent -s files ahosts cache.default.svc.cluster.local | head -1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).split_whitespace().next(),
        Some(cluster_ip.trim()),
        "{}",
        text(&out.stdout)
    );
    poll(
        || sim.agent_objects().trim().is_empty(),
        "every agent Job to be deleted",
    );
}

#[test]
fn targetless_runs_the_command_from_an_agent_pod_of_its_own() {
    require_sandbox!();
    let sim = Sim::start(true);
    // The agent listens on 47101 in its pod's network namespace only.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 47101)).is_err(),
        "something listens on 47101 here: the check would prove nothing"
    );
    let script = "uname -n; python3 -c 'import socket; \
                  socket.create_connection((\"127.0.0.1\", 47101), 5); print(\"connected\")'";
    let out = sim
        .remora(&["run", "-t", "targetless", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("remora-agent-") && lines[1] == "connected",
        "{stdout}\n{}",
        text(&out.stderr)
    );
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the targetless agent pod to be deleted",
    );
}

/// Deployment `api`: python's http.server on port 8080 serving a `who` file
/// saying "the pod"; returns a local directory whose `who` says "this machine"
/// (for the local server) and the pod's IP.
fn pod_web_server(sim: &Sim) -> (std::path::PathBuf, String) {
    let pod_www = sim.dir.path().join("pod-www");
    let local_www = sim.dir.path().join("local-www");
    for (dir, who) in [(&pod_www, "the pod"), (&local_www, "this machine")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("who"), format!("{who}\n")).unwrap();
    }
    sim.deployment(
        "api",
        &format!(
            "exec python3 -u -m http.server 8080 --directory {}",
            pod_www.display()
        ),
    );
    wait_ready(sim, "api");
    poll(
        || {
            sim.kubectl(&["logs", "deployment/api"])
                .contains("Serving HTTP")
        },
        "the pod's http.server",
    );
    let ip = sim.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=api",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    (local_www, ip)
}

#[test]
fn a_filtered_steal_takes_only_matching_requests_sent_to_the_pod_ip() {
    require_sandbox!();
    let sim = Sim::start(true);
    let (local_www, ip) = pod_web_server(&sim);
    let get = |header: Option<&str>| {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "5"]);
        if let Some(h) = header {
            curl.args(["-H", h]);
        }
        let out = curl.arg(format!("http://{ip}:8080/who")).output().unwrap();
        text(&out.stdout).trim().to_owned()
    };
    assert_eq!(get(None), "the pod");

    let local_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = sim
        .remora(&[
            "run",
            "-t",
            "deployment/api",
            "--steal",
            "--http-header-filter",
            "x-user: me",
            "-p",
            &format!("{local_port}:8080"),
            "--",
            "python3",
            "-m",
            "http.server",
            &local_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            local_www.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stolen = Instant::now();
    while get(Some("x-user: me")) != "this machine" {
        if stolen.elapsed() > DEADLINE {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let _ = child.wait();
            panic!("the matching request never reached the local server");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(Some("x-user: someone-else")), "the pod");
    assert_eq!(get(None), "the pod");
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the agent Job to be deleted",
    );
    assert_eq!(get(Some("x-user: me")), "the pod", "the redirect is gone");
}

#[test]
fn a_pod_run_by_containerd_and_runc_is_reached_like_any_other() {
    require_sandbox!();
    // Its files live in the container's own rootfs: /data does not exist here.
    assert!(
        !Path::new("/data/www").exists(),
        "/data/www exists here: the file check would prove nothing"
    );
    let sim = Sim::start_with(true, &["--runtime", "containerd"]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    sim.deployment(
        "web",
        &format!(
            "mkdir -p /data/www && echo a file of the container > /data/www/hello.txt && \
             exec python3 -u -m http.server {port} --bind 127.0.0.1 --directory /data/www"
        ),
    );
    wait_ready(&sim, "web");
    poll(
        || {
            sim.kubectl(&["logs", "deployment/web"])
                .contains("Serving HTTP")
        },
        "the pod's http.server",
    );
    let out = sim
        .remora(&[
            "run",
            "-t",
            "deployment/web",
            "--",
            "sh",
            "-c",
            &format!(
                "echo GREETING=$GREETING; cat /data/www/hello.txt; \
                 curl -sS http://127.0.0.1:{port}/hello.txt; uname -n"
            ),
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let pod = sim.kubectl(&["get", "pods", "-l", "app=web", "-o", "name"]);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "GREETING=hello-from-the-pod",
            "a file of the container",
            "a file of the container",
            pod.trim().trim_start_matches("pod/"),
        ],
        "{}",
        text(&out.stderr)
    );
    let id = sim.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].status.containerStatuses[0].containerID}",
    ]);
    assert!(id.starts_with("containerd://"), "{id}");
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the agent Job and pod to be deleted after the run",
    );
}

#[test]
fn the_ephemeral_container_agent_shares_the_target_containers_pid_namespace_under_containerd() {
    require_sandbox!();
    // containerd gives each container a PID namespace; the ephemeral agent joins its
    // target's (`--target pid/1`), as on a real node.
    let sim = Sim::start_with(true, &["--runtime", "containerd"]);
    sim.deployment(
        "web",
        "mkdir -p /data && echo only-in-the-container > /data/f.txt && exec sleep 600",
    );
    wait_ready(&sim, "web");
    let config = sim.dir.path().join("remora.toml");
    std::fs::write(&config, "[agent]\nephemeral = true\n").unwrap();
    let out = sim
        .remora(&[
            "run",
            "-f",
            config.to_str().unwrap(),
            "-t",
            "deployment/web",
            "--",
            "sh",
            "-c",
            "echo GREETING=$GREETING; cat /data/f.txt; uname -n",
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let pod = sim.kubectl(&["get", "pods", "-l", "app=web", "-o", "name"]);
    let pod = pod.trim().trim_start_matches("pod/");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["GREETING=hello-from-the-pod", "only-in-the-container", pod],
        "{}",
        text(&out.stderr)
    );
    // The agent ran as an ephemeral container of the target pod, not as a Job.
    let ephemeral = sim.kubectl(&[
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.ephemeralContainerStatuses[0].containerID}",
    ]);
    assert!(ephemeral.starts_with("containerd://"), "{ephemeral}");
    assert!(
        sim.kubectl(&["get", "jobs", "-o", "name"])
            .trim()
            .is_empty()
    );
}

/// The Argo Rollouts CRD, as far as remora reads it (no Argo controller runs:
/// the tests create the ReplicaSets it would).
const ROLLOUT_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: rollouts.argoproj.io}
spec:
  group: argoproj.io
  scope: Namespaced
  names: {kind: Rollout, plural: rollouts, singular: rollout, shortNames: [ro]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

/// A ReplicaSet owned by rollout `rollout` (uid `uid`), as the Argo
/// controller makes them: the pod-template hash as a label, WHO=`who`.
fn rollout_replicaset(
    name: &str,
    rollout: &str,
    uid: &str,
    app: &str,
    hash: &str,
    who: &str,
) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: {name}
  labels: {{app: {app}, rollouts-pod-template-hash: {hash}}}
  ownerReferences:
  - {{apiVersion: argoproj.io/v1alpha1, kind: Rollout, name: {rollout}, uid: {uid}, controller: true, blockOwnerDeletion: true}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {app}, rollouts-pod-template-hash: {hash}}}}}
  template:
    metadata: {{labels: {{app: {app}, rollouts-pod-template-hash: {hash}}}}}
    spec:
      containers:
      - name: app
        image: busybox
        command: ["sh", "-c", "exec sleep 600"]
        env: [{{name: WHO, value: {who}}}]
"#
    )
}

#[test]
fn a_rollout_target_enters_a_pod_of_the_rollouts_own_stable_replicaset() {
    require_sandbox!();
    let sim = Sim::start(true);
    sim.apply(ROLLOUT_CRD);
    sim.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/rollouts.argoproj.io",
        "--timeout=60s",
    ]);
    sim.apply(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: shop}
spec:
  replicas: 1
  workloadRef: {apiVersion: apps/v1, kind: Deployment, name: shop}
  strategy: {canary: {steps: [{setWeight: 20}]}}
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: api}
spec:
  replicas: 1
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: app, image: busybox}]
  strategy: {canary: {steps: [{setWeight: 20}]}}
"#,
    );
    let uid = |name: &str| sim.kubectl(&["get", "rollout", name, "-o", "jsonpath={.metadata.uid}"]);
    let (shop_uid, api_uid) = (uid("shop"), uid("api"));
    // rollout/api: the old ReplicaSet still runs (Argo's scaleDownDelaySeconds)
    // after the newer one became stable.
    sim.apply(&rollout_replicaset(
        "api-5d4c",
        "api",
        &api_uid,
        "api",
        "5d4c",
        "api-previous",
    ));
    sim.apply(&rollout_replicaset(
        "api-7f9c",
        "api",
        &api_uid,
        "api",
        "7f9c",
        "api-stable",
    ));
    sim.apply(&rollout_replicaset(
        "shop-6b8f",
        "shop",
        &shop_uid,
        "shop",
        "6b8f",
        "shop-rollout",
    ));
    sim.kubectl(&[
        "patch",
        "rollout",
        "api",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"stableRS": "7f9c"}}"#,
    ]);
    for app in ["api", "shop"] {
        sim.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            &format!("app={app}"),
            "--timeout=60s",
        ]);
    }
    // The Deployment that the workloadRef rollout takes its template from,
    // created once the rollout's pod is older (creation times have seconds):
    // Argo does not scale it down by default (`scaleDown: never`), so its pod
    // matches the selector too, and picking by selector and age alone would
    // enter the rollout's pod for deployment/shop.
    let rollout_pod_created = sim.kubectl(&[
        "get",
        "pod",
        "-l",
        "app=shop",
        "-o",
        "jsonpath={.items[0].metadata.creationTimestamp}",
    ]);
    poll(
        || {
            let now = Command::new("date")
                .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
                .output()
                .unwrap();
            text(&now.stdout).trim() > rollout_pod_created.trim()
        },
        "the clock to pass the rollout pod's creation second",
    );
    sim.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers:
      - name: app
        image: busybox
        command: ["sh", "-c", "exec sleep 600"]
        env: [{name: WHO, value: the-deployment}]
"#,
    );
    wait_ready(&sim, "shop");
    // `deployment/shop`: its selector also matches the rollout's pod, which
    // may be the older one; the Deployment's own ReplicaSet's pod is entered.
    for (target, who) in [
        ("rollout/api", "api-stable"),
        ("ro/shop", "shop-rollout"),
        ("deployment/shop", "the-deployment"),
    ] {
        let out = sim
            .remora(&["run", "-t", target, "--", "sh", "-c", "echo $WHO; uname -n"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{target}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.first(), Some(&who), "{target}: {stdout}");
        // The hostname is the pod's name: the pod of that ReplicaSet.
        assert!(
            lines.get(1).is_some_and(|pod| match who {
                "api-stable" => pod.starts_with("api-7f9c-"),
                "shop-rollout" => pod.starts_with("shop-6b8f-"),
                _ => pod.starts_with("shop-") && !pod.starts_with("shop-6b8f-"),
            }),
            "{target}: {stdout}"
        );
    }
    let out = sim
        .remora(&["ls", "--platform", "kubernetes", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(
        listed.contains("\"rollout/api\"") && listed.contains("\"rollout/shop\""),
        "{listed}"
    );
    poll(
        || sim.agent_objects().trim().is_empty(),
        "every agent Job to be deleted",
    );
}

/// A copy of `sim`'s kubeconfig whose user is `user`, an RBAC-checked user
/// of the sim (`remora-sim-user:<name>` tokens; docs/kube-sim.md).
fn kubeconfig_of_user(sim: &Sim, user: &str) -> PathBuf {
    let admin = std::fs::read_to_string(&sim.kubeconfig).unwrap();
    let token_line = admin
        .lines()
        .find(|l| l.trim_start().starts_with("token:"))
        .expect("a token in the sim's kubeconfig");
    let path = sim.dir.path().join(format!("kubeconfig-{user}"));
    std::fs::write(
        &path,
        admin.replace(token_line, &format!("    token: remora-sim-user:{user}")),
    )
    .unwrap();
    path
}

#[test]
fn an_rbac_denial_names_the_verb_and_resource_and_leaves_no_agent() {
    require_sandbox!();
    let sim = Sim::start(true);
    sim.deployment("web", "exec sleep 600");
    // bob may look at pods and workloads, and manage jobs, but not port-forward.
    sim.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader}
rules:
- {apiGroups: [""], resources: [pods, pods/log, services], verbs: [get, list, watch]}
- {apiGroups: [apps], resources: [deployments, replicasets], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-reads}
subjects: [{kind: User, name: bob, apiGroup: rbac.authorization.k8s.io}]
roleRef: {kind: Role, name: reader, apiGroup: rbac.authorization.k8s.io}
"#,
    );
    wait_ready(&sim, "web");
    let bob = kubeconfig_of_user(&sim, "bob");
    let run_as_bob = || {
        let out = Command::new(bin_path("remora").unwrap())
            .args(["run", "--kubeconfig", bob.to_str().unwrap()])
            .args(["-t", "deployment/web", "--", "true"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "remora run as bob succeeded");
        text(&out.stderr)
    };
    let err = run_as_bob();
    assert!(
        says(&err, "creating secret remora-agent-")
            && says(&err, "in namespace default: permission denied"),
        "{err}"
    );
    assert!(
        says(
            &err,
            "secrets is forbidden: User \"bob\" cannot create resource \"secrets\" in API group \"\" in the namespace \"default\""
        ),
        "{err}"
    );
    assert!(sim.agent_objects().trim().is_empty(), "nothing was created");

    // Now bob may keep the agent's token in a Secret, but not create its Job.
    sim.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: token-keeper}
rules:
- {apiGroups: [""], resources: [secrets], verbs: [create, patch, delete]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-keeps-tokens}
subjects: [{kind: User, name: bob, apiGroup: rbac.authorization.k8s.io}]
roleRef: {kind: Role, name: token-keeper, apiGroup: rbac.authorization.k8s.io}
"#,
    );
    let err = run_as_bob();
    assert!(
        says(&err, "creating job remora-agent-")
            && says(&err, "in namespace default: permission denied"),
        "{err}"
    );
    assert!(
        says(
            &err,
            "jobs.batch is forbidden: User \"bob\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"default\""
        ),
        "{err}"
    );
    assert!(
        sim.agent_objects().trim().is_empty(),
        "the token's Secret was deleted"
    );

    // Now bob may run the agent Job, but still not port-forward to it.
    sim.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: agent-runner}
rules:
- {apiGroups: [batch], resources: [jobs], verbs: [get, list, create, delete]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-runs-agents}
subjects: [{kind: User, name: bob, apiGroup: rbac.authorization.k8s.io}]
roleRef: {kind: Role, name: agent-runner, apiGroup: rbac.authorization.k8s.io}
"#,
    );
    let err = run_as_bob();
    assert!(
        says(&err, "port-forwarding to port 47101 of pod remora-agent-")
            && says(&err, "permission denied"),
        "{err}"
    );
    assert!(
        says(
            &err,
            "cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"default\""
        ),
        "{err}"
    );
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the agent Job to be deleted after the denied port-forward",
    );
}

#[test]
fn an_unpullable_agent_image_and_an_agent_that_never_listens_fail_clearly_and_leave_no_agent() {
    require_sandbox!();
    // A stand-in `remora-agent` that runs but never listens.
    let fake = tempfile::tempdir().unwrap();
    let agent = fake.path().join("remora-agent");
    std::fs::write(
        &agent,
        "#!/bin/sh\necho starting but never listening >&2\nexec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sim = Sim::start_with_path(fake.path());
    sim.deployment("web", "exec sleep 600");
    wait_ready(&sim, "web");
    let run_with = |config: &str| {
        let path = sim.dir.path().join("remora.toml");
        std::fs::write(&path, config).unwrap();
        let out = sim
            .remora(&[
                "run",
                "-f",
                path.to_str().unwrap(),
                "-t",
                "deployment/web",
                "--",
                "true",
            ])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "remora run with {config:?} succeeded"
        );
        text(&out.stderr)
    };

    // The registry does not resolve (the sim fails `.invalid` registries as a node would).
    let err = run_with("[agent]\nimage = \"registry.remora.invalid/remora-agent:0.1.0\"\n");
    assert!(
        says(
            &err,
            "cannot pull the agent image registry.remora.invalid/remora-agent:0.1.0: ErrImagePull"
        ) && says(&err, "lookup registry.remora.invalid: no such host"),
        "{err}"
    );
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the agent Job to be deleted after the pull error",
    );

    // The agent runs but never says it listens: the start gives up after
    // agent.startup_timeout, saying what it waited for.
    let err = run_with("[agent]\nstartup_timeout = 5\n");
    assert!(
        says(
            &err,
            "the agent did not start within 5s (agent.startup_timeout): waiting for the agent in pod remora-agent-"
        ) && says(
            &err,
            "to listen on port 47101 (it runs, but its log has no REMORA_AGENT_LISTENING line"
        ),
        "{err}"
    );
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the agent Job to be deleted after the timeout",
    );
}

/// The CLI stopped while the agent starts (a Ctrl-C, a SIGTERM, a SIGKILL):
/// the intproxy, in a session of its own, sees its stdout's reader gone,
/// cancels the start and deletes the Job it created.
#[test]
fn the_cli_stopped_while_the_agent_starts_leaves_no_agent() {
    require_sandbox!();
    // A stand-in `remora-agent` that runs but never listens: the start waits
    // (agent.startup_timeout = 300) until the CLI goes.
    let fake = tempfile::tempdir().unwrap();
    let agent = fake.path().join("remora-agent");
    std::fs::write(
        &agent,
        "#!/bin/sh\necho starting but never listening >&2\nexec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sim = Sim::start_with_path(fake.path());
    sim.deployment("web", "exec sleep 600");
    wait_ready(&sim, "web");
    let config = sim.dir.path().join("remora.toml");
    std::fs::write(&config, "[agent]\nstartup_timeout = 300\n").unwrap();
    for signal in ["KILL", "TERM", "INT"] {
        let child = sim
            .remora(&[
                "run",
                "-f",
                config.to_str().unwrap(),
                "-t",
                "deployment/web",
                "--",
                "true",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut cli = Reaped(child);
        poll(
            || {
                sim.kubectl(&[
                    "get",
                    "pods",
                    "-l",
                    AGENT_SELECTOR,
                    "-o",
                    "jsonpath={.items[*].status.phase}",
                ])
                .contains("Running")
            },
            "the agent's pod to run (its agent never listens)",
        );
        assert!(
            cli.0.try_wait().unwrap().is_none(),
            "remora run ended before SIG{signal}"
        );
        // Our own child, by its pid.
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &cli.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = cli.0.wait();
        // Reaped: its pid is no longer ours to signal on drop.
        std::mem::forget(cli);
        poll(
            || sim.agent_objects().trim().is_empty(),
            &format!("the agent Job to be deleted after SIG{signal} to remora run"),
        );
    }
}

#[test]
fn psql_reaches_a_database_only_the_pod_can_reach() {
    require_sandbox!();
    let sim = Sim::start(true);
    // PostgreSQL listens on the pod's own loopback, as user nobody (it refuses root).
    let data = sim.dir.path().join("pg");
    std::fs::create_dir_all(&data).unwrap();
    Command::new("chown")
        .args(["65534:65534"])
        .arg(&data)
        .status()
        .unwrap();
    std::fs::set_permissions(
        sim.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = data.display();
    sim.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: db}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      securityContext: {{runAsUser: 65534, runAsGroup: 65534}}
      containers:
      - name: postgres
        image: postgres:16
        command: ["sh", "-c", "initdb -D {d}/data -A trust -U postgres >{d}/initdb.log 2>&1 && exec postgres -D {d}/data -k {d} -c listen_addresses=127.0.0.1 -p {port}"]
        readinessProbe: {{exec: {{command: ["pg_isready", "-h", "127.0.0.1", "-p", "{port}"]}}, periodSeconds: 1}}
"#
    ));
    wait_ready(&sim, "db");
    // Not reachable from this machine: only through the pod.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} is reachable locally: the check would prove nothing"
    );
    let sql = "create table t (who text); insert into t values ('from the pod'); \
               select who || ' ' || inet_server_port() from t";
    let out = sim
        .remora(&[
            "run",
            "-t",
            "deployment/db",
            "--",
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-Atc",
            sql,
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(
        stdout.lines().last(),
        Some(format!("from the pod {port}").as_str()),
        "{stdout}"
    );
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the agent Job to be deleted",
    );
}

#[test]
fn a_mirror_receives_copies_of_requests_sent_to_the_pod_ip_while_the_pod_answers() {
    require_sandbox!();
    let sim = Sim::start(true);
    let (local_www, ip) = pod_web_server(&sim);
    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{ip}:8080{path}"))
            .output()
            .unwrap();
        text(&out.stdout).trim().to_owned()
    };
    assert_eq!(get("/who"), "the pod");
    let local_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The local copy of the app logs every request it gets (http.server logs to stderr).
    let log_path = sim.dir.path().join("local.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = sim
        .remora(&[
            "run",
            "-t",
            "deployment/api",
            "--mirror",
            "-p",
            &format!("{local_port}:8080"),
            "--",
            "python3",
            "-u",
            "-m",
            "http.server",
            &local_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            local_www.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let child = Reaped(child);
    let mut sent = 0;
    poll(
        || {
            sent += 1;
            // The pod still answers every request itself.
            assert_eq!(get(&format!("/who?mirrored={sent}")), "the pod");
            std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("GET /who?mirrored="))
        },
        "a mirrored request to reach the local app",
    );
    drop(child);
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the agent Job to be deleted",
    );
    // The mirror is gone: the pod answers alone, as before.
    assert_eq!(get("/who"), "the pod");
}

#[test]
fn the_agent_finds_a_containerd_containers_process_through_containerds_api() {
    require_sandbox!();
    let sim = Sim::start_with(true, &["--runtime", "containerd"]);
    sim.deployment("web", "exec sleep 600");
    wait_ready(&sim, "web");
    let id = sim.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].status.containerStatuses[0].containerID}",
    ]);
    let bare = id
        .trim()
        .strip_prefix("containerd://")
        .expect("a containerd id")
        .to_owned();
    let socket = std::env::temp_dir().join(format!(
        "remora-kube-sim-{}/containerd/containerd.sock",
        sim.pid()
    ));
    // What containerd's own client says.
    let tasks = Command::new("ctr")
        .arg("--address")
        .arg(&socket)
        .args(["-n", "k8s.io", "task", "ls"])
        .output()
        .unwrap();
    assert!(tasks.status.success(), "{}", text(&tasks.stderr));
    let tasks = text(&tasks.stdout);
    let ctr_pid = tasks
        .lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&bare.as_str())).then(|| cols[1].to_owned())
        })
        .unwrap_or_else(|| panic!("no task {bare} in {tasks}"));
    // The agent (it stops by itself: no client within a second).
    let agent_log = |socket: &Path| {
        let out = Command::new(bin_path("remora-agent").unwrap())
            .args(["--container-id", id.trim(), "--idle-timeout-secs", "1"])
            .arg("--containerd-socket")
            .arg(socket)
            .env("REMORA_AGENT_TOKEN", "a-test-token")
            .env("REMORA_AGENT_LOG", "info")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let log = agent_log(&socket);
    assert!(
        log.lines().any(
            |l| l.contains("found the container's process through containerd's API")
                && l.contains(&format!("pid={ctr_pid}"))
        ),
        "ctr says pid {ctr_pid}:\n{log}"
    );
    // Without the socket: the cgroup scan finds the same process.
    let log = agent_log(Path::new("/nonexistent/containerd.sock"));
    assert!(
        log.lines().any(
            |l| l.contains("found the container's process by its cgroup")
                && l.contains(&format!("pid={ctr_pid}"))
        ),
        "ctr says pid {ctr_pid}:\n{log}"
    );
}

/// `scripts/test-cluster.sh` never guesses a cluster, and its checks pass on
/// the test cluster named by KUBECONFIG (the way it runs against a real one).
#[test]
fn the_test_cluster_script_refuses_without_kubeconfig_and_passes_on_the_sim() {
    require_sandbox!();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-cluster.sh");
    let out = Command::new(&script)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no cluster: set KUBECONFIG") && out.stdout.is_empty(),
        "{}",
        text(&out.stderr)
    );

    let sim = Sim::start(true);
    let out = Command::new(&script)
        .env("KUBECONFIG", &sim.kubeconfig)
        .env("REMORA", bin_path("remora").unwrap())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for check in [
        "ok   the pod's environment",
        "ok   a file of the pod",
        "ok   a server on the pod's loopback",
        "ok   the pod's hostname",
        "ok   ls lists the deployment",
        "ok   unknown container",
        "ok   agent objects left",
    ] {
        assert!(stdout.contains(check), "no {check:?} in\n{stdout}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// Pids of the intproxies serving runs against `sim` (their command line or
/// environment names its kubeconfig).
fn intproxies_of(sim: &Sim) -> Vec<u32> {
    let kubeconfig = sim.kubeconfig.to_str().unwrap().to_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let read = |file: &str| {
                String::from_utf8_lossy(
                    &std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default(),
                )
                .replace('\0', " ")
            };
            let cmdline = read("cmdline");
            cmdline.contains(" intproxy ")
                && (cmdline.contains(&kubeconfig) || read("environ").contains(&kubeconfig))
        })
        .collect()
}

/// A lost client (intproxy and command SIGKILLed: nothing can delete the
/// agent): the agent exits after its idle timeout, and the finished Job goes
/// after its TTL, with its pod and the token's Secret (owned by the Job).
#[test]
fn a_lost_client_leaves_the_agent_to_its_idle_timeout_and_the_job_to_its_ttl() {
    require_sandbox!();
    let sim = Sim::start(true);
    sim.deployment("web", "exec sleep 600");
    wait_ready(&sim, "web");
    let config = sim.dir.path().join("remora.toml");
    std::fs::write(&config, "[agent]\nidle_timeout = 2\nttl = 5\n").unwrap();
    let mut child = sim
        .remora(&[
            "run",
            "-f",
            config.to_str().unwrap(),
            "-t",
            "deployment/web",
            "--",
            "sleep",
            "600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    poll(
        || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep"),
        "remora run to exec sleep",
    );
    let intproxies = intproxies_of(&sim);
    assert!(!intproxies.is_empty(), "no intproxy found");
    for p in intproxies.iter().chain([&pid]) {
        // Our run's own processes, by pid.
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    let _ = child.wait();
    let mut finished = false;
    poll(
        || {
            let conditions = sim.kubectl(&[
                "get",
                "jobs",
                "-l",
                AGENT_SELECTOR,
                "-o",
                "jsonpath={.items[*].status.conditions[*].type}",
            ]);
            finished |= conditions.contains("Complete") || conditions.contains("Failed");
            sim.agent_objects().trim().is_empty()
        },
        "the agent Job, its pod and the token's Secret to go after the idle timeout and the TTL",
    );
    assert!(
        finished,
        "the Job finished (its agent exited) before it was deleted"
    );
}
