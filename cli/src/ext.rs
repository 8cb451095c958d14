//! `remora ext --target T [-f CONFIG] [--json]`: prepare a session for a
//! process someone else starts (an IDE's debugger), print the environment
//! that process needs, and exit.
//!
//! The session (intproxy + agent) runs on in the background: it waits
//! `--wait-timeout` seconds for the first process to connect, and ends when
//! the last one has left, as for `remora run`. The target's environment is
//! fetched here and merged into the printed `env` (the layer does not fetch
//! it itself), so a debugger that only sets variables is enough.
//!
//! The JSON contract (one object per line, every line with `"version": 1`)
//! is documented in `docs/ide.md`; [`Line`] is its single source.

use crate::args::ExtArgs;
use crate::error::Error;
use crate::session::{self, Lifetime, Log, Reporter};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

/// Version of the JSON lines `remora ext --json` prints.
pub const JSON_VERSION: u32 = 1;

/// One line of `remora ext --json` output.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// What remora is doing now.
    Progress { message: String },
    /// The session is ready: give `env` to the debuggee, remove `unset`.
    Ready {
        target: String,
        env: BTreeMap<String, String>,
        unset: Vec<String>,
        intproxy: String,
        wait_seconds: u64,
    },
    /// Nothing was started (or what was, was stopped).
    Error {
        message: String,
        help: Option<String>,
    },
}

impl Line {
    pub fn to_json(&self) -> Value {
        match self {
            Line::Progress { message } => {
                json!({"version": JSON_VERSION, "type": "progress", "message": message})
            }
            Line::Ready {
                target,
                env,
                unset,
                intproxy,
                wait_seconds,
            } => json!({
                "version": JSON_VERSION,
                "type": "ready",
                "target": target,
                "env": env,
                "unset": unset,
                "intproxy": intproxy,
                "wait_seconds": wait_seconds,
            }),
            Line::Error { message, help } => json!({
                "version": JSON_VERSION,
                "type": "error",
                "message": message,
                "help": help,
            }),
        }
    }

    /// The error line for `error`, with its help text.
    pub fn from_error(error: &Error) -> Line {
        let help = miette::Diagnostic::help(error).map(|h| h.to_string());
        Line::Error {
            message: error.to_string(),
            help,
        }
    }
}

/// Prints progress as JSON lines on stdout.
#[derive(Debug)]
struct JsonReporter;

impl Reporter for JsonReporter {
    fn step(&mut self, message: &str) {
        emit(&Line::Progress {
            message: message.into(),
        });
    }
}

fn emit(line: &Line) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.to_json());
    let _ = out.flush();
}

/// The intproxy's log when `--log` is not given: kept only to explain a
/// failure, unlinked once the session is ready (the intproxy keeps writing
/// to the unlinked file, so nothing is left behind).
#[derive(Debug)]
struct TempLog(Option<std::path::PathBuf>);

impl TempLog {
    fn new(args: &ExtArgs) -> crate::error::Result<TempLog> {
        if args.log.is_some() {
            return Ok(TempLog(None));
        }
        let name = format!("ext-{}.log", std::process::id());
        Ok(TempLog(Some(crate::state::dir()?.join(name))))
    }

    /// The log's last lines (the agent's own words), if any.
    fn tail(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.0.as_ref()?).ok()?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        (!lines.is_empty()).then(|| lines[lines.len().saturating_sub(5)..].join("\n"))
    }

    /// The error with the log's last lines.
    fn explain(&self, error: crate::error::Error) -> crate::error::Error {
        match self.tail() {
            Some(tail) => crate::error::Error::Io(format!("{error}\n{tail}")),
            None => error,
        }
    }
}

impl Drop for TempLog {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub fn run(args: ExtArgs) -> crate::error::Result<i32> {
    let temp_log = TempLog::new(&args)?;
    let lifetime = Lifetime {
        first_connect: Duration::from_secs(args.wait_timeout),
        setup_session: true,
        log: match (&args.log, &temp_log.0) {
            (Some(path), _) | (None, Some(path)) => Log::File(path.clone()),
            (None, None) => Log::Null,
        },
    };
    let program = args.program.as_deref().unwrap_or("remora ext");
    if !args.json {
        let mut progress = crate::progress::Progress::new();
        let prepared = session::prepare(&args.session, program, &lifetime, &mut progress);
        progress.finish();
        let local: BTreeMap<String, String> = std::env::vars().collect();
        let (env, unset) = prepared.map_err(|e| temp_log.explain(e))?.diff(&local);
        print!("{}", shell_exports(&env, &unset));
        return Ok(0);
    }
    match session::prepare(&args.session, program, &lifetime, &mut JsonReporter) {
        Ok(prepared) => {
            let local: BTreeMap<String, String> = std::env::vars().collect();
            let (env, unset) = prepared.diff(&local);
            emit(&Line::Ready {
                target: prepared.target.clone(),
                env,
                unset,
                intproxy: prepared.intproxy.to_string(),
                wait_seconds: args.wait_timeout,
            });
            // Dropping the lifeline ends the set-up session: the intproxy now
            // waits for the debuggee.
            drop(prepared);
            Ok(0)
        }
        Err(e) => {
            let mut line = Line::from_error(&e);
            if let (Line::Error { message, .. }, Some(tail)) = (&mut line, temp_log.tail()) {
                message.push('\n');
                message.push_str(&tail);
            }
            emit(&line);
            Ok(1)
        }
    }
}

/// `export K='v'` / `unset K` lines for a POSIX shell.
pub fn shell_exports(env: &BTreeMap<String, String>, unset: &[String]) -> String {
    let mut out = String::new();
    for name in unset {
        out.push_str(&format!("unset {name}\n"));
    }
    for (name, value) in env {
        out.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    out
}

/// Single-quote `value` for a POSIX shell.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests;
