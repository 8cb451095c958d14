//! The intproxy's error type.

use std::net::SocketAddr;

/// Why the intproxy could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the agent at {addr}: {source}")]
    AgentConnect {
        /// The address, or what the dialer reaches.
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("handshake with the agent at {addr} failed: {reason}")]
    Handshake { addr: String, reason: String },
    #[error(
        "the agent (or operator) refused the session: {reason} (server {server_version}, protocol {server_protocol}; this remora speaks {ours})"
    )]
    Rejected {
        reason: String,
        server_version: String,
        server_protocol: String,
        ours: String,
    },
    #[error("cannot listen for layers on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
