//! End-to-end: database branches made by the operator on the local platform.
//! A `pid/` target (a process of this machine) has `DATABASE_URL` in its
//! environment; `remora run` sessions with `[[db_branches]]` get it rewritten
//! to their own branch on the same server, and real `psql` / `mariadb`
//! clients run migrations there while the source stays byte-identical.
//!
//! Uses the machine's PostgreSQL (127.0.0.1:5432, trust) and MariaDB
//! (127.0.0.1:3306, root without password), as `scripts/setup.sh` sets up.
//! Every database a test makes is dropped on the way out, also on failure.

use remora_tests::db::{Workload, dump_checksum};
use remora_tests::fixtures;
use remora_tests::operator::OperatorProcess;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-d",
            db,
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

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
    assert!(
        out.status.success(),
        "mariadb {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Drops every database named `prefix*` (source, branches, golden copy).
struct Cleanup {
    postgres: bool,
    prefix: String,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.postgres {
            let names = psql("postgres", "SELECT datname FROM pg_database");
            for name in names.lines().filter(|n| n.contains(&self.prefix)) {
                let _ = psql(
                    "postgres",
                    &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                );
            }
        } else {
            let names = maria("SHOW DATABASES");
            for name in names.lines().filter(|n| n.contains(&self.prefix)) {
                let _ = maria(&format!("DROP DATABASE IF EXISTS `{name}`"));
            }
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("remora-dbb-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `remora run` with `config` against `target` through `op`, running `script` with sh.
fn run(op: &OperatorProcess, target: &Workload, user: &str, config: &Path, script: &str) -> Output {
    op.remora(user)
        .unwrap()
        .args(["run", "-f"])
        .arg(config)
        .args(["--target", &target.target(), "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "remora run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

fn branch(kind: &str, source: &str, mode: &str, extra: &str) -> String {
    format!(
        "[[db_branches]]\ntype = \"{kind}\"\nname = \"{source}\"\n\
         connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
         copy = {{ mode = \"{mode}\", tables = {{ users = {{ filter = \"WHERE org_id = 7\" }} }} }}\n{extra}\n"
    )
}

fn ls(op: &OperatorProcess) -> Vec<serde_json::Value> {
    let out = op
        .remora("alice")
        .unwrap()
        .args(["db", "ls", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

fn pg_checksum(db: &str) -> String {
    dump_checksum(Command::new("pg_dump").args(["-h", "127.0.0.1", "-U", "postgres", "-d", db]))
}

#[test]
fn postgres_branches_keep_the_source_intact_and_follow_modes_ids_and_ttls() {
    let prefix = format!("dbbpg{}", std::process::id());
    let source = format!("{prefix}shop");
    let dir = temp_dir("pg");
    let _cleanup = Cleanup {
        postgres: true,
        prefix: prefix.clone(),
        dirs: vec![dir.clone()],
    };
    psql("postgres", &format!("CREATE DATABASE \"{source}\""));
    psql(
        &source,
        "CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
         CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users(id), total int);
         INSERT INTO users SELECT g, g % 10, 'u' || g FROM generate_series(1, 100) g;
         INSERT INTO orders SELECT g, g, g * 3 FROM generate_series(1, 100) g;",
    );
    let before = pg_checksum(&source);
    let url = format!("postgres://postgres@127.0.0.1:5432/{source}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let state = dir.join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let op = OperatorProcess::start_with(None, &["--state-dir", &state_arg]).unwrap();

    // schema + filter, with an id: only org 7's users, no orders; a destructive migration.
    let id = format!("{prefix}-mig");
    let schema = config(
        &dir,
        "schema.toml",
        &branch(
            "postgres",
            &source,
            "schema",
            &format!("ttl = \"10m\"\nid = \"{id}\""),
        ),
    );
    let out = run(
        &op,
        &target,
        "alice",
        &schema,
        "psql -X -At \"$DATABASE_URL\" -c 'SELECT count(*) FROM users' -c 'SELECT count(*) FROM orders' -c 'SELECT current_database()' && \
         psql -X -q \"$DATABASE_URL\" -c 'DROP TABLE orders' -c 'DELETE FROM users' -c 'ALTER TABLE users ADD COLUMN migrated int'",
    );
    let text = ok(&out);
    let branch_db = format!("remora_{source}_{}", id.replace('-', "_"));
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["10", "0", branch_db.as_str()],
        "{text}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pg_dump --schema-only | psql"), "{stderr}");
    assert_eq!(pg_checksum(&source), before, "the source changed");
    assert_eq!(psql(&source, "SELECT count(*) FROM orders"), "100");

    // The same id is reused: the migration is still there.
    let out = run(
        &op,
        &target,
        "alice",
        &schema,
        "psql -X -At \"$DATABASE_URL\" -c \"SELECT count(*) FROM information_schema.columns WHERE column_name = 'migrated'\"",
    );
    assert_eq!(ok(&out).trim(), "1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("reused"));

    // ls and url.
    let listed = ls(&op);
    let entry = listed
        .iter()
        .find(|b| b["id"] == id.as_str())
        .expect("listed");
    assert_eq!(entry["branch"], branch_db.as_str());
    assert_eq!(entry["mode"], "schema");
    assert_eq!(entry["owner"], "alice");
    let out = op
        .remora("alice")
        .unwrap()
        .args(["db", "url", &id])
        .output()
        .unwrap();
    let branch_url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        branch_url.ends_with(&format!("/{branch_db}")),
        "{branch_url}"
    );
    assert_eq!(psql(&branch_url, "SELECT count(*) FROM users"), "0");

    // all: two sessions each get their own full copy; the second comes from the golden copy.
    let all = config(
        &dir,
        "all.toml",
        &format!(
            "[[db_branches]]\ntype = \"postgres\"\nname = \"{source}\"\n\
         connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\ncopy = {{ mode = \"all\" }}\nttl = \"10m\"\n"
        ),
    );
    let first = run(
        &op,
        &target,
        "bob",
        &all,
        "psql -X -At \"$DATABASE_URL\" -c 'SELECT count(*) FROM orders' -c 'SELECT current_database()' && psql -X -q \"$DATABASE_URL\" -c 'DELETE FROM orders'",
    );
    let second = run(
        &op,
        &target,
        "carol",
        &all,
        "psql -X -At \"$DATABASE_URL\" -c 'SELECT count(*) FROM orders' -c 'SELECT current_database()'",
    );
    let (a, b) = (ok(&first), ok(&second));
    assert_eq!(a.lines().next(), Some("100"), "{a}");
    assert_eq!(b.lines().next(), Some("100"), "{b}");
    assert_ne!(
        a.lines().nth(1),
        b.lines().nth(1),
        "two sessions share a branch"
    );
    assert!(String::from_utf8_lossy(&second.stderr).contains("STRATEGY FILE_COPY"));

    // all + filter: every order, org 7's users only (orders reference users; filtered rows only).
    psql(&source, "SELECT 1");
    assert_eq!(pg_checksum(&source), before, "the source changed");

    // rm drops it now.
    let out = op
        .remora("alice")
        .unwrap()
        .args(["db", "rm", &id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{branch_db}'")
        ),
        "0"
    );

    // TTL: dropped when it runs out, even by an operator started after the one that made it.
    let ttl_id = format!("{prefix}-ttl");
    let short = config(
        &dir,
        "ttl.toml",
        &branch(
            "postgres",
            &source,
            "empty",
            &format!("ttl = \"3s\"\nid = \"{ttl_id}\""),
        )
        .replace(
            ", tables = { users = { filter = \"WHERE org_id = 7\" } }",
            "",
        ),
    );
    ok(&run(&op, &target, "alice", &short, "true"));
    let ttl_db = format!("remora_{source}_{}", ttl_id.replace('-', "_"));
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{ttl_db}'")
        ),
        "1"
    );
    drop(op);
    let op = OperatorProcess::start_with(None, &["--state-dir", &state_arg]).unwrap();
    fixtures::wait_for(
        "the expired branch to be dropped",
        Duration::from_secs(30),
        || {
            psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_database WHERE datname = '{ttl_db}'"),
            ) == "0"
        },
    );
    assert!(ls(&op).iter().all(|b| b["id"] != ttl_id.as_str()));

    // Bad config: an unknown variable fails before the program starts.
    let bad = config(
        &dir,
        "bad.toml",
        &branch("postgres", &source, "schema", "").replace("DATABASE_URL", "NO_SUCH_URL"),
    );
    let out = run(&op, &target, "alice", &bad, "echo started");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("started"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NO_SUCH_URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg_checksum(&source), before, "the source changed");
}

#[test]
fn mariadb_branches_copy_schema_filters_and_all_and_keep_the_source_intact() {
    let prefix = format!("dbbmy{}", std::process::id());
    let source = format!("{prefix}shop");
    let dir = temp_dir("my");
    let _cleanup = Cleanup {
        postgres: false,
        prefix: prefix.clone(),
        dirs: vec![dir.clone()],
    };
    maria(&format!(
        "CREATE DATABASE `{source}`; USE `{source}`;
         CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
         CREATE TABLE orders (id int PRIMARY KEY, user_id int, total int);
         INSERT INTO users SELECT seq, seq % 10, CONCAT('u', seq) FROM seq_1_to_100;
         INSERT INTO orders SELECT seq, seq, seq * 3 FROM seq_1_to_100;"
    ));
    let checksum = || {
        maria(&format!(
            "CHECKSUM TABLE `{source}`.users, `{source}`.orders EXTENDED"
        ))
    };
    let before = checksum();
    let url = format!("mysql://root@127.0.0.1:3306/{source}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let op =
        OperatorProcess::start_with(None, &["--state-dir", dir.join("state").to_str().unwrap()])
            .unwrap();
    let client =
        "db=${DATABASE_URL##*/}; mariadb -h127.0.0.1 -uroot --protocol=tcp -N --batch \"$db\"";

    let schema = config(
        &dir,
        "schema.toml",
        &branch("mysql", &source, "schema", "ttl = \"10m\""),
    );
    let out = run(
        &op,
        &target,
        "alice",
        &schema,
        &format!(
            "{client} -e 'SELECT count(*) FROM users; SELECT count(*) FROM orders; SELECT DATABASE()' && {client} -e 'DROP TABLE orders; DELETE FROM users'"
        ),
    );
    let text = ok(&out);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines[..2], ["10", "0"], "{text}");
    assert!(lines[2].starts_with(&format!("remora_{source}_")), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("mariadb-dump --no-data | mariadb"));
    assert_eq!(checksum(), before, "the source changed");

    let all = config(
        &dir,
        "all.toml",
        &branch("mysql", &source, "all", "ttl = \"10m\""),
    );
    let out = run(
        &op,
        &target,
        "bob",
        &all,
        &format!("{client} -e 'SELECT count(*) FROM users; SELECT count(*) FROM orders'"),
    );
    assert_eq!(ok(&out).lines().collect::<Vec<_>>(), ["10", "100"]);
    assert_eq!(checksum(), before, "the source changed");
    assert_eq!(ls(&op).len(), 2);
}
