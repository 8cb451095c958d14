//! The test cluster for the Kubernetes end-to-end tests (`run_kube.rs`,
//! `operator_kube.rs`): a `remora-kube-sim serve` child with its kubeconfig,
//! and the kubectl and remora commands that talk to it. Included by each
//! test with `#[path = "support/kube_sim.rs"] mod kube_sim;`; a test uses
//! only part of it.
#![allow(dead_code)]

use remora_tests::bin_path;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long anything may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// The label every agent object carries.
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=remora-agent";

/// A `remora-kube-sim serve` child whose PATH starts with the workspace's
/// binaries; SIGTERMed and reaped on drop (it stops its pods).
pub struct Sim {
    child: Child,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Sim {
    /// With `agent`, the containers' PATH starts with the workspace's
    /// binaries (so the agent Job's `remora-agent` command runs).
    pub fn start(agent: bool) -> Sim {
        Self::start_with(agent, &[])
    }

    /// With extra `serve` flags (e.g. `--runtime containerd`).
    pub fn start_with(agent: bool, flags: &[&str]) -> Sim {
        let bin_dir = bin_path("remora").unwrap().parent().unwrap().to_owned();
        let path = if agent {
            format!("{}:{}", bin_dir.display(), system_path())
        } else {
            system_path()
        };
        Self::launch(path, flags)
    }

    /// The containers' PATH starts with `dir` (e.g. a stand-in `remora-agent`),
    /// and has no other `remora-agent`.
    pub fn start_with_path(dir: &Path) -> Sim {
        Self::launch(format!("{}:{}", dir.display(), system_path()), &[])
    }

    fn launch(path: String, flags: &[&str]) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Command::new(bin_path("remora-kube-sim").unwrap())
            .args(["serve", "--exit-with-parent"])
            .args(flags)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("PATH", path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let sim = Sim {
            child,
            dir,
            kubeconfig,
        };
        poll(|| sim.kubeconfig.exists(), "the sim's kubeconfig");
        sim
    }

    /// The simulator's pid (its state dir is `$TMPDIR/remora-kube-sim-<pid>`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    pub fn apply(&self, yaml: &str) {
        let path = self.dir.path().join("manifest.yaml");
        std::fs::write(&path, yaml).unwrap();
        self.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    }

    /// A deployment `name` whose one container `app` runs `command`, ready.
    pub fn deployment(&self, name: &str, command: &str) {
        self.apply(&format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: app
        image: python:3
        command: ["sh", "-c", {command:?}]
        env: [{{name: GREETING, value: hello-from-the-pod}}]
"#
        ));
    }

    /// The names of the agent Jobs and pods left in the namespace.
    pub fn agent_objects(&self) -> String {
        self.kubectl(&[
            "get",
            "jobs,pods,secrets",
            "-l",
            AGENT_SELECTOR,
            "-o",
            "name",
        ])
    }

    /// `remora <args[0]> --kubeconfig <this cluster's> <args[1..]>`.
    pub fn remora(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin_path("remora").unwrap());
        command
            .arg(args[0])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(&args[1..]);
        command
    }
}

/// This process's PATH without the directories holding a `remora-agent`.
fn system_path() -> String {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !Path::new(d).join("remora-agent").exists())
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether a message printed by miette (wrapped, framed) says `what`:
/// compared without whitespace and frame characters.
pub fn says(message: &str, what: &str) -> bool {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_whitespace() && *c != '│')
            .collect()
    };
    squash(message).contains(&squash(what))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn poll(mut done: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn wait_ready(sim: &Sim, deployment: &str) {
    sim.kubectl(&[
        "wait",
        "--for=condition=Available",
        &format!("deployment/{deployment}"),
        "--timeout=60s",
    ]);
}

/// A child process, SIGTERMed and reaped on drop.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Lines of a pipe, read on a thread.
pub fn lines(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next line, waiting up to [`DEADLINE`].
pub fn next_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("no line: {what}: {e}"))
}

/// `remora-operator serve --platform kubernetes` for `sim`'s default
/// namespace; returns it (stopped on drop) and the address it listens on.
pub fn start_operator(sim: &Sim) -> (Reaped, String) {
    let mut operator = Command::new(bin_path("remora-operator").unwrap())
        .args([
            "serve",
            "--platform",
            "kubernetes",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--namespace", "default", "--kubeconfig"])
        .arg(&sim.kubeconfig)
        .env_remove("REMORA_OPERATOR_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = lines(operator.stdout.take().unwrap());
    let operator = Reaped(operator);
    let ready = next_line(&out, "the operator's ready line");
    let addr = ready
        .strip_prefix("REMORA_OPERATOR_LISTENING ")
        .unwrap_or_else(|| panic!("{ready:?}"))
        .to_owned();
    (operator, addr)
}

/// The namespace `install_operator` installs the operator in.
pub const OPERATOR_NS: &str = "remora";

/// The host's address on the pods' bridge, where pods of their own network
/// reach the host (the API server, a test's listener): any pod's address
/// gives the subnet (not a hostNetwork pod's 127.0.0.1), the bridge is its
/// `.1`. Needs a pod of its own network in `default`.
pub fn bridge_ip(sim: &Sim) -> String {
    let pod_ips = sim.kubectl(&[
        "get",
        "pods",
        "-n",
        "default",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    let pod_ip = pod_ips
        .split_whitespace()
        .find(|ip| !ip.starts_with("127."))
        .expect("a pod of its own network runs already");
    let (subnet, _) = pod_ip.rsplit_once('.').unwrap();
    format!("{subnet}.1")
}

/// The server URL of the sim's kubeconfig (`http://127.0.0.1:PORT`, or
/// `https://` with `serve --tls`).
pub fn api_server(sim: &Sim) -> String {
    let text = std::fs::read_to_string(&sim.kubeconfig).unwrap();
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("server: "))
        .unwrap()
        .to_owned()
}

/// The port of [`api_server`].
pub fn api_port(sim: &Sim) -> String {
    api_server(sim).rsplit(':').next().unwrap().to_owned()
}

/// Install the operator with its own manifests. Its pod has a network of
/// its own, so it reaches the API server at the bridge's address (the
/// `.1` of any pod's subnet) with a kubeconfig of its service account's
/// token, mounted from a ConfigMap; it serves the targets of `default`.
pub fn install_operator(sim: &Sim) {
    install_operator_with(sim, &[]);
}

/// [`install_operator`] with more `remora operator manifests` flags (e.g.
/// `--queue-split-namespace default`).
pub fn install_operator_with(sim: &Sim, manifest_flags: &[&str]) {
    let manifests = Command::new(bin_path("remora").unwrap())
        .args(["operator", "manifests", "--namespace", OPERATOR_NS])
        .args(manifest_flags)
        .output()
        .unwrap();
    assert!(manifests.status.success(), "{}", text(&manifests.stderr));
    sim.apply(&text(&manifests.stdout));
    let bridge = bridge_ip(sim);
    // Over TLS (`serve --tls`) with the sim's CA, as the admin's kubeconfig.
    let admin = std::fs::read_to_string(&sim.kubeconfig).unwrap();
    let scheme = if api_server(sim).starts_with("https://") {
        "https"
    } else {
        "http"
    };
    let ca = admin
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("certificate-authority-data: "))
        .map(|data| format!("\n    certificate-authority-data: {data}"))
        .unwrap_or_default();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: \
         {scheme}://{bridge}:{port}{ca}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    \
         user: operator\n    namespace: default\ncurrent-context: sim\nusers:\n- name: \
         operator\n  user:\n    token: remora-sim-sa:{OPERATOR_NS}:remora-operator\n",
        port = api_port(sim)
    );
    // (kubectl create sends protobuf, which the sim does not read: apply.)
    let configmap = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "operator-kubeconfig", "namespace": OPERATOR_NS},
        "data": {"kubeconfig": kubeconfig},
    });
    sim.apply(&configmap.to_string());
    // The manifests' Deployment as printed, plus the kubeconfig (a real
    // cluster gives the in-cluster service account instead).
    let patch = serde_json::json!({"spec": {"template": {"spec": {
        "volumes": [{"name": "kubeconfig", "configMap": {"name": "operator-kubeconfig"}}],
        "containers": [{
            "name": "operator",
            "args": ["serve", "--platform", "kubernetes", "--listen", "0.0.0.0:8443",
                     "--api-listen", "0.0.0.0:8444",
                     "--kubeconfig", "/etc/remora-operator/kubeconfig", "--namespace", "default"],
            "volumeMounts": [{"name": "kubeconfig", "mountPath": "/etc/remora-operator"}],
        }],
    }}}});
    sim.kubectl(&[
        "patch",
        "deployment",
        "remora-operator",
        "-n",
        OPERATOR_NS,
        "--type=strategic",
        "-p",
        &patch.to_string(),
    ]);
    wait_operator_ready(sim);
}

pub fn wait_operator_ready(sim: &Sim) {
    sim.kubectl(&[
        "rollout",
        "status",
        "deployment/remora-operator",
        "-n",
        OPERATOR_NS,
        "--timeout=120s",
    ]);
}
