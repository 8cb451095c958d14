//! `remora operator manifests` installs on the test cluster with the real
//! kubectl: the CRDs are applied and Established, then the rest; the RBAC,
//! Deployment and Service are stored as printed; `kubectl get
//! remorasessions -A` and `remorapolicies` show the printer columns;
//! `remora session ls/kill --kubernetes` read and delete the objects.
//!
//! Needs the simulator binary (`cargo build -p remora-kube-sim`, or
//! `REMORA_KUBE_SIM_BIN`) and `kubectl`; the test fails, not skips, without them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// The simulator process, SIGTERMed and reaped on drop.
struct Sim {
    child: Child,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        // SIGTERM our own child by its pid: the simulator stops its pods.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Sim {
    fn start() -> Sim {
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
        let child = Command::new(&bin)
            .args(["serve", "--exit-with-parent", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let sim = Sim {
            child,
            dir,
            kubeconfig,
        };
        let deadline = Instant::now() + DEADLINE;
        while !sim.kubeconfig.exists() {
            assert!(
                Instant::now() < deadline,
                "the simulator wrote no kubeconfig"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sim
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn apply(&self, name: &str, yaml: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        self.ok(&["apply", "-f", path_str(&path)])
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn manifests(namespace: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["operator", "manifests", "--namespace", namespace])
        .args(["--image", "registry.example/remora-operator:test"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Split a YAML stream into (CRDs, everything else).
fn split_crds(stream: &str) -> (String, String) {
    let (mut crds, mut rest) = (String::new(), String::new());
    for doc in stream.split("---\n").filter(|d| !d.trim().is_empty()) {
        let out = if doc.contains("\nkind: CustomResourceDefinition\n") {
            &mut crds
        } else {
            &mut rest
        };
        out.push_str("---\n");
        out.push_str(doc);
    }
    (crds, rest)
}

/// The first row of a `kubectl get` table, as (header, cell) pairs: cells
/// are cut at the columns' start offsets (cells may hold spaces).
fn columns(table: &str) -> Vec<(String, String)> {
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    let row = lines.next().expect("one row");
    let mut starts: Vec<(usize, &str)> = Vec::new();
    let mut offset = 0;
    for word in header.split_whitespace() {
        let at = offset + header[offset..].find(word).unwrap();
        starts.push((at, word));
        offset = at + word.len();
    }
    starts
        .iter()
        .enumerate()
        .map(|(i, (at, name))| {
            let end = starts.get(i + 1).map_or(row.len(), |(next, _)| *next);
            let text = row.get(*at..end.min(row.len())).unwrap_or_default();
            ((*name).to_owned(), text.trim().to_owned())
        })
        .collect()
}

fn cell<'a>(table: &'a [(String, String)], column: &str) -> &'a str {
    table
        .iter()
        .find(|(name, _)| name == column)
        .map(|(_, value)| value.as_str())
        .unwrap_or_else(|| panic!("no column {column} in {table:?}"))
}

#[test]
fn manifests_install_on_the_test_cluster_and_sessions_show_their_columns() {
    let sim = Sim::start();
    let (crds, rest) = split_crds(&manifests("remora-test"));
    assert_eq!(crds.matches("kind: CustomResourceDefinition").count(), 5);

    let applied = sim.apply("crds.yaml", &crds);
    assert!(
        applied.contains("remorasessions.remora.dev created"),
        "{applied}"
    );
    sim.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/remorasessions.remora.dev",
        "crd/remorapolicies.remora.dev",
        "crd/remoraclusterpolicies.remora.dev",
        "crd/remoraqueuesplits.remora.dev",
    ]);
    let applied = sim.apply("install.yaml", &rest);
    for object in [
        "namespace/remora-test created",
        "serviceaccount/remora-operator created",
        "clusterrole.rbac.authorization.k8s.io/remora-operator created",
        "clusterrolebinding.rbac.authorization.k8s.io/remora-operator created",
        "role.rbac.authorization.k8s.io/remora-operator created",
        "rolebinding.rbac.authorization.k8s.io/remora-operator created",
        // In kube-system: reading the front proxy's trust.
        "rolebinding.rbac.authorization.k8s.io/remora-operator-remora-test created",
        "service/remora-operator created",
        "deployment.apps/remora-operator created",
        "apiservice.apiregistration.k8s.io/v1alpha1.operator.remora.dev created",
    ] {
        assert!(applied.contains(object), "{object} missing in:\n{applied}");
    }
    // Applying again changes nothing (what `kubectl apply` users expect of
    // an install).
    let again = sim.apply("install.yaml", &rest);
    assert!(!again.contains("created"), "{again}");

    let role: serde_json::Value =
        serde_json::from_str(&sim.ok(&["get", "clusterrole", "remora-operator", "-o", "json"]))
            .unwrap();
    let review_rule = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"][0] == "tokenreviews")
        .unwrap();
    assert_eq!(review_rule["verbs"], serde_json::json!(["create"]));
    let deployment: serde_json::Value = serde_json::from_str(&sim.ok(&[
        "get",
        "deployment",
        "-n",
        "remora-test",
        "remora-operator",
        "-o",
        "json",
    ]))
    .unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "remora-operator");
    assert_eq!(
        pod["containers"][0]["image"],
        "registry.example/remora-operator:test"
    );

    // A session and a policy object, as the operator would write them.
    sim.apply(
        "session.yaml",
        r#"
apiVersion: remora.dev/v1alpha1
kind: RemoraSession
metadata: {name: 7f3a, namespace: default}
spec:
  id: 7f3a
  user: alice
  identity: alice@example.com
  target: deployment/api
  startedAt: "2026-12-04T14:00:00Z"
"#,
    );
    sim.ok(&[
        "patch",
        "remorasession",
        "7f3a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"subscriptions":[{"port":8080,"mode":"steal","filter":"header:^x-user: alice$"}],"ports":"8080 steal (filtered)"}}"#,
    ]);
    let table = columns(&sim.ok(&["get", "remorasessions", "-A"]));
    for (column, value) in [
        ("NAMESPACE", "default"),
        ("NAME", "7f3a"),
        ("USER", "alice"),
        ("TARGET", "deployment/api"),
        ("PORTS", "8080 steal (filtered)"),
    ] {
        assert_eq!(cell(&table, column), value, "{table:?}");
    }
    let started = cell(&table, "STARTED");
    assert!(
        started.ends_with('m') || started.ends_with('h') || started.ends_with('d'),
        "STARTED is an age: {table:?}"
    );
    // The priority-1 column shows with -o wide.
    let wide = columns(&sim.ok(&["get", "rsess", "-o", "wide"]));
    assert_eq!(cell(&wide, "IDENTITY"), "alice@example.com", "{wide:?}");

    sim.apply(
        "policy.yaml",
        r#"
apiVersion: remora.dev/v1alpha1
kind: RemoraPolicy
metadata: {name: payments, namespace: default}
spec:
  targets: [{kind: deployment, name: "payments-*"}]
  block: [steal-without-filter]
"#,
    );
    let policies = columns(&sim.ok(&["get", "remorapolicies", "-A"]));
    assert_eq!(cell(&policies, "NAME"), "payments", "{policies:?}");
    assert_eq!(
        cell(&policies, "BLOCK"),
        "steal-without-filter",
        "{policies:?}"
    );

    // `remora session ls/kill --kubernetes` read and delete the objects.
    let ls = remora(&sim, &["session", "ls", "--kubernetes", "-A", "--json"]);
    assert!(ls.status.success(), "{ls:?}");
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([{
            "id": "7f3a", "namespace": "default", "user": "alice",
            "identity": "alice@example.com", "target": "deployment/api",
            "ports": [8080], "filters": ["header:^x-user: alice$"],
            "subscriptions": [{"port": 8080, "mode": "steal", "filter": "header:^x-user: alice$"}],
            "started_at": 1_796_392_800u64
        }])
    );
    let table = remora(&sim, &["session", "ls", "--kubernetes"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("NAMESPACE  ID"), "{table}");
    assert!(
        table.contains("8080 (steal)") && table.contains("header:^x-user: alice$"),
        "{table}"
    );
    let other_ns = remora(
        &sim,
        &[
            "session",
            "ls",
            "--kubernetes",
            "-n",
            "kube-system",
            "--json",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&other_ns.stdout).trim(), "[]");

    let killed = remora(
        &sim,
        &["session", "kill", "7f3a", "--kubernetes", "-n", "default"],
    );
    assert!(killed.status.success(), "{killed:?}");
    assert_eq!(
        String::from_utf8_lossy(&killed.stdout).trim(),
        "session 7f3a killed (RemoraSession default/7f3a deleted)"
    );
    let empty = sim.kubectl(&["get", "remorasessions", "-A"]);
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("No resources found"),
        "{empty:?}"
    );
    let again = remora(&sim, &["session", "kill", "7f3a", "--kubernetes"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("no RemoraSession 7f3a in namespace default"),
        "{again:?}"
    );
}

/// `remora ARGS --kubeconfig <the simulator's>`.
fn remora(sim: &Sim, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&sim.kubeconfig)
        .output()
        .unwrap()
}
