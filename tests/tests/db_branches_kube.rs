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

/// The test cluster with the source `{tag}shop` (20 users, 20 orders; its
/// checksum returned), the Service `pg` in front of this machine's
/// PostgreSQL, the deployment `shop` whose `DATABASE_URL` (from a Secret)
/// names it, and the operator installed by its manifests.
struct Shop {
    sim: Sim,
    source: String,
    before: String,
    _drop: DropDatabases,
}

/// The source database server as pod and Service `name` (this machine's
/// server, reached on the host network; ready while `ready` succeeds), and
/// Deployment `shop` whose `DATABASE_URL` comes from Secret `shop-db` holding
/// `url`; then the operator installed.
fn source_server_and_shop(sim: &Sim, name: &str, image: &str, port: u16, ready: &str, url: &str) {
    sim.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  hostNetwork: true
  containers:
  - name: {name}
    image: {image}
    command: ["sleep", "infinity"]
    # Ready once, then only 30 failures in a row (a loaded machine) make
    # it unready and empty the service.
    readinessProbe: {{exec: {{command: {ready}}}, periodSeconds: 1, timeoutSeconds: 10, failureThreshold: 30}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: {port}, targetPort: {port}}}]
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
    wait_ready(sim, "shop");
    sim.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=60s",
        &format!("pod/{name}"),
    ]);
    install_operator(sim);
}

fn shop(tag: &str) -> Shop {
    let source = format!("{tag}{}shop", std::process::id());
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
    source_server_and_shop(
        &sim,
        "pg",
        "postgres:15",
        5432,
        r#"["pg_isready", "-h", "127.0.0.1", "-p", "5432"]"#,
        &url,
    );
    Shop {
        sim,
        source,
        before,
        _drop,
    }
}

#[test]
fn a_deployment_target_gets_a_branch_of_the_database_its_secret_names_through_its_pod() {
    require_sandbox!();
    let Shop {
        sim,
        source,
        before,
        _drop,
    } = shop("kb");

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

/// `[[db_branches]]` of the shop's source in mode `empty`, with this id and TTL.
fn empty_branch_config(sim: &Sim, source: &str, id: &str, ttl: &str) -> std::path::PathBuf {
    let path = sim.dir.path().join(format!("{id}.toml"));
    std::fs::write(
        &path,
        format!(
            "[[db_branches]]\ntype = \"postgres\"\nname = \"{source}\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {{ mode = \"empty\" }}\nttl = \"{ttl}\"\nid = \"{id}\"\n"
        ),
    )
    .unwrap();
    path
}

fn database_exists(name: &str) -> bool {
    psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    ) == "1"
}

/// The operator's pods: `name ready` lines.
fn operator_pods(sim: &Sim) -> Vec<(String, bool)> {
    sim.kubectl(&[
        "get",
        "pods",
        "-n",
        OPERATOR_NS,
        "-l",
        "app.kubernetes.io/name=remora-operator",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
    ])
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(name, ready)| (name.to_owned(), ready == "True"))
    .collect()
}

/// The branch registry is kept as RemoraDbBranch objects (credentials in
/// their Secrets): after the operator's pod is deleted, its successor
/// lists the branches (`remora db ls`) and drops the short-lived one at its
/// TTL, its object and Secret with it.
#[test]
fn branches_outlive_an_operator_restart_and_its_successor_drops_them_at_their_ttl() {
    require_sandbox!();
    let Shop {
        sim,
        source,
        before,
        _drop,
    } = shop("kr");
    let keep = empty_branch_config(&sim, &source, "keep", "10m");
    // Long enough for the restart below (seconds here), short for a test.
    let brief = empty_branch_config(&sim, &source, "brief", "40s");
    for config in [&keep, &brief] {
        ok(&remora_kube(&sim, &["run", "--operator", "kube", "-f"])
            .arg(config)
            .args(["-t", "deployment/shop", "--", "true"])
            .output()
            .unwrap());
    }
    let (keep_db, brief_db) = (
        format!("remora_{source}_keep"),
        format!("remora_{source}_brief"),
    );
    assert!(database_exists(&keep_db) && database_exists(&brief_db));

    // `kubectl get` shows them; their credentials are in Secrets.
    let table = sim.kubectl(&["get", "remoradbbranches", "-n", OPERATOR_NS]);
    for (id, db) in [("keep", &keep_db), ("brief", &brief_db)] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(id))
            .unwrap_or_else(|| panic!("no row for {id}:\n{table}"));
        assert!(
            row.contains(db.as_str()) && row.contains("postgres") && row.contains("empty"),
            "{table}"
        );
    }
    assert!(
        table.lines().next().is_some_and(|h| h.contains("EXPIRES")),
        "{table}"
    );
    let secrets = sim.kubectl(&[
        "get",
        "secrets",
        "-n",
        OPERATOR_NS,
        "-l",
        // The branches' Secrets, not the token Secret of the operator's agent.
        "app.kubernetes.io/managed-by=remora-operator,app.kubernetes.io/name!=remora-agent",
        "-o",
        "name",
    ]);
    assert_eq!(secrets.lines().count(), 2, "{secrets}");

    // A new operator pod: no memory of its predecessor's.
    let old = operator_pods(&sim);
    assert_eq!(old.len(), 1, "{old:?}");
    sim.kubectl(&["delete", "pod", "-n", OPERATOR_NS, &old[0].0]);
    poll(
        || {
            let pods = operator_pods(&sim);
            pods.len() == 1 && pods[0].0 != old[0].0 && pods[0].1
        },
        "a new operator pod, ready",
    );
    assert!(
        database_exists(&brief_db),
        "the 40 s branch expired before the old operator stopped: the test proves nothing"
    );
    let listed = ok(
        &remora_kube(&sim, &["db", "ls", "--operator", "kube", "--json"])
            .output()
            .unwrap(),
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert!(ids.contains(&"keep"), "the new operator lists {ids:?}");

    // The new operator drops the brief one at its TTL, object and Secret too.
    let start = std::time::Instant::now();
    while database_exists(&brief_db) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "the new operator did not drop {brief_db} at its TTL"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    poll(
        || {
            let names = sim.kubectl(&[
                "get",
                "remoradbbranches,secrets",
                "-n",
                OPERATOR_NS,
                "-l",
                "app.kubernetes.io/managed-by=remora-operator,app.kubernetes.io/name!=remora-agent",
                "-o",
                "name",
            ]);
            names.lines().count() == 2 && !names.contains("brief")
        },
        "the brief branch's object and Secret gone, the kept one's left",
    );
    assert!(database_exists(&keep_db));
    ok(
        &remora_kube(&sim, &["db", "rm", "--operator", "kube", "keep"])
            .output()
            .unwrap(),
    );
    assert!(!database_exists(&keep_db));
    poll(
        || {
            sim.kubectl(&["get", "remoradbbranches", "-n", OPERATOR_NS, "-o", "name"])
                .trim()
                .is_empty()
        },
        "no RemoraDbBranch left",
    );
    assert_eq!(pg_checksum(&source), before, "the source changed");
}

/// What the sim runs for a `postgres:15` branch pod (it pulls no image):
/// the official image's entrypoint in short, this machine's PostgreSQL 15
/// as the user `postgres`, its data in the pod's `emptyDir` (`$PGDATA`),
/// the superuser's password from `$POSTGRES_PASSWORD` (the pod's Secret).
const PG_POD_COMMAND: &str = "set -e; B=/usr/lib/postgresql/15/bin; \
    AS='setpriv --reuid=postgres --regid=postgres --init-groups'; \
    chown postgres:postgres \"$PGDATA\"; chmod 700 \"$PGDATA\"; \
    PW=$(mktemp); printf '%s\\n' \"$POSTGRES_PASSWORD\" > \"$PW\"; chown postgres \"$PW\"; \
    $AS $B/initdb -D \"$PGDATA\" -U postgres -A scram-sha-256 --pwfile=\"$PW\" >/dev/null; \
    rm -f \"$PW\"; \
    echo 'host all all all scram-sha-256' >> \"$PGDATA/pg_hba.conf\"; \
    exec $AS $B/postgres -D \"$PGDATA\" -p 5432 -c listen_addresses='*' \
    -c unix_socket_directories=''";

/// Give the installed operator `--db-config` with `toml` (a ConfigMap
/// mounted in its pod) and wait for its new pod.
fn configure_operator(sim: &Sim, toml: &str) {
    let configmap = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "operator-db-config", "namespace": OPERATOR_NS},
        "data": {"db.toml": toml},
    });
    sim.apply(&configmap.to_string());
    // The sim rolls Deployments by surge only (no Recreate), and a second
    // operator would wait for the first one's leader lease: none first.
    sim.kubectl(&[
        "scale",
        "deployment/remora-operator",
        "-n",
        OPERATOR_NS,
        "--replicas=0",
    ]);
    poll(|| operator_pods(sim).is_empty(), "no operator pod");
    let patch = serde_json::json!({"spec": {"replicas": 1, "template": {"spec": {
        "volumes": [{"name": "db-config", "configMap": {"name": "operator-db-config"}}],
        "containers": [{
            "name": "operator",
            "args": ["serve", "--platform", "kubernetes", "--listen", "0.0.0.0:8443",
                     "--kubeconfig", "/etc/remora-operator/kubeconfig", "--namespace", "default",
                     "--db-config", "/etc/remora-db/db.toml"],
            "volumeMounts": [{"name": "db-config", "mountPath": "/etc/remora-db"}],
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
    let start = std::time::Instant::now();
    loop {
        let pods = operator_pods(sim);
        if pods.len() == 1 && pods[0].1 {
            break;
        }
        if start.elapsed() > std::time::Duration::from_secs(120) {
            let logs = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&sim.kubeconfig)
                .args([
                    "logs",
                    "-n",
                    OPERATOR_NS,
                    "-l",
                    "app.kubernetes.io/name=remora-operator",
                ])
                .output()
                .unwrap();
            panic!(
                "the reconfigured operator is not ready: {pods:?}\n{}{}",
                text(&logs.stdout),
                text(&logs.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn branch_pod_objects(sim: &Sim) -> String {
    sim.kubectl(&[
        "get",
        "pods,services,secrets",
        "-n",
        OPERATOR_NS,
        "-l",
        "app.kubernetes.io/name=remora-db-branch",
        "-o",
        "name",
    ])
}

/// `[[branch_pod]]`: the branch gets a PostgreSQL server of its own in a
/// pod (with a Service and a Secret), is filled there, reached by the
/// local process through the target pod by the Service's name, and the pod
/// is deleted at the branch's TTL; the source's server never holds it.
#[test]
fn a_branch_pod_is_started_filled_reached_and_deleted_at_the_ttl() {
    require_sandbox!();
    let Shop {
        sim,
        source,
        before,
        _drop,
    } = shop("kp");
    let command = serde_json::to_string(&["sh", "-c", PG_POD_COMMAND]).unwrap();
    configure_operator(
        &sim,
        &format!(
            "[[branch_pod]]\ntype = \"postgres\"\nimage = \"postgres:15\"\nalways = true\n\
             command = {command}\nmemory = \"512Mi\"\n"
        ),
    );
    let config = sim.dir.path().join("pod.toml");
    std::fs::write(
        &config,
        format!(
            "[[db_branches]]\ntype = \"postgres\"\nname = \"{source}\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {{ mode = \"schema\", tables = {{ users = {{ filter = \"WHERE org = 2\" }} }} }}\n\
             ttl = \"45s\"\nid = \"alice-pod\"\n"
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
    let branch = format!("remora_{source}_alice_pod");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}\n{stderr}");
    let url = lines[0]
        .strip_prefix("URL=postgres://postgres:")
        .unwrap_or_else(|| panic!("{stdout}"));
    let (_password, rest) = url.split_once('@').unwrap();
    let (host, db) = rest.split_once('/').unwrap();
    assert!(
        host.starts_with("remora-") && host.ends_with(".remora.svc.cluster.local:5432"),
        "{host}"
    );
    assert_eq!(db, branch);
    assert_eq!(lines[1], format!("{branch}|4|2"), "{stderr}");
    assert_eq!(lines[2], "0", "{stderr}");
    assert!(
        says(&stderr, "in its own pod remora/") && stderr.contains("pg_dump --schema-only"),
        "the session says where and how: {stderr}"
    );
    // Not on the source's server; the source is untouched.
    assert!(
        !database_exists(&branch),
        "the branch is on the source's server"
    );
    assert_eq!(pg_checksum(&source), before, "the source changed");
    let objects = branch_pod_objects(&sim);
    let pod_name = host.split('.').next().unwrap();
    for kind in ["pod", "service", "secret"] {
        assert!(
            objects.contains(&format!("{kind}/{pod_name}")),
            "{kind}/{pod_name} in:\n{objects}"
        );
    }
    let record = sim.kubectl(&["get", "remoradbbranches", "-n", OPERATOR_NS, "-o", "wide"]);
    assert!(record.contains(&format!("remora/{pod_name}")), "{record}");

    // At its TTL the pod goes, its Service and Secret with it.
    let start = std::time::Instant::now();
    while !branch_pod_objects(&sim).trim().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(150),
            "the branch pod was not deleted at its TTL:\n{}",
            branch_pod_objects(&sim)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    poll(
        || {
            sim.kubectl(&["get", "remoradbbranches", "-n", OPERATOR_NS, "-o", "name"])
                .trim()
                .is_empty()
        },
        "the RemoraDbBranch gone",
    );
}

/// What the official `mariadb:10.11` image's entrypoint does, in short, with
/// this machine's MariaDB 10.11 (the sim pulls no image and runs the
/// container's command as a process): `mariadb-install-db` in the pod's
/// `emptyDir` (`/var/lib/mysql`), then `mariadbd` as the user `mysql` on
/// port 3306 of the pod's network, with the superuser `root` (from any
/// host) given the password of `$MARIADB_ROOT_PASSWORD` (the pod's Secret),
/// through an init file in the `emptyDir`, which goes with the pod (one in
/// the machine's /tmp was left behind by every run).
const MARIADB_POD_COMMAND: &str = "set -e; D=/var/lib/mysql; \
    chown mysql:mysql \"$D\"; chmod 700 \"$D\"; \
    mariadb-install-db --no-defaults --user=mysql --datadir=\"$D\" \
    --auth-root-authentication-method=normal --skip-test-db >/dev/null; \
    INIT=\"$D/remora-init.sql\"; \
    printf \"CREATE USER 'root'@'%%' IDENTIFIED BY '%s';\\nGRANT ALL ON *.* TO 'root'@'%%' WITH GRANT OPTION;\\nALTER USER 'root'@'localhost' IDENTIFIED BY '%s';\\n\" \
    \"$MARIADB_ROOT_PASSWORD\" \"$MARIADB_ROOT_PASSWORD\" > \"$INIT\"; chown mysql \"$INIT\"; \
    exec mariadbd --no-defaults --user=mysql --datadir=\"$D\" --port=3306 \
    --bind-address=0.0.0.0 --socket=\"$D/mysqld.sock\" --pid-file=\"$D/mysqld.pid\" \
    --init-file=\"$INIT\" --skip-log-bin --innodb-buffer-pool-size=32M";

/// `mariadb` as root on this machine's MariaDB (127.0.0.1:3306).
fn maria(sql: &str) -> String {
    let out = Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            "3306",
            "-uroot",
            "--protocol=tcp",
            "-N",
            "--batch",
            "-e",
            sql,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "mariadb {sql}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

fn maria_checksum(db: &str) -> String {
    dump_checksum(Command::new("mariadb-dump").args([
        "-h",
        "127.0.0.1",
        "-P",
        "3306",
        "-uroot",
        "--protocol=tcp",
        "--skip-dump-date",
        db,
    ]))
}

/// Drops every MariaDB database whose name contains `tag`.
struct DropMariaDatabases {
    tag: String,
}

impl Drop for DropMariaDatabases {
    fn drop(&mut self) {
        for name in maria("SHOW DATABASES")
            .lines()
            .filter(|n| n.contains(&self.tag))
        {
            let _ = maria(&format!("DROP DATABASE IF EXISTS `{name}`"));
        }
    }
}

/// `[[branch_pod]]` of type `mysql`: a MariaDB source's branch gets a
/// MariaDB server of its own in a pod (with a Service and a Secret), filled
/// there (`mariadb-dump --no-data | mariadb` and the filtered rows), reached
/// by the local `mariadb` through the target pod by the Service's name, and
/// deleted at the branch's TTL; the source's server never holds it.
#[test]
fn a_mariadb_branch_pod_is_started_filled_reached_and_deleted_at_the_ttl() {
    require_sandbox!();
    const MY_HOST: &str = "my.default.svc.cluster.local";
    let source = format!("km{}shop", std::process::id());
    let _drop = DropMariaDatabases {
        tag: source.clone(),
    };
    maria(&format!(
        "CREATE DATABASE `{source}`; USE `{source}`; \
         CREATE TABLE users (id int PRIMARY KEY, org int, name text); \
         INSERT INTO users SELECT seq, seq % 5, concat('user ', seq) FROM seq_1_to_20; \
         CREATE TABLE orders (id int PRIMARY KEY, user_id int, total int, \
           FOREIGN KEY (user_id) REFERENCES users (id)); \
         INSERT INTO orders SELECT seq, seq, seq * 10 FROM seq_1_to_20"
    ));
    let before = maria_checksum(&source);

    let sim = Sim::start(true);
    let url = format!("mysql://root@{MY_HOST}:3306/{source}");
    source_server_and_shop(
        &sim,
        "my",
        "mariadb:10.11",
        3306,
        r#"["mariadb-admin", "ping", "-h", "127.0.0.1", "-P", "3306", "--protocol=tcp"]"#,
        &url,
    );
    let command = serde_json::to_string(&["sh", "-c", MARIADB_POD_COMMAND]).unwrap();
    configure_operator(
        &sim,
        &format!(
            "[[branch_pod]]\ntype = \"mysql\"\nimage = \"mariadb:10.11\"\nalways = true\n\
             command = {command}\nmemory = \"512Mi\"\n"
        ),
    );
    let config = sim.dir.path().join("pod.toml");
    std::fs::write(
        &config,
        format!(
            "[[db_branches]]\ntype = \"mysql\"\nname = \"{source}\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {{ mode = \"schema\", tables = {{ users = {{ filter = \"WHERE org = 2\" }} }} }}\n\
             ttl = \"45s\"\nid = \"alice-pod\"\n"
        ),
    )
    .unwrap();
    // The URL taken apart for the `mariadb` client, which takes no URL.
    let script = "echo \"URL=$DATABASE_URL\"; u=${DATABASE_URL#mysql://}; \
                  creds=${u%%@*}; rest=${u#*@}; hp=${rest%%/*}; db=${rest#*/}; \
                  set -- -h \"${hp%:*}\" -P \"${hp##*:}\" -u \"${creds%%:*}\" -p\"${creds#*:}\" \
                  --protocol=tcp -N --batch \"$db\"; \
                  mariadb \"$@\" -e 'select database(), count(*), min(id) from users' && \
                  mariadb \"$@\" -e 'select count(*) from orders; drop table orders; drop table users'";
    let out = remora_kube(&sim, &["run", "--operator", "kube", "-f"])
        .arg(&config)
        .args(["-t", "deployment/shop", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let stdout = ok(&out);
    let stderr = text(&out.stderr);
    let branch = format!("remora_{source}_alice_pod");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}\n{stderr}");
    let url = lines[0]
        .strip_prefix("URL=mysql://root:")
        .unwrap_or_else(|| panic!("{stdout}"));
    let (_password, rest) = url.split_once('@').unwrap();
    let (host, db) = rest.split_once('/').unwrap();
    assert!(
        host.starts_with("remora-") && host.ends_with(".remora.svc.cluster.local:3306"),
        "{host}"
    );
    assert_eq!(db, branch);
    assert_eq!(lines[1], format!("{branch}\t4\t2"), "{stderr}");
    assert_eq!(lines[2], "0", "{stderr}");
    assert!(
        says(&stderr, "in its own pod remora/") && stderr.contains("mariadb-dump --no-data"),
        "the session says where and how: {stderr}"
    );
    // Not on the source's server; the source is untouched.
    assert!(
        !maria("SHOW DATABASES").lines().any(|n| n == branch),
        "the branch is on the source's server"
    );
    assert_eq!(maria_checksum(&source), before, "the source changed");
    let objects = branch_pod_objects(&sim);
    let pod_name = host.split('.').next().unwrap();
    for kind in ["pod", "service", "secret"] {
        assert!(
            objects.contains(&format!("{kind}/{pod_name}")),
            "{kind}/{pod_name} in:\n{objects}"
        );
    }
    let record = sim.kubectl(&["get", "remoradbbranches", "-n", OPERATOR_NS, "-o", "wide"]);
    assert!(record.contains(&format!("remora/{pod_name}")), "{record}");

    // At its TTL the pod goes, its Service and Secret with it.
    let start = std::time::Instant::now();
    while !branch_pod_objects(&sim).trim().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(150),
            "the branch pod was not deleted at its TTL:\n{}",
            branch_pod_objects(&sim)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    poll(
        || {
            sim.kubectl(&["get", "remoradbbranches", "-n", OPERATOR_NS, "-o", "name"])
                .trim()
                .is_empty()
        },
        "the RemoraDbBranch gone",
    );
}

/// A pod labelled as a branch pod by the operator, that no
/// `RemoraDbBranch` names (what an operator stopped between creating a
/// branch's pod and recording the branch leaves).
fn orphan_pod(name: &str, managed: bool) -> String {
    let mut labels = serde_json::json!({"app.kubernetes.io/name": "remora-db-branch"});
    if managed {
        labels["app.kubernetes.io/managed-by"] = "remora-operator".into();
    }
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": OPERATOR_NS, "labels": labels},
        "spec": {"containers": [{"name": "db", "image": "postgres:15", "command": ["sleep", "infinity"]}]},
    })
    .to_string()
}

fn pod_exists(sim: &Sim, name: &str) -> bool {
    sim.kubectl(&["get", "pods", "-n", OPERATOR_NS, "-o", "name"])
        .lines()
        .any(|l| l == format!("pod/{name}"))
}

/// Branch pods the operator made but no `RemoraDbBranch` names are deleted:
/// one there before the operator starts (at start), one that appears while
/// it runs (by the sweep every minute). A pod with the branch-pod name label
/// but not managed by the operator is left alone.
#[test]
fn branch_pods_no_branch_names_are_deleted_at_start_and_while_running() {
    require_sandbox!();
    let sim = Sim::start(true);
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
      - {name: app, image: shop:1, command: ["sleep", "infinity"]}
---
apiVersion: v1
kind: Namespace
metadata: {name: remora}
"#,
    );
    wait_ready(&sim, "shop");
    sim.apply(&orphan_pod("remora-orphan-before", true));
    sim.apply(&orphan_pod("not-the-operators", false));
    assert!(pod_exists(&sim, "remora-orphan-before"));
    install_operator(&sim);
    poll(
        || !pod_exists(&sim, "remora-orphan-before"),
        "the orphaned branch pod deleted at the operator's start",
    );
    sim.apply(&orphan_pod("remora-orphan-later", true));
    let start = std::time::Instant::now();
    while pod_exists(&sim, "remora-orphan-later") {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(180),
            "the orphaned branch pod was not swept while the operator runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(pod_exists(&sim, "not-the-operators"));
}

/// An operator pod deleted while a branch is being made (its database
/// created, its filtered rows still being read) leaves a `RemoraDbBranch`
/// written before the `CREATE DATABASE`, as expiring at once: the next
/// operator pod drops the half-made database and deletes the object.
#[test]
fn a_branch_half_made_when_the_operator_pod_goes_is_dropped_by_the_next_one() {
    require_sandbox!();
    let Shop {
        sim,
        source,
        before,
        _drop,
    } = shop("kc");
    let config = sim.dir.path().join("slow.toml");
    std::fs::write(
        &config,
        format!(
            "[[db_branches]]\ntype = \"postgres\"\nname = \"{source}\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {{ mode = \"schema\", tables = {{ users = {{ filter = \"WHERE (SELECT true FROM pg_sleep(120))\" }} }} }}\n\
             ttl = \"1h\"\nid = \"crash\"\n"
        ),
    )
    .unwrap();
    let mut session = remora_kube(&sim, &["run", "--operator", "kube", "-f"])
        .arg(&config)
        .args(["-t", "deployment/shop", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let branch = format!("remora_{source}_crash");
    poll(|| database_exists(&branch), "the branch database created");
    let records = sim.kubectl(&["get", "remoradbbranches", "-n", OPERATOR_NS, "-o", "wide"]);
    assert!(
        records.contains(&branch) && records.contains("being made"),
        "recorded before it is made:\n{records}"
    );
    let old = operator_pods(&sim);
    assert_eq!(old.len(), 1, "{old:?}");
    sim.kubectl(&["delete", "pod", "-n", OPERATOR_NS, &old[0].0]);
    let _ = session.kill();
    let _ = session.wait();
    poll(
        || {
            let pods = operator_pods(&sim);
            pods.len() == 1 && pods[0].0 != old[0].0 && pods[0].1
        },
        "a new operator pod, ready",
    );
    let start = std::time::Instant::now();
    while database_exists(&branch) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "the new operator did not drop the half-made {branch}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    poll(
        || {
            sim.kubectl(&["get", "remoradbbranches", "-n", OPERATOR_NS, "-o", "name"])
                .trim()
                .is_empty()
        },
        "the RemoraDbBranch gone",
    );
    assert_eq!(pg_checksum(&source), before, "the source changed");
}
