//! The agent's error type: everything that stops the agent or one of its parts
//! from starting. Per-request failures are not errors of the agent; they travel
//! to the client as [`remora_protocol::RemoteError`].

use crate::target::TargetPid;
use std::net::SocketAddr;

/// Result of the agent's own operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the agent could not start, or stopped.
///
/// Every message is a single line that says what failed, why, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("target {target} not found: no such process (is the workload running?)")]
    TargetNotFound { target: TargetPid },

    /// `EPERM` or `EACCES` while opening or entering the target's namespaces.
    #[error(
        "cannot enter the namespaces of {target}: operation not permitted (the agent needs \
         root, or CAP_SYS_ADMIN + CAP_NET_ADMIN + CAP_SYS_PTRACE)"
    )]
    NotPermitted { target: TargetPid },

    #[error("cannot enter the {kind} namespace of {target}: {source}")]
    EnterNamespace {
        target: String,
        kind: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot inspect {target}: {source}")]
    InspectTarget {
        target: TargetPid,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "REMORA_AGENT_TOKEN is not set: the agent refuses to start without a session token \
         (the remora CLI sets it when it spawns the agent)"
    )]
    MissingToken,

    /// The Kubernetes container given by id was not found on this node.
    #[error(transparent)]
    Container(crate::container::ContainerError),

    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot start the {what} thread: {source}")]
    SpawnThread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("the {what} thread stopped before it was ready")]
    ThreadLost { what: &'static str },

    #[error("cannot build the runtime of the {what} thread: {source}")]
    Runtime {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot announce the listening address on stdout: {source}")]
    Announce {
        #[source]
        source: std::io::Error,
    },

    #[error("target {target} exited; the agent stops with it")]
    TargetGone { target: String },

    #[error("the agent's main task failed: {reason}")]
    Internal { reason: String },
}
