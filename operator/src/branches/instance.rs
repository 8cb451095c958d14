//! The MariaDB fast path: a golden copy of the source made with
//! `mariadb-backup` (a physical, consistent copy of its data files) into a
//! work directory on a filesystem with reflinks, and every branch a
//! `cp --reflink=always` of it served by its own `mariadbd` on a free port.
//! Copying shares the blocks, so a branch costs the copy of the metadata and
//! a server start, whatever the size of the database.
//!
//! Needs the source server's data directory on the operator's machine
//! (`mariadb-backup` reads the files itself), as on the local platform.
//! Blocking: callers use `spawn_blocking`.

use super::engine::Dial;
use super::source::Server;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a branch's `mariadbd` may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a branch's `mariadbd` may take to stop after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        // mariadb-backup is verbose: its last lines say what failed.
        let tail: Vec<&str> = err.lines().rev().take(4).collect();
        Err(format!(
            "{what}: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ))
    }
}

fn connection_args(cmd: &mut Command, server: &Server) {
    cmd.arg(format!("--host={}", server.host))
        .arg(format!("--port={}", server.port))
        .arg(format!("--user={}", server.user))
        .arg("--protocol=tcp");
    if let Some(pw) = &server.password {
        cmd.env("MYSQL_PWD", pw);
    }
}

/// Make the golden copy `golden` of database `db` (with the `mysql` system
/// database, so the source's users can log in to branches): back up from
/// `reader`, then prepare it. A previous copy there is replaced.
///
/// # Errors
/// mariadb-backup failed (the partial copy is removed).
pub fn backup(dial: Dial<'_>, reader: &Server, db: &str, golden: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(golden);
    let result = (|| {
        let mut cmd = dial("mariadb-backup");
        cmd.arg("--backup")
            .arg(format!("--target-dir={}", golden.display()))
            .arg(format!("--databases=mysql {db}"));
        connection_args(&mut cmd, reader);
        run(&mut cmd, "mariadb-backup --backup")?;
        let mut cmd = Command::new("mariadb-backup");
        cmd.arg("--prepare")
            .arg(format!("--target-dir={}", golden.display()));
        run(&mut cmd, "mariadb-backup --prepare").map(drop)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(golden);
    }
    result
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Copy `golden` to `dir` with reflinks and start a `mariadbd` on it,
/// listening on 127.0.0.1 of the target's network; returns its port once it
/// accepts `login`'s connections.
///
/// # Errors
/// The work directory has no reflinks, or the server did not start (it is
/// stopped and `dir` removed).
pub fn start(dial: Dial<'_>, golden: &Path, dir: &Path, login: &Server) -> Result<u16, String> {
    let _ = std::fs::remove_dir_all(dir);
    run(
        Command::new("cp")
            .args(["-a", "--reflink=always"])
            .arg(golden)
            .arg(dir),
        "cp --reflink=always (is the work directory on a filesystem with reflinks, \
         like XFS with reflink=1 or Btrfs?)",
    )?;
    let started = (|| {
        run(
            Command::new("chown").args(["-R", "mysql:mysql"]).arg(dir),
            "chown mysql",
        )?;
        let port = free_port()?;
        let d = dir.display();
        // `sh` leaves mariadbd running on its own (adopted by init).
        let mut cmd = dial("sh");
        cmd.args([
            "-c",
            "\"$0\" \"$@\" </dev/null >/dev/null 2>&1 &",
            "mariadbd",
            "--no-defaults",
        ])
        .arg(format!("--datadir={d}"))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={d}/mariadbd.sock"))
        .arg(format!("--pid-file={d}/mariadbd.pid"))
        .arg(format!("--log-error={d}/mariadbd.err"))
        .args([
            "--user=mysql",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=32M",
            // A small new redo log: a branch should cost little more than
            // the blocks it changes (the default log alone is 96 MB).
            "--innodb-log-file-size=8M",
            "--skip-name-resolve",
        ]);
        run(&mut cmd, "starting mariadbd")?;
        let at = Server {
            host: "127.0.0.1".into(),
            port,
            ..login.clone()
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut probe = dial("mariadb");
            connection_args(&mut probe, &at);
            probe.args(["--connect-timeout=5", "-N", "-e", "SELECT 1"]);
            match run(&mut probe, "mariadbd") {
                Ok(_) => return Ok(port),
                Err(e) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(dir.join("mariadbd.err")).unwrap_or_default();
                    let last: Vec<&str> = log.lines().rev().take(3).collect();
                    return Err(format!(
                        "the branch's mariadbd did not accept connections within {}s: {e} \
                         (its log: {})",
                        START_TIMEOUT.as_secs(),
                        last.into_iter().rev().collect::<Vec<_>>().join(" / ")
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })();
    if started.is_err() {
        remove(dir);
    }
    started
}

/// The pid of the `mariadbd` serving `dir`, if it still runs: read from its
/// pid file, and only if that process's command line names `dir` (a pid
/// left over from before a reboot may belong to something else now).
fn server_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("mariadbd.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let wanted = format!("--datadir={}", dir.display());
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == wanted.as_bytes())
        .then_some(pid)
}

/// Stop the `mariadbd` serving `dir` (if any) and remove `dir`; also used
/// for golden copies, which no server serves.
pub fn remove(dir: &Path) {
    if let Some(pid) = server_pid(dir) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while server_pid(dir).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if server_pid(dir).is_some() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `<workdir>/<name>`.
pub fn path(workdir: &Path, name: &str) -> PathBuf {
    workdir.join(name)
}
