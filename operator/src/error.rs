//! Errors of the operator, each saying what failed, why, and what to do next.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can stop the operator or refuse one of its sessions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source} (is another operator running there?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The target string names nothing this platform can serve.
    #[error("target {target}: {reason}")]
    Target { target: String, reason: String },
    /// The platform could not start an agent for a target.
    #[error("the agent for {target} did not start: {reason}")]
    AgentStart { target: String, reason: String },
    /// The target's agent runs but does not accept the operator's connection.
    #[error("cannot reach the agent of {target} at {addr}: {reason}")]
    AgentConnect {
        target: String,
        addr: SocketAddr,
        reason: String,
    },
    /// The policy file cannot be read or is invalid.
    #[error("policy file {path}: {reason}")]
    Policy { path: PathBuf, reason: String },
    /// The database-branch settings (`--db-config`) cannot be read or are invalid.
    #[error("db config {path}: {reason}")]
    DbConfig { path: PathBuf, reason: String },
    /// The database branches a previous operator left cannot be read.
    #[error("database branches left by a previous operator: {reason}")]
    BranchStore { reason: String },
    /// No token could be set up.
    #[error("operator token: {reason}")]
    Token { reason: String },
    /// A signal handler could not be installed.
    #[error("cannot handle {signal}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The ready line could not be written.
    #[error("cannot announce the listening address on stdout")]
    Announce {
        #[source]
        source: std::io::Error,
    },
    /// This build cannot serve the platform asked for.
    #[error("{0}")]
    Unsupported(String),
    /// The agent binary is nowhere to be found.
    #[error(
        "cannot find remora-agent (looked in {looked}); pass --agent-bin or set REMORA_AGENT_BIN"
    )]
    MissingAgent { looked: String },
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
