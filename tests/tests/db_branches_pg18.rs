//! End-to-end: database branches on PostgreSQL 18 with `file_copy_method =
//! clone` on XFS with reflinks, the fast path of issue 13. The shared
//! database is a PostgreSQL 18 server this test starts on its own loop
//! filesystem ([`remora_tests::pg18::Pg18`]); the operator picks the
//! PostgreSQL 18 clients (`--pg-bindir`), the session's output names the
//! clone, the cloned branch takes (almost) no new space, and the source is
//! unchanged after a destructive migration on the branch. Without a client
//! new enough the session is refused with both versions named.

use remora_tests::db::{Workload, dump_checksum, wait_golden_ready};
use remora_tests::operator::OperatorProcess;
use remora_tests::pg18::Pg18;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &Path, mode: &str) -> PathBuf {
    let path = dir.join(format!("{mode}.toml"));
    std::fs::write(
        &path,
        format!(
            "[[db_branches]]\ntype = \"postgres\"\nname = \"shop\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {{ mode = \"{mode}\" }}\nttl = \"10m\"\n"
        ),
    )
    .unwrap();
    path
}

fn run(op: &OperatorProcess, target: &Workload, config: &Path, script: &str) -> Output {
    op.remora("alice")
        .unwrap()
        .args(["run", "-f"])
        .arg(config)
        .args(["--target", &target.target(), "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The source's content, as PostgreSQL 18's pg_dump prints it.
fn checksum(pg: &Pg18) -> String {
    dump_checksum(pg.client("pg_dump").unwrap().args(["-d", "shop"]))
}

#[test]
fn postgres18_all_branches_are_reflinked_clones_and_the_source_stays_intact() {
    let pg = Pg18::start(1024).unwrap();
    pg.psql("postgres", "CREATE DATABASE shop").unwrap();
    // About 60 MB of rows, so a copy would show on the filesystem.
    pg.psql(
        "shop",
        "CREATE TABLE users (id bigint PRIMARY KEY, org_id int, bio text);
         INSERT INTO users SELECT g, g % 10, repeat(md5(g::text), 6)
           FROM generate_series(1, 250000) g;",
    )
    .unwrap();
    let size: u64 = pg
        .psql("shop", "SELECT pg_database_size('shop')")
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > 40 << 20, "source is only {size} bytes");
    let before = checksum(&pg);
    let dir = TempDir(std::env::temp_dir().join(format!("remora-pg18-cfg-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let url = pg.url("shop");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let bindir = Pg18::bindir().unwrap();

    // Without a PostgreSQL 18 client the operator refuses, naming both sides.
    let old = OperatorProcess::start(None).unwrap();
    let out = run(&old, &target, &config(&dir.0, "schema"), "echo started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("started"));
    // The error is wrapped to the terminal's width: compare without spaces.
    let flat: String = stderr
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '│')
        .collect();
    assert!(flat.contains("runsPostgreSQL18."), "{stderr}");
    assert!(flat.contains("needspg_dump18ornewer"), "{stderr}");
    assert!(flat.contains("--pg-bindirDIR"), "{stderr}");
    drop(old);

    let state = dir.0.join("state");
    let op = OperatorProcess::start_with(
        None,
        &[
            "--pg-bindir",
            bindir.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    )
    .unwrap();
    let all = config(&dir.0, "all");
    let count = "psql -X -At -d \"$DATABASE_URL\" -c 'SELECT count(*) FROM users'";
    // The first branch is filled by pg_dump | psql; the golden copy is made
    // after it, in the background.
    let first = run(&op, &target, &all, count);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&first.stdout).trim(), "250000");
    assert!(
        stderr.contains("pg_dump | psql (the golden copy for the next branches is being made)"),
        "{stderr}"
    );
    wait_golden_ready(&state, std::time::Duration::from_secs(120)).unwrap();

    // The second is a clone of the live golden copy: it takes a fraction of
    // the source's size on disk, and a destructive migration on it leaves
    // the source as it was.
    let used = pg.used_bytes().unwrap();
    let second = run(
        &op,
        &target,
        &all,
        &format!("{count} && psql -X -q -d \"$DATABASE_URL\" -c 'DROP TABLE users'"),
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&second.stdout).trim(), "250000");
    assert!(
        stderr.contains("STRATEGY FILE_COPY (file_copy_method = clone)"),
        "{stderr}"
    );
    assert!(!stderr.contains("refreshed"), "{stderr}");
    let grown = pg.used_bytes().unwrap().saturating_sub(used);
    assert!(
        grown < size / 2,
        "the cloned branch took {grown} bytes for a {size}-byte database"
    );
    assert_eq!(checksum(&pg), before, "the source changed");
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM users").unwrap(),
        "250000"
    );
}
