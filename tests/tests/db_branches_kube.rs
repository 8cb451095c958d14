//! End-to-end: database branches through the operator in Kubernetes mode,
//! on the test cluster. The operator is installed by its own manifests (its
//! pod has a network of its own, with the cluster's DNS); the source is this
//! machine's PostgreSQL 15 behind the Service `pg` (its endpoint a
//! `hostNetwork` pod, so the service proxy relays to 127.0.0.1:5432), and
//! the target deployment's `DATABASE_URL` comes from a Secret and names the
//! service by its cluster DNS name, which this machine cannot resolve.
//!
//! `remora run --operator kube` with `[[db_branches]]`: the operator reads
//! the variable from the target's environment (through the target's agent:
//! the container's own environment, Secret reference resolved by the
//! kubelet), makes the branch on the source's server from its own pod, and
//! the local `psql` sees the rewritten URL and reaches the branch through
//! the pod (the name resolved and the connection made there). A destructive
//! migration on the branch leaves the source's dump unchanged; a second
//! session in mode `all` gets every row; `remora db ls|rm --operator kube`
//! list and drop a branch.
//!
//! Needs root, the machine's PostgreSQL (as `scripts/setup.sh` sets it up)
//! and the workspace binaries `remora`, `remora-operator`, `remora-agent`,
//! `libremora_layer.so` and `remora-kube-sim`.

use remora_tests::db::{dump_checksum, psql};
use remora_tests::require_sandbox;
use std::process::{Command, Output, Stdio};

#[path = "support/kube_sim.rs"]
mod kube_sim;

use kube_sim::*;

/// The cluster DNS name of the source's service.
const PG_HOST: &str = "pg.default.svc.cluster.local";

/// Drops every database whose name contains `tag` (source and branches).
struct DropDatabases {
    tag: String,
}

impl Drop for DropDatabases {
    fn drop(&mut self) {
        let names = psql("postgres", "SELECT datname FROM pg_database");
        for name in names.lines().filter(|n| n.contains(&self.tag)) {
            let _ = psql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            );
        }
    }
}

fn pg_checksum(db: &str) -> String {
    dump_checksum(Command::new("pg_dump").args(["-h", "127.0.0.1", "-U", "postgres", "-d", db]))
}

/// `remora <args>` through the installed operator, as the sim's admin.
fn remora_kube(sim: &Sim, args: &[&str]) -> Command {
    let mut command = Command::new(remora_tests::bin_path("remora").unwrap());
    command
        .args(args)
        .env("KUBECONFIG", &sim.kubeconfig)
        .env_remove("REMORA_OPERATOR_TOKEN")
        .env_remove("REMORA_OPERATOR")
        .env("REMORA_USER", "alice")
        .stdin(Stdio::null());
    command
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "remora failed: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

#[test]
fn a_deployment_target_gets_a_branch_of_the_database_its_secret_names_through_its_pod() {
    require_sandbox!();
    let source = format!("kb{}shop", std::process::id());
    let _drop = DropDatabases {
        tag: source.clone(),
    };
    psql("postgres", &format!("CREATE DATABASE {source}"));
    psql(
        &source,
        "CREATE TABLE users (id int PRIMARY KEY, org int, name text); \
         INSERT INTO users SELECT i, i % 5, 'user ' || i FROM generate_series(1, 20) i; \
         CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users, total int); \
         INSERT INTO orders SELECT i, i, i * 10 FROM generate_series(1, 20) i",
    );
    let before = pg_checksum(&source);
    // The proof that the name is resolved in the pod: not here.
    let here = Command::new("getent")
        .args(["hosts", PG_HOST])
        .output()
        .unwrap();
    assert!(
        !here.status.success(),
        "{PG_HOST} resolves on this machine: the test would prove nothing"
    );

    let sim = Sim::start(true);
    let url = format!("postgres://postgres@{PG_HOST}:5432/{source}");
    sim.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: pg, labels: {{app: pg}}}}
spec:
  hostNetwork: true
  containers:
  - name: pg
    image: postgres:15
    command: ["sleep", "infinity"]
    readinessProbe: {{exec: {{command: ["pg_isready", "-h", "127.0.0.1", "-p", "5432"]}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: pg}}
spec:
  selector: {{app: pg}}
  ports: [{{port: 5432, targetPort: 5432}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-db}}
stringData: {{url: "{url}"}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: shop}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: shop}}}}
  template:
    metadata: {{labels: {{app: shop}}}}
    spec:
      containers:
      - name: app
        image: shop:1
        command: ["sleep", "infinity"]
        env:
        - name: DATABASE_URL
          valueFrom: {{secretKeyRef: {{name: shop-db, key: url}}}}
"#
    ));
    wait_ready(&sim, "shop");
    sim.kubectl(&["wait", "--for=condition=Ready", "--timeout=60s", "pod/pg"]);
    install_operator(&sim);

    let config = sim.dir.path().join("remora.toml");
    std::fs::write(
        &config,
        format!(
            "[[db_branches]]\ntype = \"postgres\"\nname = \"{source}\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {{ mode = \"schema\", tables = {{ users = {{ filter = \"WHERE org = 2\" }} }} }}\n\
             ttl = \"10m\"\nid = \"alice-k8s\"\n"
        ),
    )
    .unwrap();
    let script = "echo \"URL=$DATABASE_URL\"; \
                  psql -X -q -v ON_ERROR_STOP=1 \"$DATABASE_URL\" -Atc \
                  \"select current_database(), count(*), min(id) from users\" && \
                  psql -X -q -v ON_ERROR_STOP=1 \"$DATABASE_URL\" -Atc \
                  \"select count(*) from orders; drop table orders; drop table users\"";
    let out = remora_kube(&sim, &["run", "--operator", "kube", "-f"])
        .arg(&config)
        .args(["-t", "deployment/shop", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let stdout = ok(&out);
    let stderr = text(&out.stderr);
    let branch = format!("remora_{source}_alice_k8s");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("URL=postgres://postgres@{PG_HOST}:5432/{branch}").as_str(),
            format!("{branch}|4|2").as_str(),
            "0",
        ],
        "{stderr}"
    );
    assert!(
        stderr.contains("db branch") && stderr.contains("pg_dump --schema-only"),
        "the session says how the branch was made: {stderr}"
    );
    // The branch is on the source's server; the source is untouched.
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{branch}'")
        ),
        "1"
    );
    assert_eq!(pg_checksum(&source), before, "the source changed");

    // Mode `all`: every row, dumped and restored from the operator's pod.
    let all = sim.dir.path().join("all.toml");
    std::fs::write(
        &all,
        format!(
            "[[db_branches]]\ntype = \"postgres\"\nname = \"{source}\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {{ mode = \"all\" }}\nttl = \"10m\"\nid = \"alice-all\"\n"
        ),
    )
    .unwrap();
    let out = remora_kube(&sim, &["run", "--operator", "kube", "-f"])
        .arg(&all)
        .args(["-t", "deployment/shop", "--", "sh", "-c"])
        .arg(
            "psql -X -q -v ON_ERROR_STOP=1 \"$DATABASE_URL\" -Atc \
             \"select current_database(), (select count(*) from users), count(*) from orders\"",
        )
        .output()
        .unwrap();
    let stdout = ok(&out);
    let stderr = text(&out.stderr);
    assert_eq!(
        stdout.trim(),
        format!("remora_{source}_alice_all|20|20"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the golden copy for the next branches is being made"),
        "{stderr}"
    );
    assert_eq!(pg_checksum(&source), before, "the source changed");

    // `remora db ls|rm` through the installed operator.
    let listed = ok(
        &remora_kube(&sim, &["db", "ls", "--operator", "kube", "--json"])
            .output()
            .unwrap(),
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == "alice-k8s")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(entry["branch"], branch.as_str(), "{entry}");
    assert!(
        entry["target"]
            .as_str()
            .is_some_and(|t| t.ends_with("deployment/shop")),
        "{entry}"
    );
    ok(
        &remora_kube(&sim, &["db", "rm", "--operator", "kube", "alice-k8s"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{branch}'")
        ),
        "0",
        "db rm drops the branch"
    );
}
