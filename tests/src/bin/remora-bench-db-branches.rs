//! Database branch creation time (issue 13), against what a user would
//! otherwise do, in the same run: **`pg_dump | psql`** of the same database
//! into a new one on the same server. Two servers: this machine's
//! PostgreSQL (127.0.0.1:5432, as `scripts/setup.sh` sets it up) and a
//! PostgreSQL 18 on an XFS loop mount with reflinks and `file_copy_method =
//! clone` ([`remora_tests::pg18::Pg18`]).
//!
//! Each round starts a fresh operator (so its golden copy is made again),
//! then times, alternating: `pg_dump | psql`, and branches made by the
//! operator through `remora run -- true` in modes `empty`, `schema`, `all`
//! (the first: filled directly, by `pg_dump | psql` for this one-table
//! source; the operator then makes its golden copy in the background, which
//! the bench waits for, untimed) and `all` again (a template copy of the
//! live golden copy; a clone on PostgreSQL 18), then `all` with a filter
//! on the table (`WHERE org < 10`: a tenth of its rows, filled directly).
//! Branch times are the operator's own (`made in N ms`).
//! The table (markdown, stdout) shows medians; every run's value goes to
//! stderr. `REMORA_BENCH_DB_MB` sets the source size (default 100),
//! `REMORA_BENCH_ROUNDS` the rounds (default 3).
//!
//! MariaDB (this machine's, 127.0.0.1:3306), against **`mariadb-dump |
//! mariadb`** of the same database on the same server: branches in modes
//! `empty`, `schema`, `all` by the dump (an operator without the fast path),
//! then `all` through the fast path (`[[mariadb_backup]]` with a work
//! directory on an XFS loop mount with reflinks): the first makes the golden
//! copy with `mariadb-backup`, the next are reflinked copies served by
//! their own `mariadbd`; and `all` with the same filter as PostgreSQL's
//! (by the dump: a filter has no fast path). Then a MariaDB source of four
//! tables of the same total size: `mariadb-dump | mariadb` against `all`
//! branches by the parallel dump and restore from one snapshot (`mydumper`
//! and `myloader`, `dump_jobs` default and 4) and by the operator's own
//! one-connection path (`dump_jobs = 1`); `REMORA_BENCH_SKIP_ONE_JOB=1`
//! leaves that last one out (it is the peer's way; for long 1 GB runs).
//! `REMORA_BENCH_DB=postgres|mariadb|mariadb-parallel` runs one only.

use remora_tests::db::{Workload, XfsMount};
use remora_tests::operator::OperatorProcess;
use remora_tests::pg18::Pg18;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const SOURCE: &str = "remora_bench_src";
const COPY: &str = "remora_bench_dump_copy";

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-bench-db-branches: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A PostgreSQL server and the client programs that fit it.
struct Server {
    name: String,
    port: u16,
    bindir: Option<PathBuf>,
}

impl Server {
    fn client(&self, program: &str) -> Command {
        let mut cmd = match &self.bindir {
            Some(dir) => Command::new(dir.join(program)),
            None => Command::new(program),
        };
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres");
        cmd
    }

    fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = self
            .client("psql")
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()?;
        if !out.status.success() {
            return Err(format!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Drop the source, the dump copy, every branch of the source and its
    /// golden copy (`remora_remora_bench_src_golden`, left by an operator
    /// stopped before its TTL).
    fn drop_all(&self) -> Result<()> {
        let names = self.psql("postgres", "SELECT datname FROM pg_database")?;
        for name in names
            .lines()
            .filter(|n| n.starts_with("remora_bench") || n.starts_with("remora_remora_bench"))
        {
            self.psql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            )?;
        }
        Ok(())
    }

    /// `pg_dump SOURCE | psql COPY`; seconds.
    fn dump_restore(&self) -> Result<f64> {
        self.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {COPY} WITH (FORCE)"),
        )?;
        let started = Instant::now();
        self.psql("postgres", &format!("CREATE DATABASE {COPY}"))?;
        let mut dump = self
            .client("pg_dump")
            .args(["-d", SOURCE])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = dump.stdout.take().ok_or("no pg_dump stdout")?;
        let restore = self
            .client("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", COPY])
            .stdin(stdout)
            .stdout(Stdio::null())
            .status()?;
        let dumped = dump.wait()?;
        if !restore.success() || !dumped.success() {
            return Err("pg_dump | psql failed".into());
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One branch made by the operator: its own time in seconds, and how.
fn branch(op: &OperatorProcess, target: &Workload, config: &Path) -> Result<(f64, String)> {
    let out = op
        .remora("bench")?
        .args(["run", "-f"])
        .arg(config)
        .args(["--target", &target.target(), "--", "true"])
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("remora run: {stderr}").into());
    }
    let line = stderr
        .lines()
        .find(|l| l.contains(" made in "))
        .ok_or_else(|| format!("no branch line in {stderr}"))?;
    let ms: f64 = line
        .split(" made in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no time in {line}"))?;
    // `… made in N ms: BRANCH (MODE, METHOD)`; METHOD may hold parentheses.
    let how = line
        .split_once(" ms: ")
        .and_then(|(_, rest)| rest.split_once(" ("))
        .and_then(|(_, inner)| inner.strip_suffix(')'))
        .and_then(|inner| inner.split_once(", "))
        .map(|(_, method)| method.to_owned())
        .unwrap_or_default();
    Ok((ms / 1000.0, how))
}

fn config(dir: &Path, mode: &str) -> Result<PathBuf> {
    config_as(dir, mode, &format!("{{ mode = \"{mode}\" }}"))
}

/// `NAME.toml` in `dir`: a PostgreSQL branch of the source with `copy`.
fn config_as(dir: &Path, name: &str, copy: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[[db_branches]]\ntype = \"postgres\"\nname = \"benchsrc\"\n\
             connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
             copy = {copy}\nttl = \"10m\"\n"
        ),
    )?;
    Ok(path)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const WAYS: [&str; 6] = [
    "pg_dump | psql",
    "branch empty",
    "branch schema",
    "branch all (first: filled directly)",
    "branch all (from the golden copy)",
    "branch all, filtered (`WHERE org < 10`: a tenth of the rows)",
];

fn bench_server(server: &Server, mb: u64, rounds: u64, pg_bindir: &Path) -> Result<()> {
    server.drop_all()?;
    server.psql("postgres", &format!("CREATE DATABASE {SOURCE}"))?;
    // ~300 bytes a row with its index entry.
    let rows = mb * 1024 * 1024 / 300;
    server.psql(
        SOURCE,
        &format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, org int, body text);
             INSERT INTO items SELECT g, g % 100, repeat(md5(g::text), 7) FROM generate_series(1, {rows}) g;
             CREATE INDEX ON items (org);"
        ),
    )?;
    let size: u64 = server
        .psql(SOURCE, &format!("SELECT pg_database_size('{SOURCE}')"))?
        .parse()?;
    let url = format!("postgres://postgres@127.0.0.1:{}/{SOURCE}", server.port);
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let dir = TempDir(std::env::temp_dir().join(format!(
        "remora-bench-db-{}-{}",
        std::process::id(),
        server.port
    )));
    std::fs::create_dir_all(&dir.0)?;
    let configs = [
        config(&dir.0, "empty")?,
        config(&dir.0, "schema")?,
        config(&dir.0, "all")?,
        config_as(
            &dir.0,
            "all-filtered",
            "{ mode = \"all\", tables = { items = { filter = \"WHERE org < 10\" } } }",
        )?,
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); WAYS.len()];
    let mut methods = vec![String::new(); WAYS.len()];
    for round in 0..rounds {
        times[0].push(server.dump_restore()?);
        let state = dir.0.join(format!("state-{round}"));
        let op = OperatorProcess::start_with(
            None,
            &[
                "--pg-bindir",
                pg_bindir.to_str().ok_or("bindir")?,
                "--state-dir",
                state.to_str().ok_or("state dir")?,
            ],
        )?;
        for (way, config) in [
            (1, &configs[0]),
            (2, &configs[1]),
            (3, &configs[2]),
            (4, &configs[2]),
            (5, &configs[3]),
        ] {
            if way == 4 {
                // Made in the background after the first `all` branch.
                remora_tests::db::wait_golden_ready(&state, std::time::Duration::from_secs(600))?;
            }
            let (secs, how) = branch(&op, &target, config)?;
            times[way].push(secs);
            methods[way] = how;
        }
        drop(op);
        eprintln!(
            "{}: round {round}: {}",
            server.name,
            times
                .iter()
                .map(|t| format!("{:.2}", t[t.len() - 1]))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        // Branches of this round: dropped so the disk does not fill.
        for name in server
            .psql("postgres", "SELECT datname FROM pg_database")?
            .lines()
            .filter(|n| n.starts_with("remora_benchsrc_"))
        {
            server.psql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            )?;
        }
    }
    let peer = median(&times[0]);
    println!(
        "\n{}, source {:.0} MB, median of {rounds} rounds:\n",
        server.name,
        size as f64 / 1e6
    );
    println!("| how | seconds | vs pg_dump \\| psql | method |");
    println!("| --- | ---: | ---: | --- |");
    for (i, way) in WAYS.iter().enumerate() {
        let m = median(&times[i]);
        println!(
            "| {} | {m:.2} | {:.2}x | {} |",
            way.replace('|', "\\|"),
            peer / m,
            methods[i].replace('|', "\\|")
        );
    }
    server.drop_all()?;
    Ok(())
}

fn maria(db: Option<&str>, sql: &str) -> Result<String> {
    let mut cmd = Command::new("mariadb");
    cmd.args([
        "-h127.0.0.1",
        "-P3306",
        "-uroot",
        "--protocol=tcp",
        "-N",
        "--batch",
    ]);
    if let Some(db) = db {
        cmd.arg(db);
    }
    let out = cmd.args(["-e", sql]).output()?;
    if !out.status.success() {
        return Err(format!("mariadb {sql}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn maria_drop_all() -> Result<()> {
    for name in maria(None, "SHOW DATABASES")?
        .lines()
        .filter(|n| n.starts_with("remora_bench"))
    {
        maria(None, &format!("DROP DATABASE IF EXISTS `{name}`"))?;
    }
    Ok(())
}

/// `mariadb-dump SOURCE | mariadb COPY`; seconds.
fn maria_dump_restore() -> Result<f64> {
    maria_dump_restore_of(SOURCE, COPY)
}

/// `mariadb-dump source | mariadb copy`; seconds.
fn maria_dump_restore_of(source: &str, copy: &str) -> Result<f64> {
    maria(None, &format!("DROP DATABASE IF EXISTS {copy}"))?;
    let started = Instant::now();
    maria(None, &format!("CREATE DATABASE {copy}"))?;
    let mut dump = Command::new("mariadb-dump")
        .args(["-h127.0.0.1", "-P3306", "-uroot", "--protocol=tcp"])
        .args(["--single-transaction", "--routines", "--triggers", source])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = dump.stdout.take().ok_or("no mariadb-dump stdout")?;
    let restore = Command::new("mariadb")
        .args(["-h127.0.0.1", "-P3306", "-uroot", "--protocol=tcp", copy])
        .stdin(stdout)
        .stdout(Stdio::null())
        .status()?;
    let dumped = dump.wait()?;
    if !restore.success() || !dumped.success() {
        return Err("mariadb-dump | mariadb failed".into());
    }
    Ok(started.elapsed().as_secs_f64())
}

const MARIA_WAYS: [&str; 7] = [
    "mariadb-dump | mariadb",
    "branch empty",
    "branch schema",
    "branch all (mariadb-dump, no fast path)",
    "branch all (first: mariadb-backup golden copy)",
    "branch all (reflinked golden copy + own mariadbd)",
    "branch all, filtered (`WHERE org < 10`: a tenth of the rows)",
];

fn bench_mariadb(mb: u64, rounds: u64) -> Result<()> {
    maria_drop_all()?;
    maria(None, &format!("CREATE DATABASE {SOURCE}"))?;
    let rows = mb * 1024 * 1024 / 300;
    maria(
        Some(SOURCE),
        &format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, org int, body text, KEY (org)) ENGINE=InnoDB;
             INSERT INTO items SELECT seq, seq % 100, REPEAT(MD5(seq), 7) FROM seq_1_to_{rows};"
        ),
    )?;
    // Fresh statistics, or information_schema says 0.
    maria(Some(SOURCE), "ANALYZE TABLE items")?;
    let size: f64 = maria(
        None,
        &format!(
            "SELECT SUM(data_length + index_length) FROM information_schema.TABLES \
             WHERE table_schema = '{SOURCE}'"
        ),
    )?
    .parse()?;
    let xfs = XfsMount::new("bench-maria", (mb * 8).max(2048))?;
    let dir =
        TempDir(std::env::temp_dir().join(format!("remora-bench-maria-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let db_config = dir.0.join("db.toml");
    std::fs::write(
        &db_config,
        format!(
            "[[mariadb_backup]]\nserver = \"127.0.0.1:3306\"\nworkdir = \"{}/work\"\n",
            xfs.path().display()
        ),
    )?;
    let url = format!("mysql://root@127.0.0.1:3306/{SOURCE}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let configs: Vec<PathBuf> = [
        ("empty", "{ mode = \"empty\" }"),
        ("schema", "{ mode = \"schema\" }"),
        ("all", "{ mode = \"all\" }"),
        (
            "all-filtered",
            "{ mode = \"all\", tables = { items = { filter = \"WHERE org < 10\" } } }",
        ),
    ]
    .iter()
    .map(|(name, copy)| {
        let path = dir.0.join(format!("maria-{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[[db_branches]]\ntype = \"mysql\"\nname = \"benchsrc\"\n\
                 connection = {{ url = {{ env = \"DATABASE_URL\" }} }}\n\
                 copy = {copy}\nttl = \"10m\"\n"
            ),
        )
        .map(|()| path)
    })
    .collect::<std::io::Result<_>>()?;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); MARIA_WAYS.len()];
    let mut methods = vec![String::new(); MARIA_WAYS.len()];
    for round in 0..rounds {
        times[0].push(maria_dump_restore()?);
        let plain = OperatorProcess::start(None)?;
        for (way, config) in [
            (1, &configs[0]),
            (2, &configs[1]),
            (3, &configs[2]),
            (6, &configs[3]),
        ] {
            let (secs, how) = branch(&plain, &target, config)?;
            times[way].push(secs);
            methods[way] = how;
        }
        drop(plain);
        let fast =
            OperatorProcess::start_with(None, &["--db-config", db_config.to_str().ok_or("path")?])?;
        for way in [4, 5] {
            let (secs, how) = branch(&fast, &target, &configs[2])?;
            times[way].push(secs);
            methods[way] = how;
        }
        // Stops the branches' servers and removes their datadirs before
        // the next round (the next operator makes its own golden copy).
        remove_all(&fast)?;
        drop(fast);
        eprintln!(
            "MariaDB: round {round}: {}",
            times
                .iter()
                .map(|t| format!("{:.2}", t[t.len() - 1]))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        maria_drop_all_branches()?;
    }
    let peer = median(&times[0]);
    println!(
        "\nMariaDB {} (this machine's, 127.0.0.1:3306), source {:.0} MB (data + indexes), median of {rounds} rounds:\n",
        maria(None, "SELECT VERSION()")?,
        size / 1e6
    );
    println!("| how | seconds | vs mariadb-dump \\| mariadb | method |");
    println!("| --- | ---: | ---: | --- |");
    for (i, way) in MARIA_WAYS.iter().enumerate() {
        let m = median(&times[i]);
        println!(
            "| {} | {m:.2} | {:.2}x | {} |",
            way.replace('|', "\\|"),
            peer / m,
            methods[i].replace('|', "\\|")
        );
    }
    drop(target);
    drop(xfs);
    maria_drop_all()?;
    Ok(())
}

const MULTI: &str = "remora_bench_multi";
const MULTI_COPY: &str = "remora_bench_multi_copy";
/// The tables of the several-table source.
const MULTI_TABLES: u64 = 4;

const MULTI_WAYS: [&str; 4] = [
    "mariadb-dump | mariadb",
    "branch all, dump_jobs = 1 (mariadb-dump \\| mariadb)",
    "branch all, dump_jobs default (the CPUs, at most 4)",
    "branch all, dump_jobs = 4",
];

/// MariaDB `all` branches of a source of several tables (the same size in
/// all, [`MULTI_TABLES`] tables) without the fast path: the parallel dump
/// and restore from one snapshot (`mydumper` + `myloader`), against
/// `mariadb-dump | mariadb` of the same database and the operator's own
/// one-connection path (`dump_jobs = 1`), in the same run.
fn bench_mariadb_parallel(mb: u64, rounds: u64) -> Result<()> {
    for name in maria(None, "SHOW DATABASES")?
        .lines()
        .filter(|n| n.starts_with(MULTI) || n.starts_with("remora_benchmulti_"))
    {
        maria(None, &format!("DROP DATABASE IF EXISTS `{name}`"))?;
    }
    maria(None, &format!("CREATE DATABASE {MULTI}"))?;
    let rows = mb * 1024 * 1024 / 300 / MULTI_TABLES;
    for t in 0..MULTI_TABLES {
        maria(
            Some(MULTI),
            &format!(
                "CREATE TABLE items{t} (id bigint PRIMARY KEY, org int, body text, KEY (org)) ENGINE=InnoDB;
                 INSERT INTO items{t} SELECT seq, seq % 100, REPEAT(MD5(seq), 7) FROM seq_1_to_{rows};
                 ANALYZE TABLE items{t};"
            ),
        )?;
    }
    let size: f64 = maria(
        None,
        &format!(
            "SELECT SUM(data_length + index_length) FROM information_schema.TABLES \
             WHERE table_schema = '{MULTI}'"
        ),
    )?
    .parse()?;
    let dir = TempDir(
        std::env::temp_dir().join(format!("remora-bench-maria-multi-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0)?;
    let jobs_config = |jobs: u32| -> Result<PathBuf> {
        let path = dir.0.join(format!("db-{jobs}.toml"));
        std::fs::write(&path, format!("dump_jobs = {jobs}\n"))?;
        Ok(path)
    };
    let operators: [Option<PathBuf>; 3] = [Some(jobs_config(1)?), None, Some(jobs_config(4)?)];
    let config = dir.0.join("multi-all.toml");
    std::fs::write(
        &config,
        "[[db_branches]]\ntype = \"mysql\"\nname = \"benchmulti\"\n\
         connection = { url = { env = \"DATABASE_URL\" } }\n\
         copy = { mode = \"all\" }\nttl = \"10m\"\n",
    )?;
    let url = format!("mysql://root@127.0.0.1:3306/{MULTI}");
    let target = Workload::start(&[("DATABASE_URL", &url)]);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); MULTI_WAYS.len()];
    let mut methods = vec![String::new(); MULTI_WAYS.len()];
    let skip_one_job = env_number("REMORA_BENCH_SKIP_ONE_JOB", 0) == 1;
    for round in 0..rounds {
        times[0].push(maria_dump_restore_of(MULTI, MULTI_COPY)?);
        for (i, db_config) in operators.iter().enumerate() {
            if i == 0 && skip_one_job {
                times[1].push(f64::NAN);
                methods[1] = "(not run: REMORA_BENCH_SKIP_ONE_JOB=1)".to_owned();
                continue;
            }
            let op = match db_config {
                Some(path) => OperatorProcess::start_with(
                    None,
                    &["--db-config", path.to_str().ok_or("path")?],
                )?,
                None => OperatorProcess::start(None)?,
            };
            let (secs, how) = branch(&op, &target, &config)?;
            times[i + 1].push(secs);
            methods[i + 1] = how;
            remove_all(&op)?;
        }
        eprintln!(
            "MariaDB, {MULTI_TABLES} tables: round {round}: {}",
            times
                .iter()
                .map(|t| format!("{:.2}", t[t.len() - 1]))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let peer = median(&times[0]);
    println!(
        "\nMariaDB {} (this machine's, 127.0.0.1:3306), source of {MULTI_TABLES} tables, \
         {:.0} MB (data + indexes), median of {rounds} rounds:\n",
        maria(None, "SELECT VERSION()")?,
        size / 1e6
    );
    println!("| how | seconds | vs mariadb-dump \\| mariadb | method |");
    println!("| --- | ---: | ---: | --- |");
    for (i, way) in MULTI_WAYS.iter().enumerate() {
        let m = median(&times[i]);
        println!(
            "| {} | {m:.2} | {:.2}x | {} |",
            if i == 0 {
                way.replace('|', "\\|")
            } else {
                (*way).to_owned()
            },
            peer / m,
            methods[i].replace('|', "\\|")
        );
    }
    drop(target);
    for name in maria(None, "SHOW DATABASES")?
        .lines()
        .filter(|n| n.starts_with(MULTI) || n.starts_with("remora_benchmulti_"))
    {
        maria(None, &format!("DROP DATABASE IF EXISTS `{name}`"))?;
    }
    Ok(())
}

/// `remora db rm` every branch `op` lists.
fn remove_all(op: &OperatorProcess) -> Result<()> {
    let out = op.remora("bench")?.args(["db", "ls", "--json"]).output()?;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    for id in listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["id"].as_str())
    {
        let out = op.remora("bench")?.args(["db", "rm", id]).output()?;
        if !out.status.success() {
            return Err(format!(
                "remora db rm {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
    }
    Ok(())
}

fn maria_drop_all_branches() -> Result<()> {
    for name in maria(None, "SHOW DATABASES")?
        .lines()
        .filter(|n| n.starts_with("remora_benchsrc_"))
    {
        maria(None, &format!("DROP DATABASE IF EXISTS `{name}`"))?;
    }
    Ok(())
}

fn bench() -> Result<()> {
    let mb = env_number("REMORA_BENCH_DB_MB", 100);
    let rounds = env_number("REMORA_BENCH_ROUNDS", 3).max(1);
    let only = std::env::var("REMORA_BENCH_DB").unwrap_or_default();
    println!("### Database branches (`remora-bench-db-branches`)");
    if only == "mariadb-parallel" {
        return bench_mariadb_parallel(mb, rounds);
    }
    if only != "postgres" {
        bench_mariadb(mb, rounds)?;
        bench_mariadb_parallel(mb, rounds)?;
    }
    if only == "mariadb" {
        return Ok(());
    }
    let pg18_bindir = Pg18::bindir()?;
    let system = Server {
        name: "PostgreSQL (this machine's, 127.0.0.1:5432)".into(),
        port: 5432,
        bindir: None,
    };
    bench_server(&system, mb, rounds, &pg18_bindir)?;
    let pg = Pg18::start((mb * 8).max(2048))?;
    let pg18 = Server {
        name: "PostgreSQL 18, XFS reflinks, file_copy_method = clone".into(),
        port: pg.port(),
        bindir: Some(pg18_bindir.clone()),
    };
    bench_server(&pg18, mb, rounds, &pg18_bindir)?;
    Ok(())
}
