//! MariaDB/MySQL `all` branches by a parallel dump and restore from ONE
//! snapshot of the source: `mydumper` and `myloader` (Debian's `mydumper`
//! package, 0.10; `scripts/setup.sh` installs it). Blocking.
//!
//! # Why mydumper, and how the snapshot is shared
//!
//! `mariadb-dump` has no parallel mode, and several `mariadb-dump
//! --single-transaction` processes (one per table) would each open their own
//! snapshot at their own moment: a transaction committed between two of
//! them would be half in the branch. MariaDB cannot hand a snapshot to
//! another connection (no `pg_export_snapshot`, no Percona's `START
//! TRANSACTION WITH CONSISTENT SNAPSHOT FROM SESSION`), so the only way to
//! give N connections the same snapshot is to hold writers off while all N
//! start theirs: one connection takes `LOCK TABLES … READ` on every table of
//! the source, the N connections each run `START TRANSACTION WITH
//! CONSISTENT SNAPSHOT`, then the lock is released and the N connections
//! read the tables in parallel, each in the same snapshot. Driving `N`
//! `mariadb-dump` processes cannot do that: nothing says when each one has
//! started its transaction (its first output is buffered), so the lock
//! could not be released at the right moment. Doing it in the operator
//! would mean a MySQL client library and our own row serializer
//! (generated and invisible columns, `BIT`, binary strings, time zones),
//! which `mariadb-dump` and `mydumper` already get right.
//!
//! `mydumper` implements exactly that protocol:
//! `--lock-all-tables` (the `LOCK TABLE … READ` of the source's tables
//! rather than `FLUSH TABLES WITH READ LOCK`, which would hold off every
//! writer of the whole server and needs `RELOAD`), `--threads N`
//! connections that each start a consistent snapshot under the lock, and
//! `--trx-consistency-only`: the lock is released as soon as the N
//! transactions have started (its log says `Transactions started, unlocking
//! tables`), so writers of the shared database wait only for that moment
//! (plus, before the lock is granted, for write transactions already open on
//! the source's tables to end, as with `mariadb-backup`). The lock is a read
//! lock: the source is only read. Its one cost to the source's clients: the
//! lock takes the tables one after the other, so a write transaction that
//! holds one of them and then writes another at that moment is chosen as
//! the deadlock victim (error 1213, rolled back; InnoDB clients retry
//! those). Measured with a writer of ~200 two-table transactions a second:
//! 2 such errors in 3 dumps; none with `FLUSH TABLES WITH READ LOCK`, which
//! is not used even where `RELOAD` is granted: it holds off every writer of
//! the whole server, and first waits for every running query (a long report
//! on another database would stall all writes). Without locks (`--no-locks`)
//! the same writer's two tables were copied from different moments in 3 of
//! 3 dumps. Then `myloader --threads N` restores the
//! tables in parallel into the branch (foreign key checks off per
//! connection; views, triggers and routines after the rows).
//!
//! Consistency covers transactional (InnoDB) tables, as `mariadb-dump
//! --single-transaction` does: a non-transactional table (MyISAM, Aria)
//! is read outside the lock.
//!
//! Checked on this machine's MariaDB 10.11 (`mydumper 0.10.0, built against
//! MySQL 10.11`): generated columns are left out of the rows, `BIT`, binary
//! and `NULL` values, views, triggers and routines come through. `-R`
//! (routines) without the rights to read them leaves them out, as
//! `mariadb-dump --routines` does; events are not dumped (nor were they).
//!
//! # When
//!
//! Only when it pays and can be done right ([`choose`]): `dump_jobs` above
//! one, several tables to dump whole (a table is one job), `mydumper` and
//! `myloader` installed where the operator runs its clients, and the reading
//! user may `LOCK TABLES` on the source (a global grant or one on a database
//! pattern matching it; grants through roles are not seen). Otherwise the
//! branch is `mariadb-dump | mariadb` (one snapshot, one connection), and
//! the session's output says why.

use super::engine::Dial;
use super::source::Server;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

/// How a MariaDB `all` branch is filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Way {
    /// `mydumper` + `myloader`.
    Parallel,
    /// `mariadb-dump | mariadb`; why not in parallel (empty: nothing worth
    /// saying, as for one table or `dump_jobs = 1`).
    Single(String),
}

/// `user@host` as `information_schema` grantees are written:
/// `'user'@'host'`, from `CURRENT_USER()`.
const GRANTEE: &str = "CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
                       SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')";

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// mydumper and myloader take their own options: no `--protocol`, and
/// `localhost` would mean the server's socket (the other clients are told
/// `--protocol=tcp`).
fn connect(cmd: &mut Command, server: &Server) {
    let host = if server.host == "localhost" {
        "127.0.0.1"
    } else {
        server.host.as_str()
    };
    cmd.arg(format!("--host={host}"))
        .arg(format!("--port={}", server.port))
        .arg(format!("--user={}", server.user));
    if let Some(pw) = &server.password {
        cmd.env("MYSQL_PWD", pw);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

/// Whether `program --version` runs where the operator runs its clients.
fn installed(dial: Dial<'_>, program: &str) -> bool {
    dial(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How to fill a MariaDB `all` branch of `source` read by `reader`, with
/// `jobs` parallel jobs; `filtered`: the tables copied by their filters
/// instead (not counted).
///
/// # Errors
/// `mariadb` cannot be run.
pub fn choose(
    dial: Dial<'_>,
    reader: &Server,
    source: &str,
    filtered: &BTreeSet<&str>,
    jobs: usize,
) -> Result<Way, String> {
    if jobs <= 1 {
        return Ok(Way::Single(String::new()));
    }
    let db = sql_string(source);
    let sql = format!(
        "SELECT TABLE_NAME FROM information_schema.TABLES \
           WHERE TABLE_SCHEMA = {db} AND TABLE_TYPE = 'BASE TABLE'; \
         SELECT (SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES \
           WHERE PRIVILEGE_TYPE IN ('LOCK TABLES', 'ALL PRIVILEGES') AND GRANTEE = {GRANTEE}) \
         + (SELECT COUNT(*) FROM information_schema.SCHEMA_PRIVILEGES \
           WHERE PRIVILEGE_TYPE = 'LOCK TABLES' AND GRANTEE = {GRANTEE} \
           AND {db} LIKE TABLE_SCHEMA) > 0 AS may_lock"
    );
    let mut cmd = dial("mariadb");
    cmd.arg(format!("--host={}", reader.host))
        .arg(format!("--port={}", reader.port))
        .arg(format!("--user={}", reader.user))
        .args(["--protocol=tcp", "--connect-timeout=10", "--batch", "-N"])
        .args(["-e", &sql])
        .stdin(Stdio::null());
    if let Some(pw) = &reader.password {
        cmd.env("MYSQL_PWD", pw);
    }
    let out = cmd.output().map_err(|e| {
        format!(
            "asking {}:{}: cannot run mariadb: {e}",
            reader.host, reader.port
        )
    })?;
    if !out.status.success() {
        // The server answered the version check before: whatever this is,
        // the one-connection copy may still work.
        return Ok(Way::Single(format!(
            " (one connection: cannot list the tables and rights on {source}: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = text.lines().collect();
    let may_lock = lines.pop().map(str::trim) == Some("1");
    let tables = lines
        .iter()
        .filter(|t| !filtered.contains(t.trim()))
        .count();
    if tables <= 1 {
        return Ok(Way::Single(String::new()));
    }
    if !may_lock {
        return Ok(Way::Single(format!(
            " (one connection: {} may not LOCK TABLES on {source}, which a parallel dump \
             from one snapshot needs)",
            reader.user
        )));
    }
    for program in ["mydumper", "myloader"] {
        if !installed(dial, program) {
            return Ok(Way::Single(format!(
                " (one connection: {program} is not installed)"
            )));
        }
    }
    Ok(Way::Parallel)
}

/// Runs `cmd`; returns what it logged (GLib logs go to stderr, or stdout).
fn run(mut cmd: Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    if out.status.success() {
        return Ok(log);
    }
    // Their errors are the `CRITICAL` lines.
    let critical: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CRITICAL") || l.contains("Error"))
        .collect();
    let said = if critical.is_empty() {
        log.trim().to_owned()
    } else {
        critical.join(" / ")
    };
    Err(format!("{what}: {}: {said}", out.status))
}

/// The connections that read table rows, from mydumper's log at `-v 3`
/// (`Thread 2 dumping data for `db`.`t``), and whether it said it
/// unlocked the tables once every transaction had started.
pub fn readers(log: &str) -> (BTreeSet<u32>, bool) {
    let threads = log
        .lines()
        .filter(|l| l.contains(" dumping data for `"))
        .filter_map(|l| {
            let rest = &l[l.find("Thread ")? + "Thread ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    (
        threads,
        log.contains("Transactions started, unlocking tables"),
    )
}

/// Dump `source` (without the `filtered` tables) with `jobs` connections
/// sharing one snapshot into `dir` (which must not exist), and restore it
/// into `into` on `at` with as many; returns how many connections read
/// rows.
///
/// # Errors
/// mydumper or myloader failed (what they said).
#[allow(clippy::too_many_arguments)]
pub fn dump_and_restore(
    dial: Dial<'_>,
    reader: &Server,
    source: &str,
    at: &Server,
    into: &str,
    filtered: &BTreeSet<&str>,
    dir: &Path,
    jobs: usize,
) -> Result<usize, String> {
    let what = format!("copying {source} into {into}");
    let mut dump = dial("mydumper");
    connect(&mut dump, reader);
    dump.arg(format!("--database={source}"))
        .arg(format!("--outputdir={}", dir.display()))
        .arg(format!("--threads={jobs}"))
        .args([
            "--lock-all-tables",
            "--trx-consistency-only",
            "--triggers",
            "--routines",
            "--verbose=3",
        ]);
    if !filtered.is_empty() {
        let omit = dir.with_extension("omit");
        let list: String = filtered.iter().map(|t| format!("{source}.{t}\n")).collect();
        std::fs::write(&omit, list).map_err(|e| format!("{}: {e}", omit.display()))?;
        dump.arg(format!("--omit-from-file={}", omit.display()));
    }
    let log = run(dump, &format!("{what} (mydumper)"))?;
    let (threads, unlocked) = readers(&log);
    if !unlocked {
        return Err(format!(
            "{what} (mydumper): its log does not say the snapshot was taken under the lock"
        ));
    }
    let mut load = dial("myloader");
    connect(&mut load, at);
    load.arg(format!("--directory={}", dir.display()))
        .arg(format!("--source-db={source}"))
        .arg(format!("--database={into}"))
        .arg(format!("--threads={jobs}"))
        .arg("--verbose=2");
    run(load, &format!("{what} (myloader)"))?;
    Ok(threads.len())
}

#[cfg(test)]
mod tests {
    use super::readers;

    #[test]
    fn the_connections_that_read_rows_are_counted_from_mydumpers_log() {
        // As mydumper 0.10 logs at -v 3 (to stderr).
        let log = "** Message: 08:33:19.325: Thread 2 connected using MySQL connection ID 25\n\
                   ** Message: 08:33:19.334: Transactions started, unlocking tables\n\
                   ** Message: 08:33:19.335: Thread 2 dumping data for `shop`.`a`\n\
                   ** Message: 08:33:19.335: Thread 4 dumping data for `shop`.`c`\n\
                   ** Message: 08:33:19.336: Thread 2 dumping data for `shop`.`d`\n\
                   ** Message: 08:33:19.336: Thread 3 dumping schema for `shop`.`a`\n";
        let (threads, unlocked) = readers(log);
        assert_eq!(threads.into_iter().collect::<Vec<_>>(), [2, 4]);
        assert!(unlocked);
        let (threads, unlocked) = readers("** Message: Thread 1 dumping data for `s`.`t`\n");
        assert_eq!(threads.len(), 1);
        assert!(!unlocked);
    }
}
