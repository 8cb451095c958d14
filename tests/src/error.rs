//! The crate's error type: every harness failure says what it was doing and what to try.

use std::{io, path::PathBuf, process::ExitStatus, time::Duration};

/// Everything the harness can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A helper program could not be started at all.
    #[error("{what}: could not run `{program}`: {source} (is it installed? run scripts/setup.sh)")]
    Spawn {
        what: String,
        program: String,
        #[source]
        source: io::Error,
    },
    /// A helper program ran and reported failure.
    #[error("{what}: `{command}` failed ({status}): {stderr}")]
    CommandFailed {
        what: String,
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// A file system operation on one of the harness's paths failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A system call (setns, kill, flock) failed.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    /// The [`PodSpec`](crate::PodSpec) cannot be realised.
    #[error("invalid pod spec: {0}")]
    InvalidSpec(String),
    /// Every /30 of the pool is leased (or collides with a host address).
    #[error(
        "no free /30 left in {pool} (leases live in {dir}; stale ones are swept by Sandbox::new)"
    )]
    AddressPoolExhausted { pool: &'static str, dir: PathBuf },
    /// A condition polled with a deadline never became true.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    /// The pod's pause process died or never reported ready.
    #[error("pod {pod}: pause process failed to start: {detail}")]
    PauseFailed { pod: String, detail: String },
    /// The pod (or its sandbox) was already torn down.
    #[error("pod {pod} was already torn down (is its Sandbox still alive?)")]
    TornDown { pod: String },
    /// A workspace binary is missing from the target directory.
    #[error("`{name}` not found (looked in {searched}); build it first: `cargo build --workspace`")]
    BinaryNotFound { name: String, searched: String },
    /// Explicit teardown could not remove everything; the next `Sandbox::new` retries.
    #[error("teardown of {what} left things behind: {details}")]
    Teardown { what: String, details: String },
}

/// `Result` with the harness [`Error`] as default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            what: what.into(),
            source,
        }
    }
}
