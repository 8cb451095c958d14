//! `remora test --target T -- <test command>`: one session for the whole
//! test run. The build runs locally, untouched by the layer; only the test
//! processes join the session:
//!
//! - `cargo …`: `CARGO_TARGET_<TRIPLE>_RUNNER` is `remora runner`, so Cargo
//!   starts every test binary through [`runner`], which execs it with the
//!   session's variables. Compiler, build scripts and proc macros never see
//!   them.
//! - `go test …`: `-exec "remora runner"` does the same for Go test binaries,
//!   which the runner starts under the seccomp supervisor (Go bypasses
//!   libc): they see the target's environment, files and network.
//! - anything else (`pytest`, `npm test`, `mvn test`, or `--whole`): the
//!   whole command runs in the session, as with `remora run` (under the
//!   seccomp supervisor when it is a Go or static program); for
//!   interpreters the test runner and the tests are one process, so this is
//!   unavoidable.
//!
//! `remora test` holds its own layer session open while the command runs, so
//! the intproxy stays up between test binaries; the session ends with it.
//! The session's variables reach the runner through a private file in the
//! state directory (never in the build's environment), removed at the end.

use crate::args::{RunnerArgs, TestArgs};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::session::{self, Lifetime};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Variable naming the session file the runner reads.
pub const SESSION_FILE_ENV: &str = "REMORA_SESSION_FILE";

/// How the test command joins the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Cargo: test binaries through `CARGO_TARGET_<TRIPLE>_RUNNER`.
    Cargo,
    /// `go test`: test binaries through `-exec`.
    Go,
    /// The whole command under the layer.
    Whole,
}

/// How `command` should join the session.
pub fn mode(command: &[String], whole: bool) -> Mode {
    let program = command
        .first()
        .map(|p| {
            Path::new(p)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        })
        .unwrap_or_default();
    match (whole, program.as_ref(), command.get(1).map(String::as_str)) {
        (true, ..) => Mode::Whole,
        (false, "cargo", _) => Mode::Cargo,
        (false, "go", Some("test")) => Mode::Go,
        _ => Mode::Whole,
    }
}

/// `CARGO_TARGET_<TRIPLE>_RUNNER` for a target triple.
pub fn cargo_runner_var(triple: &str) -> String {
    format!(
        "CARGO_TARGET_{}_RUNNER",
        triple.to_uppercase().replace(['-', '.'], "_")
    )
}

/// The triples Cargo may build tests for: every `--target T` of the command,
/// else the host's (from `rustc -vV`).
fn cargo_triples(command: &[String]) -> Result<Vec<String>> {
    let mut triples: Vec<String> = command
        .windows(2)
        .filter(|w| w[0] == "--target")
        .map(|w| w[1].clone())
        .chain(
            command
                .iter()
                .filter_map(|a| a.strip_prefix("--target=").map(str::to_string)),
        )
        .collect();
    if triples.is_empty() {
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let out = Command::new(&rustc)
            .arg("-vV")
            .output()
            .map_err(|e| Error::Io(format!("running `{rustc} -vV` for the host triple: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let host = text
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .ok_or_else(|| Error::Io(format!("`{rustc} -vV` printed no host triple")))?;
        triples.push(host.trim().to_string());
    }
    Ok(triples)
}

/// `go test -exec RUNNER …`: the flag goes right after `test`.
pub fn go_command(command: &[String], runner: &str) -> Vec<String> {
    let mut out = command[..2].to_vec();
    out.push("-exec".into());
    out.push(runner.into());
    out.extend_from_slice(&command[2..]);
    out
}

/// Removes the session file however the run ends.
#[derive(Debug)]
struct SessionFile(PathBuf);

impl Drop for SessionFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn run(args: TestArgs) -> Result<i32> {
    let mode = mode(&args.command, args.whole);
    let program = args.command[0].clone();
    let mut progress = Progress::new();
    let prepared = session::prepare(
        &args.session,
        &format!("remora test: {}", args.command.join(" ")),
        &Lifetime::default(),
        &mut progress,
    )?;
    progress.finish();
    let mut command;
    let mut _file = None;
    if mode == Mode::Whole {
        if let Some(why) = crate::run::wants_supervisor(&program, &prepared.env) {
            let code = crate::run::supervise(&program, &args.command[1..], &prepared.env, &why)?;
            drop(prepared);
            return Ok(code);
        }
        command = Command::new(&program);
        command
            .args(&args.command[1..])
            .env_clear()
            .envs(&prepared.env);
        // Go and static programs the command starts get the supervisor.
        if crate::run::handoff_allowed(&prepared.env) {
            if let Ok(exe) = std::env::current_exe() {
                command.env(crate::run::SUPERVISE_EXE_ENV, exe);
            }
        }
    } else {
        let local: BTreeMap<String, String> = std::env::vars().collect();
        let (env, unset) = prepared.diff(&local);
        let path = crate::state::dir()?.join(format!(
            "test-{}-{}.json",
            std::process::id(),
            session::random_token()?
        ));
        crate::state::write_private(&path, &json!({"env": env, "unset": unset}).to_string())?;
        let file = SessionFile(path);
        let exe =
            std::env::current_exe().map_err(|e| Error::Io(format!("locating remora: {e}")))?;
        let runner = format!("{} runner", exe.display());
        let argv = if mode == Mode::Go {
            go_command(&args.command, &runner)
        } else {
            args.command.clone()
        };
        command = Command::new(&argv[0]);
        command.args(&argv[1..]).env(SESSION_FILE_ENV, &file.0);
        if mode == Mode::Cargo {
            for triple in cargo_triples(&args.command)? {
                command.env(cargo_runner_var(&triple), &runner);
            }
        }
        _file = Some(file);
    }
    // Caught before the spawn: a signal sent as soon as the command runs
    // must not kill remora first. Handlers (not a blocked mask) so the
    // command starts with the default dispositions.
    let child_pid = forward_signals();
    let mut child = command.spawn().map_err(|source| Error::Exec {
        program: program.clone(),
        source,
    })?;
    if let Some(pid) = child_pid {
        let _ = pid.set(child.id());
    }
    let status = child.wait().map_err(|source| Error::Exec {
        program: program.clone(),
        source,
    })?;
    // The lifeline (in `prepared`) closes when we return: the session ends.
    drop(prepared);
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Ctrl-C and friends must not kill `remora test` before its test command
/// has ended (the session file would stay behind): catch them and forward
/// them to the command, whose pid is set in the returned cell once it runs
/// (a signal that comes earlier waits for it). The terminal already sends
/// Ctrl-C to the command too; a second SIGINT changes nothing for it.
pub fn forward_signals() -> Option<std::sync::Arc<std::sync::OnceLock<u32>>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT]).ok()?;
    let child = std::sync::Arc::new(std::sync::OnceLock::new());
    let known = child.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let pid = loop {
                match known.get() {
                    Some(pid) => break *pid,
                    None => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            };
            if let Ok(signal) = nix::sys::signal::Signal::try_from(signal) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
            }
        }
    });
    Some(child)
}

/// The environment the runner gives a test binary: its own (Cargo's) minus
/// the session's `unset`, plus the session's `env`.
pub fn runner_env(
    own: BTreeMap<String, String>,
    session: &serde_json::Value,
) -> Result<BTreeMap<String, String>> {
    let bad = || {
        Error::Io(format!(
            "the session file (${SESSION_FILE_ENV}) is malformed"
        ))
    };
    let mut env = own;
    for name in session["unset"].as_array().ok_or_else(bad)? {
        env.remove(name.as_str().ok_or_else(bad)?);
    }
    for (name, value) in session["env"].as_object().ok_or_else(bad)? {
        env.insert(name.clone(), value.as_str().ok_or_else(bad)?.to_string());
    }
    env.remove(SESSION_FILE_ENV);
    Ok(env)
}

/// `remora runner BINARY ARGS…` (hidden): exec the test binary in the session.
pub fn runner(args: RunnerArgs) -> Result<i32> {
    let path = std::env::var_os(SESSION_FILE_ENV).ok_or_else(|| {
        Error::Io(format!(
            "`remora runner` runs test binaries for `remora test` and needs ${SESSION_FILE_ENV}; \
             run your tests with `remora test --target … -- cargo test`"
        ))
    })?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Io(format!(
            "reading the session file {}: {e} (has `remora test` ended?)",
            Path::new(&path).display()
        ))
    })?;
    let session: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Io(format!("the session file is malformed: {e}")))?;
    let env = runner_env(std::env::vars().collect(), &session)?;
    let program = args.command[0].clone();
    // Go test binaries (and static ones) make their syscalls without libc.
    if let Some(why) = crate::run::wants_supervisor(&program, &env) {
        return crate::run::supervise(&program, &args.command[1..], &env, &why);
    }
    let err = Command::new(&program)
        .args(&args.command[1..])
        .env_clear()
        .envs(&env)
        .exec();
    Err(Error::Exec {
        program,
        source: err,
    })
}

#[cfg(test)]
mod tests;
