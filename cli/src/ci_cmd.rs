//! `remora ci start|stop`: an app under remora in the background of a CI job.
//!
//! `start` prepares the session (as `run` does), starts the command in its
//! own process group with the session's environment and the session's
//! lifeline, its output appended to a log file, and returns once the app
//! listens: `--wait-port` accepts connections, or else any process of the
//! app's tree holds a listening TCP socket (read from `/proc`). If the app
//! exits first or the time runs out, it prints the log and fails (stopping
//! what it started). `stop` ends the process group (TERM, then KILL after
//! 10 s) and waits until the session's intproxy is gone. State (one JSON file
//! per `--name`) and logs live in the state directory ([`crate::state`]).

use crate::args::{CiCommand, CiStartArgs};
use crate::error::{Error, Result};
use crate::procfs::Proc;
use crate::progress::Progress;
use crate::session::{self, Lifetime, Log};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `stop` waits after SIGTERM before SIGKILL, and for the session.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often readiness is checked.
const POLL: Duration = Duration::from_millis(100);

/// Paths of an app's state file and log.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state: PathBuf,
    pub log: PathBuf,
}

impl Paths {
    pub fn of(name: &str) -> Result<Paths> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::Io(format!(
                "--name {name:?}: use letters, digits, '-', '_' and '.' only"
            )));
        }
        let dir = crate::state::dir()?;
        Ok(Paths {
            state: dir.join(format!("ci-{name}.json")),
            log: dir.join(format!("ci-{name}.log")),
        })
    }
}

pub fn run(command: CiCommand) -> Result<i32> {
    match command {
        CiCommand::Start(args) => start(*args),
        CiCommand::Stop { name } => stop(&name),
    }
}

/// A process identity that survives PID reuse: pid + start time.
fn alive(proc: &Proc, pid: u32, start: u64) -> bool {
    proc.stat(pid)
        .is_some_and(|s| s.start == start && s.state != 'Z')
}

fn start(args: CiStartArgs) -> Result<i32> {
    let proc = Proc::default();
    let paths = Paths::of(&args.name)?;
    if let Some(state) = read_state(&paths) {
        let pid = state["pid"].as_u64().unwrap_or(0) as u32;
        let started = state["start_time"].as_u64().unwrap_or(0);
        if alive(&proc, pid, started) {
            return Err(Error::Io(format!(
                "an app named {:?} is already running (pid {pid}); run `remora ci stop --name {}` first",
                args.name, args.name
            )));
        }
    }
    // A fresh log for this run; the intproxy and agent write to it too.
    std::fs::write(&paths.log, b"")
        .map_err(|e| Error::Io(format!("creating {}: {e}", paths.log.display())))?;
    let mut progress = Progress::new();
    let prepared = session::prepare(
        &args.session,
        &args.command[0],
        &Lifetime {
            log: Log::File(paths.log.clone()),
            ..Lifetime::default()
        },
        &mut progress,
    )?;
    progress.finish();
    let session::Prepared {
        env,
        intproxy,
        lifeline,
        ..
    } = prepared;
    let intproxy_pid = proc.listener_pid(std::process::id(), intproxy);
    let log = || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&paths.log)
            .map_err(|e| Error::Io(format!("opening {}: {e}", paths.log.display())))
    };
    // The app inherits the lifeline, which keeps the session up as long as
    // any process of the app runs (as `remora run`'s exec does).
    let lifeline = crate::run::keep_across_exec(lifeline);
    // A Go or static app runs under `remora supervise` (the seccomp
    // supervisor), which lives as long as the app, in its process group.
    let mut env = env;
    let argv = match crate::run::wants_supervisor(&args.command[0], &env) {
        Some(_) => {
            env.remove("LD_PRELOAD");
            let exe =
                std::env::current_exe().map_err(|e| Error::Io(format!("locating remora: {e}")))?;
            let mut argv = vec![exe.display().to_string(), "supervise".into(), "--".into()];
            argv.extend(args.command.iter().cloned());
            argv
        }
        None => args.command.clone(),
    };
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(&env)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log()?)
            .stderr(log()?)
            .spawn()
            .map_err(|source| Error::Exec {
                program: args.command[0].clone(),
                source,
            })?
    };
    // Our copy closes; the app's stays open.
    drop(lifeline);
    let pid = child.id();
    let start_time = proc.stat(pid).map(|s| s.start).unwrap_or(0);
    let intproxy_start = intproxy_pid.and_then(|p| proc.stat(p)).map(|s| s.start);
    let state = json!({
        "name": args.name,
        "pid": pid,
        "start_time": start_time,
        "intproxy_pid": intproxy_pid,
        "intproxy_start_time": intproxy_start,
        "log": paths.log,
        "command": args.command,
    });
    crate::state::write_private(&paths.state, &state.to_string())?;

    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let why = format!("the app exited ({status}) before it listened");
            return Err(failed(&args.name, &why, &mut child));
        }
        let listening = match args.wait_port {
            Some(port) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    vec![addr]
                } else {
                    Vec::new()
                }
            }
            None => proc.tree_listening(pid),
        };
        if !listening.is_empty() {
            let shown: Vec<String> = listening.iter().map(ToString::to_string).collect();
            println!(
                "remora ci: {} is up (pid {pid}, listening on {}); log: {}",
                args.name,
                shown.join(", "),
                paths.log.display()
            );
            return Ok(0);
        }
        if Instant::now() >= deadline {
            let what = match args.wait_port {
                Some(port) => format!("port {port} did not accept connections"),
                None => "no process of the app listened on a TCP port".into(),
            };
            let why = format!("{what} within {}s", args.timeout);
            return Err(failed(&args.name, &why, &mut child));
        }
        std::thread::sleep(POLL);
    }
}

/// The error for a failed start: stop what was started, show the app's log.
fn failed(name: &str, why: &str, child: &mut std::process::Child) -> Error {
    let log = end(name).unwrap_or_default();
    // Ours to reap (it was stopped by `end`).
    let _ = child.wait();
    Error::Io(format!(
        "remora ci start {name}: {why}\n--- app log ---\n{log}--- end of log ---"
    ))
}

fn read_state(paths: &Paths) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(&paths.state).ok()?).ok()
}

/// Wait until `done` holds or `timeout` passes; whether it held.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

fn stop(name: &str) -> Result<i32> {
    end(name)?;
    println!("remora ci: {name} stopped");
    Ok(0)
}

/// End the app and its session, remove its state; returns its log.
fn end(name: &str) -> Result<String> {
    let proc = Proc::default();
    let paths = Paths::of(name)?;
    let Some(state) = read_state(&paths) else {
        return Err(Error::Io(format!(
            "no app named {name:?} was started (no {}); start one with `remora ci start --name {name}`",
            paths.state.display()
        )));
    };
    let pid = state["pid"].as_u64().unwrap_or(0) as u32;
    let start_time = state["start_time"].as_u64().unwrap_or(0);
    let group = Pid::from_raw(pid as i32);
    // Zombies (a parent that has not reaped them yet) do not count.
    let group_alive = || !proc.group_members(pid).is_empty();
    if pid > 1 && (alive(&proc, pid, start_time) || group_alive()) {
        let _ = killpg(group, Signal::SIGTERM);
        if !wait_until(STOP_GRACE, || !group_alive()) {
            let _ = killpg(group, Signal::SIGKILL);
            wait_until(STOP_GRACE, || !group_alive());
        }
    }
    // The session ends once its last process is gone (plus a short linger).
    if let (Some(ip), Some(ist)) = (
        state["intproxy_pid"].as_u64(),
        state["intproxy_start_time"].as_u64(),
    ) && !wait_until(STOP_GRACE, || !alive(&proc, ip as u32, ist))
    {
        eprintln!("remora ci: warning: the session's intproxy (pid {ip}) is still running");
    }
    let log = std::fs::read_to_string(&paths.log).unwrap_or_default();
    let _ = std::fs::remove_file(&paths.state);
    let _ = std::fs::remove_file(&paths.log);
    Ok(log)
}
