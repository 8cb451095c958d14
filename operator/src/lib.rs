//! remora-operator: the shared-cluster brain. Every session of a target goes
//! through **one agent per target**, and the operator keeps the registry of
//! sessions and their incoming-traffic filters, refuses conflicts with a
//! clear error, and enforces policies.
//!
//! # Structure
//!
//! * [`server`]: the [`Operator`]: listener, handshake and authentication,
//!   one task per connection (a session, or a control connection for
//!   `remora session ls/kill`).
//! * [`relay`]: one session: the client's frames relayed to the session's
//!   own connection to its target's agent, with policies and the registry
//!   applied on the way.
//! * [`agents`]: one agent per target, started on first use, stopped after
//!   the last session left.
//! * [`platform`]: the [`Platform`] seam (where targets live, how agents
//!   start); [`platform::local`] runs `remora-agent` processes locally.
//! * [`registry`]: the filter registry and its conflict rules.
//! * [`sessions`]: the session table.
//! * [`policy`]: the policy file, its rules and its reloading.
//! * [`token`]: the operator's token and agent tokens.

pub mod agents;
pub mod args;
pub mod error;
pub mod platform;
pub mod policy;
pub mod registry;
pub mod relay;
pub mod server;
pub mod sessions;
pub mod token;

pub use args::Args;
pub use error::{Error, Result};
pub use platform::Platform;
pub use server::{Operator, OperatorConfig};

use std::io::Write;
use std::sync::Arc;

/// Environment variable holding the log filter (`tracing` env-filter syntax).
pub const LOG_ENV: &str = "REMORA_OPERATOR_LOG";

/// The line prefix announcing the listening address on stdout.
pub const LISTENING_PREFIX: &str = "REMORA_OPERATOR_LISTENING";

/// Log to stderr, filtered by [`LOG_ENV`] (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run the operator as the binary does: announce `REMORA_OPERATOR_LISTENING
/// <ip:port>` on stdout, serve until SIGTERM/SIGINT, then end every session
/// and stop every agent.
///
/// # Errors
/// A one-line, user-facing [`Error`].
pub async fn run(args: Args) -> Result<()> {
    let args::Command::Serve(serve) = args.command;
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| Error::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| Error::Signal {
        signal: "SIGINT",
        source,
    })?;
    let from_env = std::env::var(token::OPERATOR_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty());
    let generated = from_env.is_none();
    let token = token::operator_token(from_env, serve.token_file.as_deref())?;
    if generated && let Some(path) = &serve.token_file {
        tracing::info!(
            path = %path.display(),
            "a new operator token was written there; clients set {} to it",
            token::OPERATOR_TOKEN_ENV
        );
    }
    let policies = match &serve.policy {
        Some(path) => policy::PolicyStore::load(path)?,
        None => policy::PolicyStore::empty(),
    };
    let platform: Arc<dyn Platform> = match serve.platform {
        args::PlatformKind::Local => Arc::new(platform::local::LocalPlatform::new(
            platform::local::find_agent_bin(serve.agent_bin.as_deref())?,
        )),
    };
    let config = OperatorConfig {
        listen: serve.listen,
        token,
        policies,
    };
    let operator = Operator::bind(config, platform).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{LISTENING_PREFIX} {}", operator.local_addr())
            .and_then(|()| stdout.flush())
            .map_err(|source| Error::Announce { source })?;
    }
    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal, "operator stopping");
    operator
        .shutdown(&format!("the operator received {signal}"))
        .await;
    Ok(())
}
