//! Making and dropping branch databases with the servers' own clients
//! (`psql`, `pg_dump`, `mariadb`, `mariadb-dump`), run from the target's
//! network through [`crate::Platform::dial`]. Blocking: callers use
//! `spawn_blocking`.
//!
//! The source is only ever read: PostgreSQL clients reading it run with
//! `default_transaction_read_only=on`, MariaDB dumps in one consistent
//! read (`--single-transaction`).

use super::source::Server;
use remora_protocol::db::{CopyMode, DbKind};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};

/// Makes a client command that connects from the target's network.
pub type Dial<'a> = &'a (dyn Fn(&str) -> Command + Send + Sync);

/// What to copy into a new branch.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub source: &'a str,
    pub branch: &'a str,
    pub mode: CopyMode,
    pub filters: &'a BTreeMap<String, String>,
    /// PostgreSQL `all` without filters: clone this golden copy (made first
    /// when `fresh_golden` is false).
    pub golden: Option<(&'a str, bool)>,
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
            if read_only {
                cmd.env("PGOPTIONS", "-c default_transaction_read_only=on");
            }
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
///
/// # Errors
/// The server cannot be reached or refuses the credentials.
pub fn version(dial: Dial<'_>, server: &Server, db: &str) -> Result<(String, Option<u32>), String> {
    let what = format!("cannot reach {}:{}", server.host, server.port);
    match server.kind {
        DbKind::Postgres => {
            let mut cmd = psql(dial, server, db, true);
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
            let mut cmd = mariadb(dial, server, Some(db));
            cmd.args(["-N", "-e", "SELECT VERSION()"]);
            run(cmd, &what).map(|v| (v.trim().to_owned(), None))
        }
    }
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

/// Fill `source` into the database `into` (which exists and is empty).
fn fill(
    dial: Dial<'_>,
    server: &Server,
    source: &str,
    into: &str,
    mode: CopyMode,
    filters: &BTreeMap<String, String>,
) -> Result<(), String> {
    if mode == CopyMode::Empty {
        return Ok(());
    }
    let what = format!("copying {source} into {into}");
    match server.kind {
        DbKind::Postgres => {
            let mut dump = client(dial, server, "pg_dump", true);
            dump.args(["--no-owner", "--no-privileges", "-d", source]);
            if mode == CopyMode::Schema {
                dump.arg("--schema-only");
            } else {
                for table in filters.keys() {
                    dump.arg(format!("--exclude-table-data={table}"));
                }
            }
            pipe(dump, psql(dial, server, into, false), &what)?;
            for (table, filter) in filters {
                let mut out = psql(dial, server, source, true);
                out.args([
                    "-c",
                    &format!("\\copy (SELECT * FROM {table} {filter}) TO STDOUT"),
                ]);
                let mut inp = psql(dial, server, into, false);
                inp.args(["-c", &format!("\\copy {table} FROM STDIN")]);
                pipe(out, inp, &format!("{what} (table {table})"))?;
            }
        }
        DbKind::Mysql => {
            let mut dump = client(dial, server, "mariadb-dump", false);
            dump.args(["--single-transaction", "--routines", "--triggers"]);
            if mode == CopyMode::Schema {
                dump.arg("--no-data");
            } else {
                for table in filters.keys() {
                    dump.arg(format!("--ignore-table={source}.{table}"));
                }
            }
            dump.arg(source);
            pipe(dump, mariadb(dial, server, Some(into)), &what)?;
            if mode != CopyMode::Schema && !filters.is_empty() {
                // The filtered tables were left out whole above: their
                // definitions first, their filtered rows below.
                let mut dump = client(dial, server, "mariadb-dump", false);
                dump.args(["--single-transaction", "--no-data", "--skip-triggers"])
                    .arg(source)
                    .args(filters.keys());
                pipe(
                    dump,
                    mariadb(dial, server, Some(into)),
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
                let mut dump = client(dial, server, "mariadb-dump", false);
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
                    mariadb(dial, server, Some(into)),
                    &format!("{what} (table {table})"),
                )?;
            }
        }
    }
    Ok(())
}

/// Make the branch of `plan`; returns how it was filled, for the user.
///
/// # Errors
/// A user-facing reason; a half-made branch is dropped again.
pub fn create(dial: Dial<'_>, server: &Server, plan: &Plan<'_>) -> Result<String, String> {
    let result = create_inner(dial, server, plan);
    if result.is_err() {
        let _ = drop_database(dial, server, plan.branch);
    }
    result
}

fn create_inner(dial: Dial<'_>, server: &Server, plan: &Plan<'_>) -> Result<String, String> {
    if let Some((golden, fresh)) = plan.golden {
        if !fresh {
            drop_database(dial, server, golden)?;
            create_empty(dial, server, golden, None)?;
            if let Err(e) = fill(
                dial,
                server,
                plan.source,
                golden,
                CopyMode::All,
                plan.filters,
            ) {
                let _ = drop_database(dial, server, golden);
                return Err(e);
            }
        }
        create_empty(dial, server, plan.branch, Some(golden))?;
        let refreshed = if fresh {
            ""
        } else {
            " (golden copy refreshed by pg_dump | psql first)"
        };
        let method = match file_copy_method(dial, server).as_str() {
            "" => String::new(),
            m => format!(" (file_copy_method = {m})"),
        };
        return Ok(format!(
            "CREATE DATABASE … TEMPLATE {golden} STRATEGY FILE_COPY{method}{refreshed}"
        ));
    }
    create_empty(dial, server, plan.branch, None)?;
    fill(
        dial,
        server,
        plan.source,
        plan.branch,
        plan.mode,
        plan.filters,
    )?;
    let filtered = if plan.filters.is_empty() {
        ""
    } else {
        " + filtered tables"
    };
    Ok(match (server.kind, plan.mode) {
        (_, CopyMode::Empty) => "empty database".to_owned(),
        (DbKind::Postgres, CopyMode::Schema) => format!("pg_dump --schema-only | psql{filtered}"),
        (DbKind::Postgres, CopyMode::All) => format!("pg_dump | psql{filtered}"),
        (DbKind::Mysql, CopyMode::Schema) => format!("mariadb-dump --no-data | mariadb{filtered}"),
        (DbKind::Mysql, CopyMode::All) => format!("mariadb-dump | mariadb{filtered}"),
    })
}
