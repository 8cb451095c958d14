//! Running helper programs (`ip`, `nsenter`, ...) and turning their failures into [`Error`]s.

use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// `program arg arg ...`, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut shown = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

/// Runs `cmd` to completion with stdin closed; a non-zero exit is an error carrying stderr.
pub(crate) fn run(what: &str, cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            what: what.to_owned(),
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::CommandFailed {
            what: what.to_owned(),
            command: describe(cmd),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// Runs `ip ARGS` (iproute2) and requires success.
pub(crate) fn ip(what: &str, args: &[&str]) -> Result<Output> {
    run(what, Command::new("ip").args(args))
}
