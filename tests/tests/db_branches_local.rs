//! End-to-end: database branches made by the operator on the local platform.
//! A `pid/` target (a process of this machine) has `DATABASE_URL` in its
//! environment; `remora run` sessions with `[[db_branches]]` get it rewritten
//! to their own branch on the same server, and real `psql` / `mariadb`
//! clients run migrations there while the source stays byte-identical.
//!
//! Uses the machine's PostgreSQL (127.0.0.1:5432, trust) and MariaDB
//! (127.0.0.1:3306, root without password), as `scripts/setup.sh` sets up.
//! Every database a test makes is dropped on the way out, also on failure.

use remora_tests::db::{MariaServer, Workload, XfsMount, dump_checksum, psql, wait_golden_ready};
use remora_tests::fixtures;
use remora_tests::operator::OperatorProcess;
use remora_tests::pg18::Pg18;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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
            let roles = psql("postgres", "SELECT rolname FROM pg_roles");
            for role in roles.lines().filter(|n| n.contains(&self.prefix)) {
                let _ = psql("postgres", &format!("DROP ROLE IF EXISTS \"{role}\""));
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

/// Which server a test's databases are on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Db {
    Postgres,
    Mariadb,
}

/// A test's names: the prefix `dbb<tag><pid>` of everything it makes, its
/// source database `<prefix>shop`, a fresh temporary directory; and the
/// cleanup that drops them all on the way out.
struct Names {
    prefix: String,
    source: String,
    dir: PathBuf,
    _cleanup: Cleanup,
}

fn names(tag: &str, db: Db) -> Names {
    let prefix = format!("dbb{tag}{}", std::process::id());
    let dir = temp_dir(tag);
    Names {
        source: format!("{prefix}shop"),
        _cleanup: Cleanup {
            postgres: db == Db::Postgres,
            prefix: prefix.clone(),
            dirs: vec![dir.clone()],
        },
        prefix,
        dir,
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

/// `all.toml` in `dir`: a whole-database (`all`) branch of `source`, reached
/// through the target's `DATABASE_URL`, living 10 minutes; `extra` lines
/// (an `id = ...`) appended.
fn all_copy_config(dir: &Path, kind: &str, source: &str, extra: &str) -> PathBuf {
    config(
        dir,
        "all.toml",
        &format!(
            "[[db_branches]]\ntype = \"{kind}\"\nname = \"{source}\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\ncopy = {{ mode = \"all\" }}\n\
             ttl = \"10m\"\n{extra}"
        ),
    )
}

/// With no branch server configured, a user who may not create databases on
/// `server` (host:port) is refused before the program starts, naming why.
fn refused_without_branch_server(
    target: &Workload,
    config: &Path,
    app: &str,
    server: &str,
) -> String {
    let op = OperatorProcess::start(None).unwrap();
    let out = run(&op, target, "alice", config, "echo started");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("started"));
    let text = flat(&out);
    assert!(
        text.contains(&format!("{app}maynotcreatedatabaseson{server}")),
        "{text}"
    );
    text
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

/// stderr without whitespace and the error box's borders (remora wraps
/// errors to the terminal's width).
fn flat(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '│')
        .collect()
}

fn pg_checksum(db: &str) -> String {
    dump_checksum(Command::new("pg_dump").args(["-h", "127.0.0.1", "-U", "postgres", "-d", db]))
}

#[test]
fn postgres_branches_keep_the_source_intact_and_follow_modes_ids_and_ttls() {
    let Names {
        prefix,
        source,
        dir,
        _cleanup,
    } = names("pg", Db::Postgres);
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
    assert_eq!(entry["type"], "postgres");
    assert_eq!(entry["source"], source.as_str());
    let (created, expires) = (
        entry["created"].as_u64().unwrap(),
        entry["expires"].as_u64().unwrap(),
    );
    // Made with a 10-minute TTL, and reused since (which keeps the later expiry).
    assert!(
        (created + 600..=created + 660).contains(&expires),
        "{entry}"
    );
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
    let all = all_copy_config(&dir, "postgres", &source, "");
    let first = run(
        &op,
        &target,
        "bob",
        &all,
        "psql -X -At \"$DATABASE_URL\" -c 'SELECT count(*) FROM orders' -c 'SELECT current_database()' && psql -X -q \"$DATABASE_URL\" -c 'DELETE FROM orders'",
    );
    // The first is filled directly; the golden copy is made after it, in
    // the background, and the next ones clone it.
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("golden copy for the next branches"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    wait_golden_ready(&state, Duration::from_secs(60)).unwrap();
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

    // (all + filter: `postgres_all_with_a_filter_copies_every_row_but_the_filtered_tables`.)
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
    let Names {
        prefix: _,
        source,
        dir,
        _cleanup,
    } = names("my", Db::Mariadb);
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

#[test]
fn postgres_without_createdb_branches_on_a_branch_server_and_refuses_a_version_mismatch() {
    let Names {
        prefix,
        source,
        dir,
        _cleanup,
    } = names("srv", Db::Postgres);
    let app = format!("{prefix}app");
    // The application's role may not create databases.
    psql(
        "postgres",
        &format!("CREATE ROLE \"{app}\" LOGIN NOCREATEDB PASSWORD 'app-pw'"),
    );
    psql(
        "postgres",
        &format!("CREATE DATABASE \"{source}\" OWNER \"{app}\""),
    );
    psql(
        &source,
        &format!(
            "SET ROLE \"{app}\";
             CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
             CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users(id), total int);
             INSERT INTO users SELECT g, g % 10, 'u' || g FROM generate_series(1, 100) g;
             INSERT INTO orders SELECT g, g, g * 3 FROM generate_series(1, 100) g;"
        ),
    );
    let before = pg_checksum(&source);
    let url = format!("postgres://{app}:app-pw@127.0.0.1:5432/{source}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let id = format!("{prefix}-b");
    let all = all_copy_config(&dir, "postgres", &source, &format!("id = \"{id}\"\n"));

    // No branch server configured: refused before the program starts.
    let text = refused_without_branch_server(&target, &all, &app, "127.0.0.1:5432");
    assert!(text.contains("branch_server"), "{text}");

    // A branch server of the same version (this machine's PostgreSQL,
    // another cluster): the branch is made there and the session's URL
    // points at it.
    let server = Pg18::start_with(&Pg18::local_bindir().unwrap(), None).unwrap();
    let db_config = config(
        &dir,
        "db.toml",
        &format!(
            "[[branch_server]]\ntype = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:{}/postgres\"\n",
            server.port()
        ),
    );
    let op =
        OperatorProcess::start_with(None, &["--db-config", db_config.to_str().unwrap()]).unwrap();
    let out = run(
        &op,
        &target,
        "alice",
        &all,
        "psql -X -At \"$DATABASE_URL\" -c 'SELECT count(*) FROM orders' -c 'SELECT inet_server_port()' \
         -c 'SELECT current_database()' && psql -X -q \"$DATABASE_URL\" -c 'DROP TABLE orders' -c 'DELETE FROM users'",
    );
    let text = ok(&out);
    let branch_db = format!("remora_{source}_{}", id.replace('-', "_"));
    let port = server.port().to_string();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["100", port.as_str(), branch_db.as_str()],
        "{text}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("on the branch server 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("pg_dump -Fd -Z0 -j"), "{stderr}");
    assert_eq!(
        server
            .psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_database WHERE datname = '{branch_db}'")
            )
            .unwrap(),
        "1"
    );
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{branch_db}'")
        ),
        "0",
        "the branch was made on the source's server"
    );
    assert_eq!(pg_checksum(&source), before, "the source changed");
    let out = op
        .remora("alice")
        .unwrap()
        .args(["db", "url", &id])
        .output()
        .unwrap();
    let branch_url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        branch_url.ends_with(&format!("127.0.0.1:{port}/{branch_db}")),
        "{branch_url}"
    );
    assert_eq!(psql(&branch_url, "SELECT count(*) FROM users"), "0");
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
        server
            .psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_database WHERE datname = '{branch_db}'")
            )
            .unwrap(),
        "0"
    );
    drop(op);

    // A PostgreSQL 18 branch server for this PostgreSQL 15 source: refused,
    // naming both versions, before the program starts.
    let newer = Pg18::start_with(&Pg18::bindir().unwrap(), None).unwrap();
    let db_config = config(
        &dir,
        "db18.toml",
        &format!(
            "[[branch_server]]\ntype = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:{}/postgres\"\n",
            newer.port()
        ),
    );
    let op =
        OperatorProcess::start_with(None, &["--db-config", db_config.to_str().unwrap()]).unwrap();
    let out = run(&op, &target, "alice", &all, "echo started");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("started"));
    let text = flat(&out);
    let local_major = psql(
        "postgres",
        "SELECT current_setting('server_version_num')::int / 10000",
    );
    assert!(text.contains("versionmismatch"), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:5432runsPostgreSQL{local_major}.")),
        "{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{}runsPostgreSQL18.", newer.port())),
        "{text}"
    );
    assert_eq!(pg_checksum(&source), before, "the source changed");
}

#[test]
fn postgres_sources_are_read_through_the_configured_read_only_role() {
    let Names {
        prefix,
        source,
        dir,
        _cleanup,
    } = names("ro", Db::Postgres);
    let (app, reader) = (format!("{prefix}app"), format!("{prefix}reader"));
    psql("postgres", &format!("CREATE DATABASE \"{source}\""));
    // The application may create databases but not read `secrets`; the
    // read-only role may read every table and nothing else.
    psql(
        &source,
        &format!(
            "CREATE ROLE \"{app}\" LOGIN CREATEDB;
             CREATE ROLE \"{reader}\" LOGIN PASSWORD 'reader-pw';
             CREATE TABLE users (id int PRIMARY KEY, name text);
             CREATE TABLE secrets (id int PRIMARY KEY, value text);
             INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 20) g;
             INSERT INTO secrets SELECT g, md5(g::text) FROM generate_series(1, 30) g;
             GRANT SELECT ON users TO \"{app}\";
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{reader}\";"
        ),
    );
    let before = pg_checksum(&source);
    let url = format!("postgres://{app}@127.0.0.1:5432/{source}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let all = all_copy_config(&dir, "postgres", &source, "");
    let script =
        "psql -X -At \"$DATABASE_URL\" -c 'SELECT count(*) FROM secrets' -c 'SELECT current_user'";

    // Without a read-only role the source is read with the application's
    // credentials, which cannot read `secrets`.
    let op = OperatorProcess::start(None).unwrap();
    let out = run(&op, &target, "alice", &all, script);
    assert!(!out.status.success());
    let text = flat(&out);
    assert!(text.contains("permissiondeniedfortablesecrets"), "{text}");
    drop(op);

    // With one, every read of the source logs in as it; the branch is still
    // made (and owned) by the application's role.
    let db_config = config(
        &dir,
        "db.toml",
        &format!(
            "[[read_only_role]]\ntype = \"postgres\"\nserver = \"127.0.0.1:5432\"\n\
             user = \"{reader}\"\npassword_env = \"TEST_READER_PW\"\n"
        ),
    );
    let op = OperatorProcess::start_with_env(
        None,
        &["--db-config", db_config.to_str().unwrap()],
        &[("TEST_READER_PW", "reader-pw")],
    )
    .unwrap();
    let out = run(&op, &target, "alice", &all, script);
    assert_eq!(
        ok(&out).lines().collect::<Vec<_>>(),
        ["30", app.as_str()],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg_checksum(&source), before, "the source changed");
}

#[test]
fn mariadb_all_branches_are_reflinked_backups_served_by_their_own_server() {
    let Names {
        prefix,
        source,
        dir,
        _cleanup,
    } = names("mb", Db::Mariadb);
    // Dropped before the cleanup: stops the branches' servers, unmounts.
    let xfs = XfsMount::new("mb", 1024).unwrap();
    maria(&format!(
        "CREATE DATABASE `{source}`; USE `{source}`;
         CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
         CREATE TABLE orders (id int PRIMARY KEY, user_id int, total int);
         INSERT INTO users SELECT seq, seq % 10, CONCAT('u', seq) FROM seq_1_to_100;
         INSERT INTO orders SELECT seq, seq, seq * 3 FROM seq_1_to_100;
         CREATE TABLE bulk (id int PRIMARY KEY, body text);
         INSERT INTO bulk SELECT seq, REPEAT(MD5(seq), 6) FROM seq_1_to_200000;"
    ));
    let checksum = || {
        maria(&format!(
            "CHECKSUM TABLE `{source}`.users, `{source}`.orders EXTENDED"
        ))
    };
    let before = checksum();
    let db_config = config(
        &dir,
        "db.toml",
        &format!(
            "[[mariadb_backup]]\nserver = \"127.0.0.1:3306\"\nworkdir = \"{}/work\"\n",
            xfs.path().display()
        ),
    );
    let target = Workload::start(&[(
        "DATABASE_URL",
        &format!("mysql://root@127.0.0.1:3306/{source}"),
    )]);
    let op =
        OperatorProcess::start_with(None, &["--db-config", db_config.to_str().unwrap()]).unwrap();
    let id = format!("{prefix}-a");
    let all = config(
        &dir,
        "all.toml",
        &branch(
            "mysql",
            &source,
            "all",
            &format!("ttl = \"10m\"\nid = \"{id}\""),
        )
        .replace(
            ", tables = { users = { filter = \"WHERE org_id = 7\" } }",
            "",
        ),
    );
    // The client takes host, port and database from the URL it is given.
    let client = "hp=${DATABASE_URL#*@}; db=${hp#*/}; hp=${hp%%/*}; \
                  mariadb -h\"${hp%:*}\" -P\"${hp##*:}\" -uroot --protocol=tcp -N --batch \"$db\"";
    let out = run(
        &op,
        &target,
        "alice",
        &all,
        &format!(
            "{client} -e 'SELECT count(*) FROM orders; SELECT @@port' && {client} -e 'DROP TABLE orders; DELETE FROM users'"
        ),
    );
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"100"), "{text}");
    let port = lines.get(1).copied().unwrap_or_default().to_owned();
    assert_ne!(port, "3306", "the session reached the source's server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cp --reflink, own mariadbd on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("refreshed by mariadb-backup"), "{stderr}");
    assert_eq!(checksum(), before, "the source changed");

    // Same id: reused, with the destructive migration still there.
    let out = run(
        &op,
        &target,
        "alice",
        &all,
        &format!("{client} -e 'SELECT count(*) FROM users; SELECT @@port'"),
    );
    assert_eq!(
        ok(&out).lines().collect::<Vec<_>>(),
        ["0", port.as_str()],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("reused"));

    // Another branch is a reflinked copy of the live golden copy: it shares
    // its blocks (a plain copy of the datadir would take its size).
    let golden_size: u64 = std::fs::read_dir(xfs.path().join("work"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("_golden"))
        .map(|e| walk_size(&e.path()))
        .sum();
    assert!(
        golden_size > 30 << 20,
        "the golden copy has only {golden_size} bytes"
    );
    let used = xfs.used_bytes();
    let other = config(
        &dir,
        "other.toml",
        &branch("mysql", &source, "all", "ttl = \"10m\"").replace(
            ", tables = { users = { filter = \"WHERE org_id = 7\" } }",
            "",
        ),
    );
    let out = run(
        &op,
        &target,
        "bob",
        &other,
        &format!("{client} -e 'SELECT count(*) FROM orders; SELECT @@port'"),
    );
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"100"), "{text}");
    assert_ne!(lines.get(1).copied(), Some(port.as_str()), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("refreshed"), "{stderr}");
    let grown = xfs.used_bytes().saturating_sub(used);
    assert!(
        grown < golden_size / 2,
        "the second branch took {grown} bytes; the golden copy has {golden_size}"
    );
    assert_eq!(checksum(), before, "the source changed");

    // rm stops its server and removes its datadir.
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
    let refused = Command::new("mariadb")
        .args(["-h127.0.0.1", "-uroot", "--protocol=tcp", "-e", "SELECT 1"])
        .arg(format!("-P{port}"))
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "the branch's server still answers"
    );
    drop(op);
    drop(xfs);
}

/// Bytes in the files under `dir` (their apparent sizes).
fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => walk_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Drops MariaDB users on the way out.
struct DropMariaUsers(Vec<String>);

impl Drop for DropMariaUsers {
    fn drop(&mut self) {
        for user in &self.0 {
            let _ = maria(&format!("DROP USER IF EXISTS '{user}'@'%'"));
        }
    }
}

/// A shell prelude giving `m`: the `mariadb` client connected to the
/// session's `DATABASE_URL` (host 127.0.0.1), whatever its port and user.
const MARIA_CLIENT: &str = "eval \"$(python3 -c 'import os, urllib.parse as u; \
     p = u.urlparse(os.environ[\"DATABASE_URL\"]); \
     print(\"P=%s D=%s U=%s W=%s\" % (p.port, p.path[1:], p.username, p.password or \"\"))')\"; \
     m() { MYSQL_PWD=$W mariadb -h127.0.0.1 -P$P -u$U --protocol=tcp -N --batch $D \"$@\"; }; ";

#[test]
fn mariadb_without_create_rights_branches_on_a_branch_server() {
    let Names {
        prefix,
        source,
        dir,
        _cleanup,
    } = names("msrv", Db::Mariadb);
    let app = format!("{prefix}app");
    let _users = DropMariaUsers(vec![app.clone()]);
    // The application may use its database, and create none.
    maria(&format!(
        "CREATE DATABASE `{source}`; USE `{source}`;
         CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
         CREATE TABLE orders (id int PRIMARY KEY, user_id int, total int);
         INSERT INTO users SELECT seq, seq % 10, CONCAT('u', seq) FROM seq_1_to_100;
         INSERT INTO orders SELECT seq, seq, seq * 3 FROM seq_1_to_100;
         CREATE USER '{app}'@'%' IDENTIFIED BY 'app-pw';
         GRANT ALL PRIVILEGES ON `{source}`.* TO '{app}'@'%';"
    ));
    let checksum = || {
        maria(&format!(
            "CHECKSUM TABLE `{source}`.users, `{source}`.orders EXTENDED"
        ))
    };
    let before = checksum();
    let url = format!("mysql://{app}:app-pw@127.0.0.1:3306/{source}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let id = format!("{prefix}-b");
    let all = all_copy_config(&dir, "mysql", &source, &format!("id = \"{id}\"\n"));

    // No branch server configured: refused before the program starts.
    refused_without_branch_server(&target, &all, &app, "127.0.0.1:3306");

    // A second MariaDB 10.11 server as the branch server: the branch is
    // made there and the session's URL points at it.
    let server = MariaServer::start("branch-server").unwrap();
    let db_config = config(
        &dir,
        "db.toml",
        &format!(
            "[[branch_server]]\ntype = \"mysql\"\nurl = \"mysql://root@127.0.0.1:{}/mysql\"\n",
            server.port()
        ),
    );
    let op =
        OperatorProcess::start_with(None, &["--db-config", db_config.to_str().unwrap()]).unwrap();
    let out = run(
        &op,
        &target,
        "alice",
        &all,
        &format!(
            "{MARIA_CLIENT}m -e 'SELECT count(*) FROM orders; SELECT @@port; SELECT DATABASE()' \
             && m -e 'DROP TABLE orders; DELETE FROM users'"
        ),
    );
    let text = ok(&out);
    let branch_db = format!("remora_{source}_{}", id.replace('-', "_"));
    let port = server.port().to_string();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["100", port.as_str(), branch_db.as_str()],
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("on the branch server 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert_eq!(
        server
            .sql(&format!(
                "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{branch_db}'"
            ))
            .unwrap(),
        "1"
    );
    assert_eq!(
        maria(&format!(
            "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{branch_db}'"
        )),
        "0",
        "the branch was made on the source's server"
    );
    assert_eq!(checksum(), before, "the source changed");
    // Dropped on the branch server.
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
        server
            .sql(&format!(
                "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{branch_db}'"
            ))
            .unwrap(),
        "0"
    );
}

#[test]
fn mariadb_sources_are_read_through_the_configured_read_only_role() {
    let Names {
        prefix,
        source,
        dir,
        _cleanup,
    } = names("mro", Db::Mariadb);
    let (app, reader) = (format!("{prefix}app"), format!("{prefix}rd"));
    let _users = DropMariaUsers(vec![app.clone(), reader.clone()]);
    // The application may create its branches but not read `secrets`; the
    // read-only user may read every table of the source and nothing else.
    maria(&format!(
        "CREATE DATABASE `{source}`; USE `{source}`;
         CREATE TABLE users (id int PRIMARY KEY, name text);
         CREATE TABLE secrets (id int PRIMARY KEY, value text);
         INSERT INTO users SELECT seq, CONCAT('u', seq) FROM seq_1_to_20;
         INSERT INTO secrets SELECT seq, MD5(seq) FROM seq_1_to_30;
         CREATE USER '{app}'@'%' IDENTIFIED BY 'app-pw';
         GRANT SELECT ON `{source}`.users TO '{app}'@'%';
         GRANT ALL PRIVILEGES ON `remora\\_{prefix}%`.* TO '{app}'@'%';
         CREATE USER '{reader}'@'%' IDENTIFIED BY 'reader-pw';
         GRANT SELECT, SHOW VIEW, TRIGGER ON `{source}`.* TO '{reader}'@'%';"
    ));
    let checksum = || {
        maria(&format!(
            "CHECKSUM TABLE `{source}`.users, `{source}`.secrets EXTENDED"
        ))
    };
    let before = checksum();
    let url = format!("mysql://{app}:app-pw@127.0.0.1:3306/{source}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let all = all_copy_config(&dir, "mysql", &source, "");
    let script =
        format!("{MARIA_CLIENT}m -e 'SELECT count(*) FROM secrets; SELECT CURRENT_USER()'");

    // Without a read-only user the source is read with the application's
    // credentials: mariadb-dump does not even list `secrets`, so the
    // branch has no such table.
    let op = OperatorProcess::start(None).unwrap();
    let out = run(&op, &target, "alice", &all, &script);
    assert!(!out.status.success());
    let text = flat(&out);
    assert!(text.contains("secrets'doesn'texist"), "{text}");
    drop(op);

    // With one, every read of the source logs in as it; the branch is still
    // made by the application's user, on the source's server.
    let db_config = config(
        &dir,
        "db.toml",
        &format!(
            "dump_jobs = 2\n[[read_only_role]]\ntype = \"mysql\"\nserver = \"127.0.0.1:3306\"\n\
             user = \"{reader}\"\npassword_env = \"TEST_READER_PW\"\n"
        ),
    );
    let op = OperatorProcess::start_with_env(
        None,
        &["--db-config", db_config.to_str().unwrap()],
        &[("TEST_READER_PW", "reader-pw")],
    )
    .unwrap();
    let out = run(&op, &target, "alice", &all, &script);
    assert_eq!(
        ok(&out).lines().collect::<Vec<_>>(),
        ["30", format!("{app}@%").as_str()],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The role has no RELOAD (BACKUP STAGE): no parallel dump from one
    // snapshot, and the session's output says why.
    assert!(
        flat(&out).contains(&format!(
            "mariadb-dump|mariadb(oneconnection:{reader}hasnoRELOADprivilege"
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(checksum(), before, "the source changed");
}

/// An operator killed while a branch is being made (after its `CREATE
/// DATABASE`, before the branch is made) leaves no database behind: the
/// branch was recorded first, and the operator started again with the same
/// `--state-dir` drops it.
#[test]
fn a_branch_half_made_when_the_operator_is_killed_is_dropped_by_its_successor() {
    let Names {
        source,
        dir,
        _cleanup,
        ..
    } = names("crash", Db::Postgres);
    psql("postgres", &format!("CREATE DATABASE \"{source}\""));
    psql(
        &source,
        "CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
         INSERT INTO users VALUES (1, 7, 'u1');",
    );
    let before = pg_checksum(&source);
    let url = format!("postgres://postgres@127.0.0.1:5432/{source}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let state_arg = dir.join("state").to_str().unwrap().to_owned();
    let op = OperatorProcess::start_with(None, &["--state-dir", &state_arg]).unwrap();
    // The filtered rows take a minute to read: the operator is killed
    // meanwhile, its branch database made and half filled.
    let slow = config(
        &dir,
        "slow.toml",
        &format!(
            "[[db_branches]]\ntype = \"postgres\"\nname = \"{source}\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {{ mode = \"schema\", tables = {{ users = {{ filter = \"WHERE (SELECT true FROM pg_sleep(60))\" }} }} }}\n\
             ttl = \"1h\"\nid = \"crash\"\n"
        ),
    );
    let branch = format!("remora_{source}_crash");
    let exists = |name: &str| {
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        ) == "1"
    };
    let mut session = op
        .remora("alice")
        .unwrap()
        .args(["run", "-f"])
        .arg(&slow)
        .args(["--target", &target.target(), "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    fixtures::wait_for(
        "the branch database to be created",
        Duration::from_secs(60),
        || exists(&branch),
    );
    kill_operator_checking_its_copies_die(op);
    let _ = session.wait();
    assert!(exists(&branch), "the killed operator dropped its branch");

    let op = OperatorProcess::start_with(None, &["--state-dir", &state_arg]).unwrap();
    fixtures::wait_for(
        "the half-made branch to be dropped by the next operator",
        Duration::from_secs(60),
        || !exists(&branch),
    );
    assert!(ls(&op).iter().all(|b| b["id"] != "crash"));
    assert_eq!(pg_checksum(&source), before, "the source changed");
}

/// `copy = { mode = "all" }` with a filter: every table whole but the
/// filtered one, which gets only its filtered rows (a table no foreign key
/// points at); a destructive migration on the branch leaves the source's
/// dump unchanged.
#[test]
fn postgres_all_with_a_filter_copies_every_row_but_the_filtered_tables() {
    let Names {
        source,
        dir,
        _cleanup,
        ..
    } = names("pgaf", Db::Postgres);
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
    let op = OperatorProcess::start(None).unwrap();
    let filtered = config(
        &dir,
        "all-filter.toml",
        &format!(
            "[[db_branches]]\ntype = \"postgres\"\nname = \"{source}\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {{ mode = \"all\", tables = {{ orders = {{ filter = \"WHERE total > 270\" }} }} }}\n\
             ttl = \"10m\"\n"
        ),
    );
    let out = run(
        &op,
        &target,
        "alice",
        &filtered,
        "psql -X -At \"$DATABASE_URL\" -c 'SELECT count(*) FROM users' -c 'SELECT count(*), min(total) FROM orders' && \
         psql -X -q \"$DATABASE_URL\" -c 'DROP TABLE orders' -c 'TRUNCATE users'",
    );
    let text = ok(&out);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["100", "10|273"],
        "{text}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("+ filtered tables"), "{stderr}");
    assert_eq!(pg_checksum(&source), before, "the source changed");
}

/// `connection = { params = … }`: the database variable is rewritten to the
/// branch (the others name the same server and stay).
#[test]
fn postgres_params_connections_get_their_database_variable_rewritten() {
    let Names {
        source,
        dir,
        _cleanup,
        ..
    } = names("pgpar", Db::Postgres);
    psql("postgres", &format!("CREATE DATABASE \"{source}\""));
    psql(
        &source,
        "CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
         INSERT INTO users SELECT g, g % 10, 'u' || g FROM generate_series(1, 100) g;",
    );
    let before = pg_checksum(&source);
    let target = Workload::start(&[
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", "5432"),
        ("DB_USER", "postgres"),
        ("DB_NAME", &source),
    ]);
    let op = OperatorProcess::start(None).unwrap();
    let params = config(
        &dir,
        "params.toml",
        &format!(
            "[[db_branches]]\ntype = \"postgres\"\nname = \"{source}\"\n\
             connection = {{ params = {{ host = {{ env = \"DB_HOST\" }}, port = {{ env = \"DB_PORT\" }}, \
             user = {{ env = \"DB_USER\" }}, database = {{ env = \"DB_NAME\" }} }} }}\n\
             copy = {{ mode = \"schema\", tables = {{ users = {{ filter = \"WHERE org_id = 7\" }} }} }}\n\
             ttl = \"10m\"\nid = \"params\"\n"
        ),
    );
    let out = run(
        &op,
        &target,
        "alice",
        &params,
        "echo \"$DB_HOST $DB_PORT $DB_USER $DB_NAME\"; \
         psql -X -q -At -h \"$DB_HOST\" -p \"$DB_PORT\" -U \"$DB_USER\" -d \"$DB_NAME\" -c 'SELECT count(*) FROM users' -c 'DROP TABLE users'",
    );
    let text = ok(&out);
    let branch = format!("remora_{source}_params");
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [format!("127.0.0.1 5432 postgres {branch}").as_str(), "10"],
        "{text}"
    );
    // Nothing in the target changed: its own environment still names the source.
    let pid = target.target().trim_start_matches("pid/").to_owned();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == format!("DB_NAME={source}").as_bytes()),
        "the target's DB_NAME changed"
    );
    assert_eq!(pg_checksum(&source), before, "the source changed");
}

/// A source server that cannot be reached fails the session before the
/// program starts, naming the server.
#[test]
fn an_unreachable_source_server_fails_before_the_program_starts() {
    let Names { dir, _cleanup, .. } = names("unreach", Db::Postgres);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/shop");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let op = OperatorProcess::start(None).unwrap();
    let cfg = config(&dir, "b.toml", &branch("postgres", "shop", "schema", ""));
    let out = run(&op, &target, "alice", &cfg, "echo started");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("started"));
    let text = flat(&out);
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("cannotreach"),
        "{text}"
    );
}

/// MariaDB: an `empty` branch with an id is reused by a second session
/// (its changes still there) and dropped at its TTL.
#[test]
fn mariadb_branches_are_reused_by_id_and_dropped_at_their_ttl() {
    let Names {
        source,
        dir,
        _cleanup,
        ..
    } = names("myttl", Db::Mariadb);
    maria(&format!(
        "CREATE DATABASE `{source}`; USE `{source}`;
         CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
         INSERT INTO users SELECT seq, seq % 10, CONCAT('u', seq) FROM seq_1_to_100;"
    ));
    let url = format!("mysql://root@127.0.0.1:3306/{source}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let op = OperatorProcess::start(None).unwrap();
    let client =
        "db=${DATABASE_URL##*/}; mariadb -h127.0.0.1 -uroot --protocol=tcp -N --batch \"$db\"";
    let cfg = config(
        &dir,
        "empty.toml",
        &format!(
            "[[db_branches]]\ntype = \"mysql\"\nname = \"{source}\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {{ mode = \"empty\" }}\nttl = \"20s\"\nid = \"keep\"\n"
        ),
    );
    let out = run(
        &op,
        &target,
        "alice",
        &cfg,
        &format!("{client} -e 'SHOW TABLES; CREATE TABLE mine (x int); SELECT DATABASE()'"),
    );
    let branch = format!("remora_{source}_keep");
    assert_eq!(ok(&out).trim(), branch, "an empty branch has no tables");
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty database"));
    let out = run(
        &op,
        &target,
        "bob",
        &cfg,
        &format!("{client} -e 'SHOW TABLES'"),
    );
    assert_eq!(ok(&out).trim(), "mine");
    assert!(String::from_utf8_lossy(&out.stderr).contains("reused"));
    fixtures::wait_for(
        "the branch dropped at its TTL",
        Duration::from_secs(90),
        || !maria("SHOW DATABASES").lines().any(|n| n == branch),
    );
    assert!(ls(&op).is_empty());
}

/// A MariaDB branch server of another series is refused before the program
/// starts, naming both versions. (This machine has one MariaDB series: the
/// branch server is a MariaDB 10.11 started with `--version=11.4.2-MariaDB`,
/// the version string it reports, which is what the operator reads.)
#[test]
fn mariadb_refuses_a_branch_server_of_another_series_naming_both_versions() {
    let Names {
        prefix,
        source,
        dir,
        _cleanup,
    } = names("mver", Db::Mariadb);
    let app = format!("{prefix}app");
    let _users = DropMariaUsers(vec![app.clone()]);
    maria(&format!(
        "CREATE DATABASE `{source}`; USE `{source}`;
         CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
         INSERT INTO users SELECT seq, seq % 10, CONCAT('u', seq) FROM seq_1_to_100;
         CREATE USER '{app}'@'%' IDENTIFIED BY 'app-pw';
         GRANT ALL PRIVILEGES ON `{source}`.* TO '{app}'@'%';"
    ));
    let url = format!("mysql://{app}:app-pw@127.0.0.1:3306/{source}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let server = MariaServer::start_with("other-series", &["--version=11.4.2-MariaDB"]).unwrap();
    assert_eq!(server.sql("SELECT VERSION()").unwrap(), "11.4.2-MariaDB");
    let db_config = config(
        &dir,
        "db.toml",
        &format!(
            "[[branch_server]]\ntype = \"mysql\"\nurl = \"mysql://root@127.0.0.1:{}/mysql\"\n",
            server.port()
        ),
    );
    let op =
        OperatorProcess::start_with(None, &["--db-config", db_config.to_str().unwrap()]).unwrap();
    let cfg = config(
        &dir,
        "schema.toml",
        &branch("mysql", &source, "schema", "ttl = \"10m\""),
    );
    let out = run(&op, &target, "alice", &cfg, "echo started");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("started"));
    let text = flat(&out);
    assert!(
        text.contains("versionmismatch")
            && text.contains("10.11")
            && text.contains("11.4")
            && text.contains(&format!("127.0.0.1:{}", server.port())),
        "{text}"
    );
    assert_eq!(
        server
            .sql(&format!(
                "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'remora_{source}%'"
            ))
            .unwrap(),
        "0"
    );
}

/// A child process of the test (a `mariadb` client holding a lock, or
/// writing), killed by its pid and reaped on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The processes descended from `pid` (its children, theirs, …), from
/// `/proc/*/stat`.
fn descendants(pid: u32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((child, ppid));
        }
    }
    let mut found = vec![i32::try_from(pid).unwrap()];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// The database programs an operator runs to copy a branch.
const COPY_PROGRAMS: [&str; 8] = [
    "pg_dump",
    "psql",
    "mariadb",
    "mariadb-dump",
    "mariadb-backup",
    "mydumper",
    "myloader",
    "nsenter",
];

/// `pid`'s command name, unless it is gone (or a zombie, dead but not yet
/// reaped by whoever adopted it).
fn live_comm(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    (rest.split_whitespace().next() != Some("Z")).then_some(comm)
}

/// Once the operator runs a copy program, SIGKILL the operator and check
/// that the copy programs it had started die with it (they would go on
/// reading the source for a minute); then end whatever else it had started
/// (its agents), by their pids.
fn kill_operator_checking_its_copies_die(op: OperatorProcess) {
    let copies = |started: &[i32]| -> Vec<(i32, String)> {
        started
            .iter()
            .filter_map(|&pid| live_comm(pid).map(|comm| (pid, comm)))
            .filter(|(_, comm)| COPY_PROGRAMS.contains(&comm.as_str()))
            .collect()
    };
    let (mut started, mut running) = (Vec::new(), Vec::new());
    fixtures::wait_for(
        "the operator to run a copy program",
        Duration::from_secs(30),
        || {
            started = descendants(op.pid());
            running = copies(&started);
            !running.is_empty()
        },
    );
    let kill = |pid: i32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    kill(i32::try_from(op.pid()).unwrap());
    drop(op);
    fixtures::wait_for(
        &format!("the killed operator's copy programs {running:?} to die with it"),
        Duration::from_secs(10),
        || running.iter().all(|(pid, _)| live_comm(*pid).is_none()),
    );
    for pid in started {
        kill(pid);
    }
}

/// The checksum column of `CHECKSUM TABLE db.t1, db.t2, …` (without the
/// database's name, so that two databases' can be compared).
fn maria_checksums(db: &str, tables: &[&str]) -> Vec<String> {
    let list: Vec<String> = tables.iter().map(|t| format!("`{db}`.`{t}`")).collect();
    maria(&format!("CHECKSUM TABLE {} EXTENDED", list.join(", ")))
        .lines()
        .map(|l| l.rsplit('\t').next().unwrap_or_default().to_owned())
        .collect()
}

/// MariaDB `all` without the fast path is a parallel dump and restore
/// (`mydumper` + `myloader`) whose connections share one snapshot: several
/// tables (generated columns, binary values), a view, a routine, a filtered
/// table with a trigger; the branch's tables have the source's checksums,
/// the source's are unchanged, the session's output says how many
/// connections read rows (more than one), and two tables a writer keeps
/// changing in one transaction each (a transfer from one to the other)
/// while the branch is made are copied from the same moment (their sum is
/// the same as ever).
#[test]
fn mariadb_all_is_a_parallel_dump_and_restore_from_one_snapshot() {
    let Names {
        source,
        dir,
        _cleanup,
        ..
    } = names("mpar", Db::Mariadb);
    let mut setup = format!(
        "CREATE DATABASE `{source}`; USE `{source}`;
         CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
         INSERT INTO users SELECT seq, seq % 10, CONCAT('u', seq) FROM seq_1_to_100;
         CREATE TABLE audit (id int AUTO_INCREMENT PRIMARY KEY, user_id int);
         CREATE TRIGGER users_audit AFTER INSERT ON users FOR EACH ROW
           INSERT INTO audit (user_id) VALUES (NEW.id);
         CREATE VIEW big_ids AS SELECT id FROM t1 WHERE id > 39990;
         CREATE FUNCTION twice(x int) RETURNS int DETERMINISTIC RETURN x * 2;
         CREATE TABLE ledger_a (id int PRIMARY KEY, n bigint);
         CREATE TABLE ledger_b (id int PRIMARY KEY, n bigint);
         INSERT INTO ledger_a VALUES (1, 1000000);
         INSERT INTO ledger_b VALUES (1, 0);"
    );
    // The view needs its table first.
    let tables = ["t1", "t2", "t3", "t4"];
    let mut made = String::new();
    for t in tables {
        made.push_str(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, body text, raw blob, \
               twice int AS (id * 2) VIRTUAL, flags bit(8));
             INSERT INTO {t} (id, body, raw, flags) \
               SELECT seq, REPEAT(MD5(seq), 4), UNHEX(MD5(seq)), seq % 256 FROM seq_1_to_40000;"
        ));
    }
    setup = setup.replacen(
        "CREATE TABLE users",
        &format!("{made}\n CREATE TABLE users"),
        1,
    );
    maria(&setup);
    let still = ["t1", "t2", "t3", "t4", "users", "audit"];
    let before = maria_checksums(&source, &still);

    // Live traffic on the source while the branches are made: transfers
    // between ledger_a and ledger_b, one transaction each, in both orders
    // (a→b, then b→a), so that a lock taking the source's tables one after
    // the other meets a transaction holding the other one whichever order
    // it takes them in. `--force`: an error does not stop the writer; each
    // is counted (`ERROR …` on its stderr) and must never happen: a branch
    // must not make the shared database's transactions fail.
    let writer = LedgerWriter::start(&source);
    let moved = || {
        maria(&format!("SELECT n FROM `{source}`.ledger_b"))
            .parse::<i64>()
            .unwrap()
    };
    fixtures::wait_for("the writer to commit", Duration::from_secs(30), || {
        moved() != 0
    });

    let db_config = config(&dir, "db.toml", "dump_jobs = 4\n");
    let target = Workload::start(&[(
        "DATABASE_URL",
        &format!("mysql://root@127.0.0.1:3306/{source}"),
    )]);
    let op =
        OperatorProcess::start_with(None, &["--db-config", db_config.to_str().unwrap()]).unwrap();
    let all = config(
        &dir,
        "all.toml",
        &branch("mysql", &source, "all", "ttl = \"10m\""),
    );
    let client =
        "db=${DATABASE_URL##*/}; mariadb -h127.0.0.1 -uroot --protocol=tcp -N --batch \"$db\"";
    let out = run(
        &op,
        &target,
        "alice",
        &all,
        &format!(
            "{client} -e 'SELECT count(*) FROM users; SELECT count(*) FROM audit; \
             INSERT INTO users VALUES (1000, 7, \"new\"); SELECT count(*) FROM audit; \
             SELECT twice(21); SELECT count(*) FROM big_ids; \
             SELECT (SELECT n FROM ledger_a) + (SELECT n FROM ledger_b); SELECT DATABASE()'"
        ),
    );
    // Two more branches while the writer goes on (three dumps, as the ones
    // that measured the lock's deadlocks): their ledgers too are from one
    // moment.
    for user in ["bob", "carol"] {
        let more = run(
            &op,
            &target,
            user,
            &all,
            &format!("{client} -e 'SELECT (SELECT n FROM ledger_a) + (SELECT n FROM ledger_b)'"),
        );
        assert_eq!(ok(&more).trim(), "1000000", "{}", flat(&more));
    }
    let written = writer.stop();
    eprintln!(
        "the source's writer: {} pairs of transactions, longest between two pairs {:?}",
        written.pairs, written.longest
    );
    assert!(
        written.errors.is_empty(),
        "the source's writer got {} error(s) while branches were made: {:?}",
        written.errors.len(),
        written.errors
    );
    assert!(written.pairs > 0);
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    // Filtered rows, the filtered table's trigger copied (it did not fire
    // on the copied rows, it fires on a new one), the routine, the view,
    // the two ledgers from one moment.
    assert_eq!(
        lines[..6],
        ["10", "0", "1", "42", "10", "1000000"],
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let branch_db = lines[6];
    assert!(
        branch_db.starts_with(&format!("remora_{source}_")),
        "{text}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let flat_err = flat(&out);
    // How long the source's commits were held, as the session says it.
    eprintln!(
        "{}",
        stderr
            .lines()
            .find(|l| l.contains("mydumper"))
            .unwrap_or_default()
            .trim()
    );
    assert!(
        flat_err.contains("mydumper-t4+myloader-t4(onesnapshot,commitsheld"),
        "{stderr}"
    );
    let readers: usize = flat_err
        .split("rowsreadby")
        .nth(1)
        .and_then(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        readers >= 2,
        "rows read by {readers} connection(s): {stderr}"
    );
    assert_eq!(
        maria_checksums(branch_db, &tables),
        maria_checksums(&source, &tables),
        "the branch's tables differ from the source's"
    );
    assert_eq!(
        maria_checksums(&source, &still),
        before,
        "the source changed"
    );
    assert!(moved() > 0);
}

/// MariaDB `all` whose source's commits cannot be held for the parallel
/// dump (another session is in `BACKUP STAGE`, as a running
/// `mariadb-backup` would be): after the operator's `lock_wait_timeout`
/// (10 s) the branch is filled by one connection instead, with every row,
/// and the session says why in the server's words.
#[test]
fn mariadb_parallel_copy_takes_one_connection_when_the_source_commits_cannot_be_held() {
    let Names {
        source,
        dir,
        _cleanup,
        ..
    } = names("mheld", Db::Mariadb);
    maria(&format!(
        "CREATE DATABASE `{source}`; USE `{source}`;
         CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         INSERT INTO a SELECT seq FROM seq_1_to_50; INSERT INTO b SELECT seq FROM seq_1_to_70;"
    ));
    // Another backup, in a session of its own, holds the server's one stage.
    let mut backup = ChildGuard(
        Command::new("mariadb")
            .args(["-h127.0.0.1", "-P3306", "-uroot", "--protocol=tcp"])
            .args(["-N", "--batch", "--unbuffered"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut backup_input = backup.0.stdin.take().unwrap();
    {
        use std::io::{BufRead, Write};
        backup_input
            .write_all(b"BACKUP STAGE START; SELECT 'started';\n")
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(backup.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "started");
    }
    let db_config = config(&dir, "db.toml", "dump_jobs = 2\n");
    let target = Workload::start(&[(
        "DATABASE_URL",
        &format!("mysql://root@127.0.0.1:3306/{source}"),
    )]);
    let op =
        OperatorProcess::start_with(None, &["--db-config", db_config.to_str().unwrap()]).unwrap();
    let all = all_copy_config(&dir, "mysql", &source, "");
    let out = run(
        &op,
        &target,
        "alice",
        &all,
        &format!("{MARIA_CLIENT}m -e 'SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b)'"),
    );
    drop(backup_input);
    drop(backup);
    assert_eq!(ok(&out).trim(), "120", "{}", flat(&out));
    let said = flat(&out);
    assert!(
        said.contains("mariadb-dump|mariadb(oneconnection:thesource'scommitscouldnotbeheld"),
        "{said}"
    );
    assert!(said.contains("Lockwaittimeoutexceeded"), "{said}");
}

/// A client of the shared database moving 1 from `ledger_a` to `ledger_b`
/// of `source`, one transaction at a time, updating the two tables in one
/// order, then in the other, 5 ms apart (so that a transaction holds one
/// table and wants the other most of the time: the moment a lock taking
/// tables one after the other turned into a deadlock); `mariadb --force`:
/// an error is counted, the next transactions go on.
struct LedgerWriter {
    child: ChildGuard,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writing: std::thread::JoinHandle<()>,
    ticks: std::thread::JoinHandle<(u64, Duration)>,
    errors: std::thread::JoinHandle<Vec<String>>,
}

/// What a [`LedgerWriter`] saw.
struct Written {
    /// Pairs of transactions committed (or failed).
    pairs: u64,
    /// The longest time between the ends of two pairs.
    longest: Duration,
    /// The `ERROR …` lines the client printed.
    errors: Vec<String>,
}

impl LedgerWriter {
    fn start(source: &str) -> Self {
        use std::io::{BufRead, Write};
        let mut child = ChildGuard(
            Command::new("mariadb")
                .args([
                    "-h127.0.0.1",
                    "-P3306",
                    "-uroot",
                    "--protocol=tcp",
                    "--force",
                    "--unbuffered",
                    "-N",
                    "--batch",
                ])
                .arg(source)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut stdin = child.0.stdin.take().unwrap();
        let stdout = child.0.stdout.take().unwrap();
        let stderr = child.0.stderr.take().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writing = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = stdin.write_all(
                        b"START TRANSACTION; UPDATE ledger_a SET n = n - 1; DO SLEEP(0.005); \
                          UPDATE ledger_b SET n = n + 1; COMMIT; \
                          START TRANSACTION; UPDATE ledger_b SET n = n + 1; DO SLEEP(0.005); \
                          UPDATE ledger_a SET n = n - 1; COMMIT; SELECT 'pair';\n",
                    );
                    if sent.is_err() {
                        return;
                    }
                }
                // Dropping stdin ends the client once it has run the rest.
            })
        };
        let ticks = std::thread::spawn(move || {
            let (mut pairs, mut longest) = (0, Duration::ZERO);
            let mut last = std::time::Instant::now();
            for line in std::io::BufReader::new(stdout).lines() {
                if line.is_err() {
                    break;
                }
                let now = std::time::Instant::now();
                longest = longest.max(now - last);
                last = now;
                pairs += 1;
            }
            (pairs, longest)
        });
        let errors = std::thread::spawn(move || {
            std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with("ERROR"))
                .collect()
        });
        Self {
            child,
            stop,
            writing,
            ticks,
            errors,
        }
    }

    /// Stops writing, lets the client run what it was sent, and says what
    /// it saw.
    fn stop(mut self) -> Written {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.writing.join().unwrap();
        let _ = self.child.0.wait();
        let (pairs, longest) = self.ticks.join().unwrap();
        Written {
            pairs,
            longest,
            errors: self.errors.join().unwrap(),
        }
    }
}

/// MariaDB, without the fast path: an operator killed while a branch is
/// being made (its database created and filled by the parallel dump, the
/// filtered table's rows still being read) leaves no database behind: the
/// branch was recorded first, and the operator started again with the same
/// `--state-dir` drops it.
#[test]
fn a_mariadb_branch_half_made_when_the_operator_is_killed_is_dropped_by_its_successor() {
    let Names {
        source,
        dir,
        _cleanup,
        ..
    } = names("mcrash", Db::Mariadb);
    maria(&format!(
        "CREATE DATABASE `{source}`; USE `{source}`;
         CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
         INSERT INTO users SELECT seq, 7, CONCAT('u', seq) FROM seq_1_to_60;
         CREATE TABLE orders (id int PRIMARY KEY, user_id int, total int);
         INSERT INTO orders SELECT seq, seq, seq * 3 FROM seq_1_to_100;
         CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT seq, MD5(seq) FROM seq_1_to_100;"
    ));
    let checksum = || maria_checksums(&source, &["users", "orders", "items"]);
    let before = checksum();
    let url = format!("mysql://root@127.0.0.1:3306/{source}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let state_arg = dir.join("state").to_str().unwrap().to_owned();
    let op = OperatorProcess::start_with(None, &["--state-dir", &state_arg]).unwrap();
    // The filtered rows take a minute to read (a second a row).
    let slow = config(
        &dir,
        "slow.toml",
        &format!(
            "[[db_branches]]\ntype = \"mysql\"\nname = \"{source}\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {{ mode = \"all\", tables = {{ users = {{ filter = \"WHERE SLEEP(1) = 0\" }} }} }}\n\
             ttl = \"1h\"\nid = \"crash\"\n"
        ),
    );
    let branch = format!("remora_{source}_crash");
    let exists = |table: &str| {
        maria(&format!(
            "SELECT count(*) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = '{branch}' AND TABLE_NAME = '{table}'"
        )) == "1"
    };
    let database_exists = || {
        maria(&format!(
            "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{branch}'"
        )) == "1"
    };
    let mut session = op
        .remora("alice")
        .unwrap()
        .args(["run", "-f"])
        .arg(&slow)
        .args(["--target", &target.target(), "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The filtered table's definition comes after the other tables' rows.
    fixtures::wait_for(
        "the branch to be half made",
        Duration::from_secs(60),
        || exists("users"),
    );
    kill_operator_checking_its_copies_die(op);
    let _ = session.wait();
    // The killed mariadb-dump's query would read on for a minute (and hold
    // the branch's drop back): ended too.
    for id in maria(&format!(
        "SELECT ID FROM information_schema.PROCESSLIST \
         WHERE INFO LIKE '%SLEEP(1) = 0%' AND DB = '{source}'"
    ))
    .lines()
    {
        let _ = Command::new("mariadb")
            .args(["-h127.0.0.1", "-uroot", "--protocol=tcp", "-e"])
            .arg(format!("KILL {id}"))
            .output();
    }
    assert!(database_exists(), "the killed operator dropped its branch");

    let op = OperatorProcess::start_with(None, &["--state-dir", &state_arg]).unwrap();
    fixtures::wait_for(
        "the half-made branch to be dropped by the next operator",
        Duration::from_secs(60),
        || !database_exists(),
    );
    assert!(ls(&op).iter().all(|b| b["id"] != "crash"));
    assert_eq!(checksum(), before, "the source changed");
}

/// The MariaDB fast path: an operator killed while it makes a source's
/// golden copy with `mariadb-backup` (held up by a write lock the test
/// takes on a source table, the golden copy's directory made) leaves no directory behind: the golden copy
/// and the branch were recorded first, and the operator started again with
/// the same `--state-dir` removes what was made.
#[test]
fn a_mariadb_fast_path_branch_half_made_when_the_operator_is_killed_is_removed_by_its_successor() {
    let Names {
        source,
        dir,
        _cleanup,
        ..
    } = names("mfcrash", Db::Mariadb);
    maria(&format!(
        "CREATE DATABASE `{source}`; USE `{source}`;
         CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
         INSERT INTO users SELECT seq, seq % 10, CONCAT('u', seq) FROM seq_1_to_100;"
    ));
    let checksum = || maria_checksums(&source, &["users"]);
    let before = checksum();
    // The backup is not reflinked (the operator is killed before the
    // branch's copy), so the work directory may be anywhere.
    let work = dir.join("work");
    let db_config = config(
        &dir,
        "db.toml",
        &format!(
            "[[mariadb_backup]]\nserver = \"127.0.0.1:3306\"\nworkdir = \"{}\"\n",
            work.display()
        ),
    );
    // mariadb-backup waits for this lock once it has made the golden
    // copy's directory and started copying the redo log into it.
    // (Held while the client waits for more input; released when it is
    // killed, by the guard.)
    let mut lock = ChildGuard(
        Command::new("mariadb")
            .args(["-h127.0.0.1", "-P3306", "-uroot", "--protocol=tcp"])
            .args(["-N", "--batch", "--unbuffered"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lock_input = lock.0.stdin.take().unwrap();
    {
        use std::io::{BufRead, Write};
        lock_input
            .write_all(format!("LOCK TABLES `{source}`.users WRITE; SELECT 'locked';\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(lock.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
    }
    let target = Workload::start(&[(
        "DATABASE_URL",
        &format!("mysql://root@127.0.0.1:3306/{source}"),
    )]);
    let state_arg = dir.join("state").to_str().unwrap().to_owned();
    let args = [
        "--state-dir",
        &state_arg,
        "--db-config",
        db_config.to_str().unwrap(),
    ];
    let op = OperatorProcess::start_with(None, &args).unwrap();
    let all = all_copy_config(&dir, "mysql", &source, "id = \"crash\"\n");
    let mut session = op
        .remora("alice")
        .unwrap()
        .args(["run", "-f"])
        .arg(&all)
        .args(["--target", &target.target(), "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let golden = || -> Option<PathBuf> {
        std::fs::read_dir(&work)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("_golden"))
    };
    fixtures::wait_for(
        "mariadb-backup to write into the golden copy",
        Duration::from_secs(60),
        || golden().is_some_and(|g| g.join("ib_logfile0").exists()),
    );
    let golden_dir = golden().unwrap();
    kill_operator_checking_its_copies_die(op);
    let _ = session.wait();
    drop(lock_input);
    drop(lock);
    assert!(
        golden_dir.exists(),
        "the killed operator removed its golden copy"
    );

    let op = OperatorProcess::start_with(None, &args).unwrap();
    fixtures::wait_for(
        "the half-made golden copy to be removed by the next operator",
        Duration::from_secs(60),
        || !golden_dir.exists(),
    );
    assert!(ls(&op).iter().all(|b| b["id"] != "crash"));
    assert_eq!(checksum(), before, "the source changed");
}
