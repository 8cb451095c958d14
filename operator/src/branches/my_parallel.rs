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
//! give N connections the same snapshot is to hold commits off while all N
//! start theirs. Driving `N` `mariadb-dump` processes cannot do that:
//! nothing says when each one has started its transaction (its first output
//! is buffered). Doing it in the operator would mean a MySQL client library
//! and our own row serializer (generated and invisible columns, `BIT`,
//! binary strings, time zones), which `mariadb-dump` and `mydumper` already
//! get right. `mydumper` starts a consistent snapshot on each of its
//! `--threads N` connections, and with `--trx-consistency-only` logs
//! `Transactions started, unlocking tables` once all of them have.
//!
//! # The commit block: `BACKUP STAGE BLOCK_COMMIT`, not a table lock
//!
//! The operator holds commits off itself, on a `mariadb` session of its
//! own ([`CommitBlock`]): `BACKUP STAGE START; BACKUP STAGE BLOCK_COMMIT`
//! (the stage `mariadb-backup` uses for the same purpose), then runs
//! `mydumper --no-locks --trx-consistency-only`, reads its log as it
//! comes, and ends the stage (`BACKUP STAGE END`) as soon as the log says
//! the transactions started; the session's output says how long commits
//! were held. While held, the source's writers are *blocked, never
//! failed*: a `COMMIT` (or an autocommitted write) waits for the end of
//! the stage; a transaction's own statements go on; no lock is taken on
//! any table, so nothing can be chosen as a deadlock victim. A writer
//! waiting for a row that a blocked committer holds waits too (InnoDB's
//! `innodb_lock_wait_timeout`, 50 s by default, is far above the block,
//! which the operator ends after at most [`SNAPSHOTS_WITHIN`] whatever
//! mydumper does). On the way to `BLOCK_COMMIT` the server also briefly
//! holds off DDL and writes to non-transactional (MyISAM, Aria) tables.
//! The stage is asked for with `lock_wait_timeout` = [`BLOCK_WAIT_SECS`]:
//! on a server busy with another backup (MariaDB has one stage at a time)
//! or a long DDL, the copy gives up before dumping anything
//! ([`Parallel::NotHeld`], with the server's words) and the caller fills
//! the branch by one connection instead.
//!
//! What it replaced, measured with a writer moving 1 between two tables
//! in both orders (docs/db-branches.md has the numbers): `mydumper
//! --lock-all-tables` (`LOCK TABLE … READ` of the source's tables, taken
//! one after the other) made a write transaction holding one of the tables
//! and writing another a deadlock victim (error 1213, rolled back) in 2 of
//! 3 dumps: a branch must never make the shared database's transactions
//! fail. `FLUSH TABLES WITH READ LOCK` (mydumper's default) fails none, but
//! first waits for every write statement running on the whole server (an
//! `UPDATE` of 4 s on another database stalled the writer 3.5 s) while
//! holding off every writer behind it. `BLOCK_COMMIT` waits only for
//! commits in progress. Without any block (`--no-locks` alone) the writer's
//! two tables were copied from different moments in 2 of 3 dumps.
//!
//! Then `myloader --threads N` restores the tables in parallel into the
//! branch (foreign key checks off per connection; views, triggers and
//! routines after the rows).
//!
//! Consistency covers transactional (InnoDB) tables, as `mariadb-dump
//! --single-transaction` does: a non-transactional table (MyISAM, Aria)
//! is read outside the snapshot.
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
//! user has `RELOAD`, the global privilege `BACKUP STAGE` needs (grants
//! through roles are not seen). Otherwise the branch is `mariadb-dump |
//! mariadb` (one snapshot, one connection, no block at all), and the
//! session's output says why. There is no fallback to a table lock: the
//! user's `LOCK TABLES` right is not used.

use super::engine::Dial;
use super::source::Server;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant};

/// The operator's session asks for `BACKUP STAGE BLOCK_COMMIT` with this
/// `lock_wait_timeout` (seconds): a server where another backup holds the
/// stage, or a long DDL runs, fails the branch instead of making it wait
/// without end. Writers are not blocked while the stage is asked for.
pub const BLOCK_WAIT_SECS: u32 = 10;

/// The longest the operator holds commits off: mydumper's connections must
/// have started their snapshots by then, else the block ends and the copy
/// fails (the source's writers waited that long at most; none failed).
pub const SNAPSHOTS_WITHIN: Duration = Duration::from_secs(10);

/// What mydumper logs (at `-v 3`, with `--trx-consistency-only`) once
/// every one of its connections has started its consistent snapshot.
const SNAPSHOTS_STARTED: &str = "Transactions started, unlocking tables";

/// The lines the operator's session prints once the stage is taken, and
/// once it is ended.
const BLOCKED: &str = "remora: commits blocked";
const RELEASED: &str = "remora: commits released";

/// mydumper's log lines in flight between the thread that reads them and
/// the copy that waits for [`SNAPSHOTS_STARTED`].
const LOG_LINES: usize = 64;

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
         SELECT COUNT(*) > 0 FROM information_schema.USER_PRIVILEGES \
           WHERE PRIVILEGE_TYPE = 'RELOAD' AND GRANTEE = {GRANTEE}"
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
    let may_block = lines.pop().map(str::trim) == Some("1");
    let tables = lines
        .iter()
        .filter(|t| !filtered.contains(t.trim()))
        .count();
    if tables <= 1 {
        return Ok(Way::Single(String::new()));
    }
    if !may_block {
        return Ok(Way::Single(format!(
            " (one connection: {} has no RELOAD privilege, which a parallel dump from one \
             snapshot needs to hold commits off while its connections start: BACKUP STAGE \
             BLOCK_COMMIT)",
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

/// The error of a client that ended with `status` having logged `log`:
/// their errors are the `CRITICAL` lines.
fn failure(what: &str, status: ExitStatus, log: &str) -> String {
    let critical: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CRITICAL") || l.contains("Error"))
        .collect();
    let said = if critical.is_empty() {
        log.trim().to_owned()
    } else {
        critical.join(" / ")
    };
    format!("{what}: {status}: {said}")
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
    Err(failure(what, out.status, &log))
}

/// A child process killed (and reaped) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The operator's own `mariadb` session on the source's server, holding
/// `BACKUP STAGE BLOCK_COMMIT`: no transaction of the server commits until
/// [`CommitBlock::end`] (they wait; none fails).
///
/// # Guarantees
/// Dropped without `end`, its client is killed: the server ends the session
/// and with it the stage, so commits are never held past the operator's
/// interest (nor past the operator's own death: the connection closes).
struct CommitBlock {
    client: Reaped,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// When the stage was asked for: commits may have waited since.
    asked: Instant,
}

impl CommitBlock {
    /// Takes the stage on `server`, as its reading user.
    ///
    /// # Errors
    /// `mariadb` cannot run, or the server refused or timed out (what it
    /// said).
    fn take(dial: Dial<'_>, server: &Server) -> Result<Self, String> {
        let what = format!("holding commits on {}:{}", server.host, server.port);
        let mut cmd = dial("mariadb");
        cmd.arg(format!("--host={}", server.host))
            .arg(format!("--port={}", server.port))
            .arg(format!("--user={}", server.user))
            .args([
                "--protocol=tcp",
                "--connect-timeout=10",
                "--batch",
                "-N",
                "--unbuffered",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(pw) = &server.password {
            cmd.env("MYSQL_PWD", pw);
        }
        let mut client = Reaped(
            cmd.spawn()
                .map_err(|e| format!("{what}: cannot run mariadb: {e}"))?,
        );
        let (Some(mut stdin), Some(stdout)) = (client.0.stdin.take(), client.0.stdout.take())
        else {
            return Err(format!("{what}: mariadb without its pipes"));
        };
        let asked = Instant::now();
        let mut stdout = BufReader::new(stdout);
        let sent = stdin.write_all(
            format!(
                "SET SESSION lock_wait_timeout = {BLOCK_WAIT_SECS}; BACKUP STAGE START; \
                 BACKUP STAGE BLOCK_COMMIT; SELECT '{BLOCKED}';\n"
            )
            .as_bytes(),
        );
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        if sent.is_err() || line.trim() != BLOCKED {
            // The client stops at the first error (batch mode) and says it.
            drop(stdin);
            let mut said = String::new();
            if let Some(mut err) = client.0.stderr.take() {
                let _ = err.read_to_string(&mut said);
            }
            return Err(format!(
                "{what} (BACKUP STAGE BLOCK_COMMIT): {}",
                said.trim()
            ));
        }
        Ok(Self {
            client,
            stdin,
            stdout,
            asked,
        })
    }

    /// Ends the stage; returns how long commits may have waited for it.
    ///
    /// # Errors
    /// The session ended before (then it is not known that commits were
    /// held all along).
    fn end(mut self) -> Result<Duration, String> {
        let sent = self
            .stdin
            .write_all(format!("BACKUP STAGE END; SELECT '{RELEASED}';\n").as_bytes());
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        let held = self.asked.elapsed();
        if sent.is_err() || line.trim() != RELEASED {
            return Err(
                "the session holding commits (BACKUP STAGE BLOCK_COMMIT) ended before \
                 mydumper's snapshots were all started"
                    .to_owned(),
            );
        }
        drop(self.stdin);
        let _ = self.client.0.wait();
        Ok(held)
    }
}

/// The connections that read table rows, from mydumper's log at `-v 3`
/// (`Thread 2 dumping data for `db`.`t``).
pub fn readers(log: &str) -> BTreeSet<u32> {
    log.lines()
        .filter(|l| l.contains(" dumping data for `"))
        .filter_map(|l| {
            let rest = &l[l.find("Thread ")? + "Thread ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// What a parallel copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// The connections that read rows.
    pub readers: usize,
    /// How long the source's commits were held off (from asking for the
    /// stage to its end) while mydumper's connections started their
    /// snapshots.
    pub commits_held: Duration,
}

/// What [`dump_and_restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parallel {
    /// The branch was filled.
    Copied(Copied),
    /// The source's commits could not be held (the server's words: another
    /// backup holds the stage, a DDL outlasted [`BLOCK_WAIT_SECS`], a right
    /// granted through a role the check did not see); nothing was dumped
    /// or written, so the caller may fill the branch another way.
    NotHeld(String),
}

/// Dump `source` (without the `filtered` tables) with `jobs` connections
/// sharing one snapshot, started while [`CommitBlock`] holds the source's
/// commits, into `dir` (which must not exist), and restore it into `into`
/// on `at` with as many.
///
/// # Errors
/// mydumper's connections did not start within [`SNAPSHOTS_WITHIN`], or
/// mydumper or myloader failed (what they said). Commits that could not be
/// held are not an error: [`Parallel::NotHeld`].
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
) -> Result<Parallel, String> {
    let what = format!("copying {source} into {into}");
    let mut dump = dial("mydumper");
    connect(&mut dump, reader);
    dump.arg(format!("--database={source}"))
        .arg(format!("--outputdir={}", dir.display()))
        .arg(format!("--threads={jobs}"))
        .args([
            // The operator holds the commits itself (CommitBlock); with
            // `--trx-consistency-only` mydumper still says when its
            // connections have all started their snapshots.
            "--no-locks",
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
    let block = match CommitBlock::take(dial, reader) {
        Ok(block) => block,
        Err(why) => return Ok(Parallel::NotHeld(why)),
    };
    let (log, commits_held) = dump_under(dump, block, &format!("{what} (mydumper)"))?;
    let threads = readers(&log);
    let mut load = dial("myloader");
    connect(&mut load, at);
    load.arg(format!("--directory={}", dir.display()))
        .arg(format!("--source-db={source}"))
        .arg(format!("--database={into}"))
        .arg(format!("--threads={jobs}"))
        .arg("--verbose=2");
    run(load, &format!("{what} (myloader)"))?;
    Ok(Parallel::Copied(Copied {
        readers: threads.len(),
        commits_held,
    }))
}

/// Runs mydumper (`dump`) while `block` holds the source's commits, and
/// ends the block as soon as its log says every connection started its
/// snapshot; returns its log and how long commits were held.
fn dump_under(
    mut dump: Command,
    block: CommitBlock,
    what: &str,
) -> Result<(String, Duration), String> {
    let mut child = Reaped(
        dump.spawn()
            .map_err(|e| format!("{what}: cannot run {:?}: {e}", dump.get_program()))?,
    );
    let (Some(stderr), Some(mut stdout)) = (child.0.stderr.take(), child.0.stdout.take()) else {
        return Err(format!("{what}: mydumper without its pipes"));
    };
    // reader thread --mydumper's log lines--> this copy
    let (line_tx, line_rx) = sync_channel::<String>(LOG_LINES);
    let lines = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let rest = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + SNAPSHOTS_WITHIN;
    let mut block = Some(block);
    let mut held = None;
    let mut log = String::new();
    loop {
        let line = if block.is_some() {
            match line_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    // Commits were held long enough: release them first.
                    drop(block);
                    return Err(format!(
                        "{what}: its connections did not all start their snapshots within \
                         {} s; the source's commits were released and the copy abandoned",
                        SNAPSHOTS_WITHIN.as_secs()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match line_rx.recv() {
                Ok(line) => line,
                Err(_) => break,
            }
        };
        if line.contains(SNAPSHOTS_STARTED)
            && let Some(block) = block.take()
        {
            held = Some(block.end()?);
        }
        log.push_str(&line);
        log.push('\n');
    }
    drop(block);
    let _ = lines.join();
    log.push_str(&rest.join().unwrap_or_default());
    let status = child
        .0
        .wait()
        .map_err(|e| format!("{what}: waiting for it: {e}"))?;
    if !status.success() {
        return Err(failure(what, status, &log));
    }
    let Some(held) = held else {
        return Err(format!(
            "{what}: its log does not say its snapshots were all started while commits were held"
        ));
    };
    Ok((log, held))
}

#[cfg(test)]
mod tests;
