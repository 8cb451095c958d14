//! Making and dropping branch databases with the servers' own clients
//! (`psql`, `pg_dump`, `pg_restore`, `mariadb`, `mariadb-dump`), run from
//! the target's network through [`crate::Platform::dial`]. Blocking:
//! callers use `spawn_blocking`.
//!
//! The source is only ever read: PostgreSQL clients reading it run with
//! `default_transaction_read_only=on`, MariaDB dumps in one consistent
//! read (`--single-transaction`, or [`my_parallel`]'s connections sharing
//! one snapshot started while the operator holds commits off with
//! `BACKUP STAGE BLOCK_COMMIT`); where a read-only role is configured,
//! every read of the source logs in as that role ([`Plan::reader`]).
//!
//! A branch lives on [`Plan::at`]: the source's own server, or a branch
//! server of the same version ([`check_versions`]).

use super::my_parallel;
use super::source::Server;
use remora_protocol::db::{CopyMode, DbKind};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Makes a client command that connects from the target's network.
pub type Dial<'a> = &'a (dyn Fn(&str) -> Command + Send + Sync);

/// What to copy into a new branch.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// The source's server, with the credentials it is read with.
    pub reader: &'a Server,
    pub source: &'a str,
    /// Where the branch is made: the source's server (with the source's
    /// own credentials) or a branch server.
    pub at: &'a Server,
    pub branch: &'a str,
    pub mode: CopyMode,
    pub filters: &'a BTreeMap<String, String>,
    /// PostgreSQL `all` without filters: clone this golden copy (made
    /// before by [`make_golden`]) instead of filling the branch.
    pub golden: Option<&'a str>,
    /// Parallel jobs of `pg_dump -Fd` / `pg_restore` (PostgreSQL `all`),
    /// threads of `mydumper` / `myloader` (MariaDB `all`).
    pub jobs: usize,
}

fn client(dial: Dial<'_>, server: &Server, program: &str, read_only: bool) -> Command {
    let mut cmd = dial(program);
    match server.kind {
        DbKind::Postgres => {
            cmd.env("PGHOST", &server.host)
                .env("PGPORT", server.port.to_string())
                .env("PGUSER", &server.user)
                .env("PGCONNECT_TIMEOUT", "10");
            if let Some(pw) = &server.password {
                cmd.env("PGPASSWORD", pw);
            }
            // Reads of the source are read-only transactions; writes into
            // a branch do not wait for their WAL to reach the disk (a crash
            // loses the branch being made, which is dropped anyway).
            cmd.env(
                "PGOPTIONS",
                if read_only {
                    "-c default_transaction_read_only=on"
                } else {
                    "-c synchronous_commit=off"
                },
            );
        }
        DbKind::Mysql => {
            cmd.arg(format!("--host={}", server.host))
                .arg(format!("--port={}", server.port))
                .arg(format!("--user={}", server.user))
                .arg("--protocol=tcp");
            if program == "mariadb" {
                cmd.arg("--connect-timeout=10");
            }
            if let Some(pw) = &server.password {
                cmd.env("MYSQL_PWD", pw);
            }
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `producer | consumer`, both failing loudly.
fn pipe(mut producer: Command, mut consumer: Command, what: &str) -> Result<(), String> {
    let mut p = producer
        .spawn()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", producer.get_program()))?;
    let Some(out) = p.stdout.take() else {
        return Err(format!("{what}: no pipe"));
    };
    let mut p_err = p.stderr.take();
    let p_err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = p_err.as_mut() {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    consumer.stdin(Stdio::from(out)).stdout(Stdio::null());
    let consumed = consumer.output();
    let produced = p.wait();
    let p_text = p_err_reader.join().unwrap_or_default();
    let consumed =
        consumed.map_err(|e| format!("{what}: cannot run {:?}: {e}", consumer.get_program()))?;
    match produced {
        Ok(status) if status.success() => {}
        Ok(status) => return Err(format!("{what}: {status}: {}", p_text.trim())),
        Err(e) => return Err(format!("{what}: {e}")),
    }
    if !consumed.status.success() {
        return Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&consumed.stderr).trim()
        ));
    }
    Ok(())
}

fn pg_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn my_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn psql(dial: Dial<'_>, server: &Server, db: &str, read_only: bool) -> Command {
    let mut cmd = client(dial, server, "psql", read_only);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db]);
    cmd
}

fn mariadb(dial: Dial<'_>, server: &Server, db: Option<&str>) -> Command {
    let mut cmd = client(dial, server, "mariadb", false);
    cmd.arg("--batch");
    if let Some(db) = db {
        cmd.arg(db);
    }
    cmd
}

/// The server's version string (also checks it can be reached); for
/// PostgreSQL also its major version, which picks the client programs.
/// `db` is the database to connect to (none: the server's default).
///
/// # Errors
/// The server cannot be reached or refuses the credentials.
pub fn version(
    dial: Dial<'_>,
    server: &Server,
    db: Option<&str>,
) -> Result<(String, Option<u32>), String> {
    let what = format!(
        "cannot reach {}:{} as {}",
        server.host, server.port, server.user
    );
    match server.kind {
        DbKind::Postgres => {
            let mut cmd = psql(dial, server, db.unwrap_or("postgres"), true);
            cmd.args([
                "-At",
                "-c",
                "SELECT current_setting('server_version_num') || ' ' || current_setting('server_version')",
            ]);
            let out = run(cmd, &what)?;
            let (num, text) = out.trim().split_once(' ').unwrap_or((out.trim(), ""));
            let major = super::pg_clients::parse_server_major(num)
                .ok_or_else(|| format!("{what}: unexpected server version {out:?}"))?;
            Ok((text.to_owned(), Some(major)))
        }
        DbKind::Mysql => {
            let mut cmd = mariadb(dial, server, db);
            cmd.args(["-N", "-e", "SELECT VERSION()"]);
            run(cmd, &what).map(|v| (v.trim().to_owned(), None))
        }
    }
}

/// The release series a version string belongs to, as compared by
/// [`check_versions`]: PostgreSQL's major version (`15.20` → `15`, `9.6.24`
/// → `9.6`); MariaDB's or MySQL's `major.minor` with the flavour
/// (`10.11.19-MariaDB-0+deb12u1` → `MariaDB 10.11`, `8.0.36` → `MySQL 8.0`).
pub fn series(kind: DbKind, version: &str) -> String {
    let number: String = version
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let parts: Vec<&str> = number.split('.').filter(|p| !p.is_empty()).collect();
    let old_pg = parts
        .first()
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|m| m < 10);
    let keep = match kind {
        DbKind::Postgres if old_pg => 2,
        DbKind::Postgres => 1,
        DbKind::Mysql => 2,
    };
    let flavour = match kind {
        DbKind::Postgres => "PostgreSQL ",
        DbKind::Mysql if version.to_ascii_lowercase().contains("mariadb") => "MariaDB ",
        DbKind::Mysql => "MySQL ",
    };
    format!("{flavour}{}", parts[..keep.min(parts.len())].join("."))
}

/// Refuse a branch server of another release series than the source: a
/// dump of one PostgreSQL major version (or MariaDB/MySQL series) restored
/// into another is not the same database. The error names both versions.
///
/// # Errors
/// The series differ.
pub fn check_versions(
    source: &Server,
    source_version: &str,
    branch: &Server,
    branch_version: &str,
) -> Result<(), String> {
    let (a, b) = (
        series(source.kind, source_version),
        series(branch.kind, branch_version),
    );
    if a == b {
        return Ok(());
    }
    let full = |v: &str| match source.kind {
        DbKind::Postgres => format!("PostgreSQL {}", v.trim()),
        DbKind::Mysql => format!("{} ({})", series(source.kind, v), v.trim()),
    };
    Err(format!(
        "version mismatch: the source server {}:{} runs {}, but the branch server {}:{} \
         runs {}; a branch must run the source's version (configure a branch server of {a} \
         in the operator's --db-config)",
        source.host,
        source.port,
        full(source_version),
        branch.host,
        branch.port,
        full(branch_version),
    ))
}

/// Whether `server`'s credentials may create the database `branch`
/// (PostgreSQL: `CREATEDB` or superuser; MariaDB/MySQL: a global CREATE,
/// or one on a database pattern that matches `branch`).
///
/// # Errors
/// The server cannot be asked.
pub fn can_create(dial: Dial<'_>, server: &Server, db: &str, branch: &str) -> Result<bool, String> {
    let what = format!("cannot reach {}:{}", server.host, server.port);
    let answer = match server.kind {
        DbKind::Postgres => {
            let mut cmd = psql(dial, server, db, true);
            cmd.args([
                "-At",
                "-c",
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user",
            ]);
            run(cmd, &what)?
        }
        DbKind::Mysql => {
            let me = "CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
                      SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')";
            let sql = format!(
                "SELECT (SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES \
                   WHERE PRIVILEGE_TYPE = 'CREATE' AND GRANTEE = {me}) \
                 + (SELECT COUNT(*) FROM information_schema.SCHEMA_PRIVILEGES \
                   WHERE PRIVILEGE_TYPE = 'CREATE' AND GRANTEE = {me} \
                   AND '{}' LIKE TABLE_SCHEMA) > 0",
                branch.replace('\'', "")
            );
            let mut cmd = mariadb(dial, server, None);
            cmd.args(["-N", "-e", &sql]);
            run(cmd, &what)?
        }
    };
    Ok(matches!(answer.trim(), "t" | "1"))
}

/// PostgreSQL 18's `file_copy_method` (`copy` or `clone`); empty before 18.
fn file_copy_method(dial: Dial<'_>, server: &Server) -> String {
    let mut cmd = psql(dial, server, "postgres", true);
    cmd.args([
        "-At",
        "-c",
        "SELECT coalesce(current_setting('file_copy_method', true), '')",
    ]);
    run(cmd, "file_copy_method")
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn create_empty(
    dial: Dial<'_>,
    server: &Server,
    db: &str,
    template: Option<&str>,
) -> Result<(), String> {
    let what = format!(
        "cannot create database {db} on {}:{} (does {} have the right to create databases?)",
        server.host, server.port, server.user
    );
    match server.kind {
        DbKind::Postgres => {
            let sql = match template {
                Some(t) => format!(
                    "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY",
                    pg_ident(db),
                    pg_ident(t)
                ),
                None => format!("CREATE DATABASE {}", pg_ident(db)),
            };
            let mut cmd = psql(dial, server, "postgres", false);
            cmd.args(["-c", &sql]);
            run(cmd, &what).map(drop)
        }
        DbKind::Mysql => {
            let mut cmd = mariadb(dial, server, None);
            cmd.args(["-e", &format!("CREATE DATABASE {}", my_ident(db))]);
            run(cmd, &what).map(drop)
        }
    }
}

/// Drop `db` if it exists.
///
/// # Errors
/// The server refused or cannot be reached.
pub fn drop_database(dial: Dial<'_>, server: &Server, db: &str) -> Result<(), String> {
    let what = format!(
        "cannot drop database {db} on {}:{}",
        server.host, server.port
    );
    match server.kind {
        DbKind::Postgres => {
            let mut cmd = psql(dial, server, "postgres", false);
            cmd.args([
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg_ident(db)),
            ]);
            run(cmd, &what).map(drop)
        }
        DbKind::Mysql => {
            let mut cmd = mariadb(dial, server, None);
            cmd.args(["-e", &format!("DROP DATABASE IF EXISTS {}", my_ident(db))]);
            run(cmd, &what).map(drop)
        }
    }
}

/// A directory for one parallel dump, removed on drop.
struct DumpDir(PathBuf);

impl DumpDir {
    fn new(branch: &str) -> Result<DumpDir, String> {
        let base = std::env::temp_dir().join(format!(
            "remora-dump-{branch}-{}-{}",
            std::process::id(),
            super::random_id()
        ));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        // pg_dump -Fd makes the directory itself.
        Ok(DumpDir(base))
    }

    fn path(&self) -> PathBuf {
        self.0.join("dump")
    }
}

impl Drop for DumpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pg_restore(dial: Dial<'_>, at: &Server, into: &str, dir: &Path, jobs: usize) -> Command {
    let mut cmd = client(dial, at, "pg_restore", false);
    cmd.args(["--no-owner", "--no-privileges", "--exit-on-error"])
        .arg(format!("--jobs={jobs}"))
        .args(["-d", into])
        .arg(dir);
    cmd
}

/// Fill the plan's source into the database `into` on `plan.at` (which
/// exists and is empty), in `mode`; `all` by the parallel dump and restore
/// when `parallel` (see [`parallel_pays`], [`my_parallel::choose`]).
/// Returns, for MariaDB's parallel dump, what it did, or why the source's
/// commits could not be held (then the branch was filled by
/// `mariadb-dump | mariadb` instead).
fn fill(
    dial: Dial<'_>,
    plan: &Plan<'_>,
    into: &str,
    mode: CopyMode,
    parallel: bool,
) -> Result<Option<Result<my_parallel::Copied, String>>, String> {
    if mode == CopyMode::Empty {
        return Ok(None);
    }
    let (reader, at, source, filters) = (plan.reader, plan.at, plan.source, plan.filters);
    let what = format!("copying {source} into {into}");
    let mut readers = None;
    match reader.kind {
        DbKind::Postgres if mode == CopyMode::All && parallel => {
            // Parallel: a directory-format dump in one snapshot, restored by
            // as many jobs: tables and rows first, then the filtered rows,
            // then indexes and constraints.
            let jobs = plan.jobs.max(1);
            let dir = DumpDir::new(into)?;
            let mut dump = client(dial, reader, "pg_dump", true);
            // Uncompressed and not synced: the directory is read once,
            // right away, then removed.
            dump.args(["--no-owner", "--no-privileges", "-Fd", "-Z0", "--no-sync"])
                .arg(format!("--jobs={jobs}"))
                .arg("-f")
                .arg(dir.path())
                .args(["-d", source]);
            for table in filters.keys() {
                dump.arg(format!("--exclude-table-data={table}"));
            }
            run(dump, &format!("{what} (pg_dump -Fd)"))?;
            let mut restore = pg_restore(dial, at, into, &dir.path(), jobs);
            restore.args(["--section=pre-data", "--section=data"]);
            run(restore, &format!("{what} (pg_restore)"))?;
            copy_filtered_pg(dial, plan, into, &what)?;
            let mut restore = pg_restore(dial, at, into, &dir.path(), jobs);
            restore.arg("--section=post-data");
            run(
                restore,
                &format!("{what} (pg_restore, indexes and constraints)"),
            )?;
        }
        DbKind::Postgres if mode == CopyMode::All => {
            // One table (or one job): the plain pipe, as `pg_dump | psql`;
            // no dump directory written and read back.
            let mut dump = client(dial, reader, "pg_dump", true);
            dump.args(["--no-owner", "--no-privileges", "-d", source]);
            for table in filters.keys() {
                dump.arg(format!("--exclude-table-data={table}"));
            }
            pipe(dump, psql(dial, at, into, false), &what)?;
            copy_filtered_pg(dial, plan, into, &what)?;
        }
        DbKind::Postgres => {
            let mut dump = client(dial, reader, "pg_dump", true);
            dump.args([
                "--no-owner",
                "--no-privileges",
                "--schema-only",
                "-d",
                source,
            ]);
            pipe(dump, psql(dial, at, into, false), &what)?;
            copy_filtered_pg(dial, plan, into, &what)?;
        }
        DbKind::Mysql => {
            let filtered: BTreeSet<&str> = filters.keys().map(String::as_str).collect();
            let mut single = !(mode == CopyMode::All && parallel);
            if !single {
                // Several connections sharing one snapshot (my_parallel).
                let dir = DumpDir::new(into)?;
                match my_parallel::dump_and_restore(
                    dial,
                    reader,
                    source,
                    at,
                    into,
                    &filtered,
                    &dir.path(),
                    plan.jobs.max(1),
                )? {
                    my_parallel::Parallel::Copied(copied) => readers = Some(Ok(copied)),
                    my_parallel::Parallel::NotHeld(why) => {
                        // Nothing was written: one connection instead.
                        readers = Some(Err(why));
                        single = true;
                    }
                }
            }
            if single {
                let mut dump = client(dial, reader, "mariadb-dump", false);
                dump.args(["--single-transaction", "--routines", "--triggers"]);
                if mode == CopyMode::Schema {
                    dump.arg("--no-data");
                } else {
                    for table in filters.keys() {
                        dump.arg(format!("--ignore-table={source}.{table}"));
                    }
                }
                dump.arg(source);
                pipe(dump, mariadb(dial, at, Some(into)), &what)?;
            }
            let whole_left_out = mode != CopyMode::Schema && !filters.is_empty();
            if whole_left_out {
                // The filtered tables were left out whole above: their
                // definitions first, their filtered rows below, then
                // their triggers (which must not fire on those rows).
                let mut dump = client(dial, reader, "mariadb-dump", false);
                dump.args(["--single-transaction", "--no-data", "--skip-triggers"])
                    .arg(source)
                    .args(filters.keys());
                pipe(
                    dump,
                    mariadb(dial, at, Some(into)),
                    &format!("{what} (filtered tables' definitions)"),
                )?;
            }
            for (table, filter) in filters {
                let condition = filter.trim();
                let condition =
                    if condition.len() >= 5 && condition[..5].eq_ignore_ascii_case("where") {
                        condition[5..].trim()
                    } else {
                        condition
                    };
                let mut dump = client(dial, reader, "mariadb-dump", false);
                dump.args([
                    "--single-transaction",
                    "--no-create-info",
                    "--skip-triggers",
                    "--skip-add-locks",
                ])
                .arg(format!("--where={condition}"))
                .args([source, table]);
                pipe(
                    dump,
                    mariadb(dial, at, Some(into)),
                    &format!("{what} (table {table})"),
                )?;
            }
            if whole_left_out {
                let mut dump = client(dial, reader, "mariadb-dump", false);
                dump.args([
                    "--single-transaction",
                    "--no-create-info",
                    "--no-data",
                    "--triggers",
                    "--skip-add-locks",
                ])
                .arg(source)
                .args(filters.keys());
                pipe(
                    dump,
                    mariadb(dial, at, Some(into)),
                    &format!("{what} (filtered tables' triggers)"),
                )?;
            }
        }
    }
    Ok(readers)
}

/// The tables (plain tables and materialized views: what holds rows) of
/// the plan's source.
fn pg_table_count(dial: Dial<'_>, plan: &Plan<'_>) -> Result<u64, String> {
    let mut cmd = psql(dial, plan.reader, plan.source, true);
    cmd.args([
        "-At",
        "-c",
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'm') AND n.nspname <> 'information_schema' \
         AND n.nspname NOT LIKE 'pg\\_%'",
    ]);
    let out = run(cmd, &format!("counting the tables of {}", plan.source))?;
    out.trim()
        .parse()
        .map_err(|_| format!("counting the tables of {}: {out:?}", plan.source))
}

/// Whether a PostgreSQL `all` copy goes through the parallel dump and
/// restore: only with several jobs and several tables (`pg_dump -j` splits
/// by table; for one table the directory is only written and read back,
/// and the plain pipe is faster: docs/benchmarks.md).
fn parallel_pays(dial: Dial<'_>, plan: &Plan<'_>) -> Result<bool, String> {
    Ok(plan.jobs > 1 && pg_table_count(dial, plan)? > 1)
}

/// How [`fill`] copies everything, for the user.
fn all_method(parallel: bool, jobs: usize) -> String {
    if parallel {
        format!("pg_dump -Fd -Z0 -j {jobs} + pg_restore -j {jobs}")
    } else {
        "pg_dump | psql".to_owned()
    }
}

/// PostgreSQL: copy each filtered table's chosen rows into `into`.
fn copy_filtered_pg(dial: Dial<'_>, plan: &Plan<'_>, into: &str, what: &str) -> Result<(), String> {
    for (table, filter) in plan.filters {
        let mut out = psql(dial, plan.reader, plan.source, true);
        out.args([
            "-c",
            &format!("\\copy (SELECT * FROM {table} {filter}) TO STDOUT"),
        ]);
        let mut inp = psql(dial, plan.at, into, false);
        inp.args(["-c", &format!("\\copy {table} FROM STDIN")]);
        pipe(out, inp, &format!("{what} (table {table})"))?;
    }
    Ok(())
}

/// Make the branch of `plan`; returns how it was filled, for the user.
///
/// # Errors
/// A user-facing reason; a half-made branch is dropped again.
pub fn create(dial: Dial<'_>, plan: &Plan<'_>) -> Result<String, String> {
    let result = create_inner(dial, plan);
    if result.is_err() {
        let _ = drop_database(dial, plan.at, plan.branch);
    }
    result
}

/// Make (again) the golden copy `golden` of the plan's source on
/// `plan.at`, a full copy that later `all` branches clone; returns how it
/// was filled.
///
/// # Errors
/// A user-facing reason; a half-made copy is dropped again.
pub fn make_golden(dial: Dial<'_>, plan: &Plan<'_>, golden: &str) -> Result<String, String> {
    let at = plan.at;
    drop_database(dial, at, golden)?;
    create_empty(dial, at, golden, None)?;
    let parallel = parallel_pays(dial, plan)?;
    let method = all_method(parallel, plan.jobs.max(1));
    if let Err(e) = fill(dial, plan, golden, CopyMode::All, parallel) {
        let _ = drop_database(dial, at, golden);
        return Err(e);
    }
    // `STRATEGY FILE_COPY` checkpoints first, which would write the whole
    // fresh copy while the next branch waits: written now instead (where
    // the credentials may: superuser, or `pg_checkpoint` from 15 on).
    let mut checkpoint = psql(dial, at, "postgres", false);
    checkpoint.args(["-c", "CHECKPOINT"]);
    if run(checkpoint, "CHECKPOINT").is_ok() {
        return Ok(format!("{method}, CHECKPOINT"));
    }
    Ok(method)
}

fn create_inner(dial: Dial<'_>, plan: &Plan<'_>) -> Result<String, String> {
    let at = plan.at;
    if let Some(golden) = plan.golden {
        create_empty(dial, at, plan.branch, Some(golden))?;
        let method = match file_copy_method(dial, at).as_str() {
            "" => String::new(),
            m => format!(" (file_copy_method = {m})"),
        };
        return Ok(format!(
            "CREATE DATABASE … TEMPLATE {golden} STRATEGY FILE_COPY{method}"
        ));
    }
    let my_way = if at.kind == DbKind::Mysql && plan.mode == CopyMode::All {
        let filtered = plan.filters.keys().map(String::as_str).collect();
        Some(my_parallel::choose(
            dial,
            plan.reader,
            plan.source,
            &filtered,
            plan.jobs,
        )?)
    } else {
        None
    };
    let parallel = match at.kind {
        DbKind::Postgres => plan.mode == CopyMode::All && parallel_pays(dial, plan)?,
        DbKind::Mysql => my_way == Some(my_parallel::Way::Parallel),
    };
    create_empty(dial, at, plan.branch, None)?;
    let readers = fill(dial, plan, plan.branch, plan.mode, parallel)?;
    let filtered = if plan.filters.is_empty() {
        ""
    } else {
        " + filtered tables"
    };
    let jobs = plan.jobs.max(1);
    Ok(match (at.kind, plan.mode) {
        (_, CopyMode::Empty) => "empty database".to_owned(),
        (DbKind::Postgres, CopyMode::Schema) => format!("pg_dump --schema-only | psql{filtered}"),
        (DbKind::Postgres, CopyMode::All) => {
            format!("{}{filtered}", all_method(parallel, jobs))
        }
        (DbKind::Mysql, CopyMode::Schema) => format!("mariadb-dump --no-data | mariadb{filtered}"),
        (DbKind::Mysql, CopyMode::All) => match (my_way, readers) {
            (Some(my_parallel::Way::Parallel), Some(Err(why))) => format!(
                "mariadb-dump | mariadb (one connection: the source's commits could not be \
                 held for a parallel dump from one snapshot: {}){filtered}",
                why.replace('\n', " ")
            ),
            (Some(my_parallel::Way::Parallel), Some(Ok(copied))) => format!(
                "mydumper -t {jobs} + myloader -t {jobs} (one snapshot, commits held {} ms, \
                 rows read by {} connections){filtered}",
                copied.commits_held.as_millis(),
                copied.readers
            ),
            (Some(my_parallel::Way::Single(why)), _) => {
                format!("mariadb-dump | mariadb{why}{filtered}")
            }
            _ => format!("mariadb-dump | mariadb{filtered}"),
        },
    })
}
