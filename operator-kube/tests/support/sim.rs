//! What the tests on the test cluster share: the simulator as a child
//! process, kubectl against it; for the queue-split tests also what the
//! newest `app=worker` pod printed first.
//! Included with `#[path = "support/sim.rs"] mod sim;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long anything may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A child process, SIGTERMed (the simulator then cleans up) and reaped on drop.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// A running `remora-kube-sim` and its kubeconfig (in `dir`).
pub struct Sim {
    pub kubeconfig: PathBuf,
    _child: Reaped,
    _dir: tempfile::TempDir,
}

impl Sim {
    /// Starts the simulator and waits for its kubeconfig.
    pub fn start() -> Sim {
        let bin = std::env::var_os("REMORA_KUBE_SIM_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/remora-kube-sim")
            });
        assert!(
            bin.exists(),
            "{} missing: run `cargo build -p remora-kube-sim`",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Reaped(
            Command::new(&bin)
                .args(["serve", "--exit-with-parent", "--kubeconfig"])
                .arg(&kubeconfig)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + DEADLINE;
        while !kubeconfig.exists() {
            assert!(
                Instant::now() < deadline,
                "the simulator wrote no kubeconfig"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Sim {
            kubeconfig,
            _child: child,
            _dir: dir,
        }
    }
}

/// kubectl with `stdin` (if any) as its input.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    let input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        std::io::Write::write_all(&mut { input }, text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// [`kubectl`] that must succeed; its output.
pub fn ok(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(kubeconfig, args, stdin);
    assert!(out.status.success(), "kubectl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The first line the newest running `app=worker` pod logged (none while
/// there is none, or it is gone by the time its logs are asked for).
pub fn worker_says(kubeconfig: &Path) -> Option<String> {
    let pods = ok(
        kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "app=worker",
            "--field-selector=status.phase=Running",
            "--sort-by=.metadata.creationTimestamp",
            "-o",
            "name",
        ],
        None,
    );
    let newest = pods.lines().last()?.to_owned();
    let out = kubectl(kubeconfig, &["logs", &newest], None);
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .next()
        .map(str::to_owned)
}

/// Applies the operator's CRDs and waits until the queue-split kind is served.
pub fn install_queue_split_crds(kubeconfig: &Path) {
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds.yaml");
    ok(kubeconfig, &["apply", "-f", crds.to_str().unwrap()], None);
    ok(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/remoraqueuesplits.remora.dev",
        ],
        None,
    );
}

/// The split workload of the queue-split tests: Deployment `worker` (pods
/// `app=worker`) whose container logs `QUEUE=<its queue>` (see [`worker_says`])
/// from env var `var`, set to `queue` in the pod template.
pub fn worker_deployment(var: &str, queue: &dyn std::fmt::Display) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: worker}}
spec:
  selector: {{matchLabels: {{app: worker}}}}
  template:
    metadata: {{labels: {{app: worker}}}}
    spec:
      containers:
      - name: worker
        image: busybox
        command: [sh, -c, "echo QUEUE=${var}; exec sleep 300"]
        env: [{{name: {var}, value: "{queue}"}}]"#
    )
}
