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
//! * [`access`]: who may connect ([`access::Access`]: the shared token, or
//!   Kubernetes reviews) and where the session table is mirrored.
//! * [`branches`]: database branches, their state file and TTL reaper.

pub mod access;
pub mod agents;
pub mod args;
pub mod branches;
pub mod error;
pub mod platform;
pub mod policy;
pub mod queue_splits;
pub mod registry;
pub mod relay;
pub mod server;
pub mod sessions;
pub mod token;

pub use args::Args;
pub use error::{Error, Result};
pub use platform::Platform;
pub use server::{Connections, Operator, OperatorConfig};

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
    if serve.api_listen.is_some() {
        return Err(Error::Unsupported(
            "--api-listen serves the aggregated API of the operator in a cluster \
             (--platform kubernetes)"
                .into(),
        ));
    }
    let mut signals = Signals::install()?;
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
        args::PlatformKind::Kubernetes => {
            return Err(Error::Unsupported(
                "--platform kubernetes is served by the remora-operator binary of crate \
                 remora-operator-kube (this library has no Kubernetes client)"
                    .into(),
            ));
        }
    };
    let config = OperatorConfig {
        listen: serve.listen,
        token,
        policies,
        state_dir: serve.state_dir.clone(),
        branch_store: None,
        branch_pods: None,
        pg_bindirs: serve.pg_bindir.clone(),
        db_settings: branches::settings::DbSettings::load(serve.db_config.as_deref())?,
        access: None,
        observer: None,
        queue_splitter: None,
    };
    let operator = Operator::bind(config, platform).await?;
    announce(&operator)?;
    let signal = signals.wait().await;
    tracing::info!(signal, "operator stopping");
    operator
        .shutdown(&format!("the operator received {signal}"))
        .await;
    Ok(())
}

/// Print `REMORA_OPERATOR_LISTENING <ip:port>` on stdout.
///
/// # Errors
/// [`Error::Announce`].
pub fn announce(operator: &Operator) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{LISTENING_PREFIX} {}", operator.local_addr())
        .and_then(|()| stdout.flush())
        .map_err(|source| Error::Announce { source })
}

/// SIGTERM and SIGINT, installed before the operator starts serving.
#[derive(Debug)]
pub struct Signals {
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
}

impl Signals {
    /// Install the handlers.
    ///
    /// # Errors
    /// [`Error::Signal`].
    pub fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            sigterm: signal(SignalKind::terminate()).map_err(|source| Error::Signal {
                signal: "SIGTERM",
                source,
            })?,
            sigint: signal(SignalKind::interrupt()).map_err(|source| Error::Signal {
                signal: "SIGINT",
                source,
            })?,
        })
    }

    /// Wait for either; its name.
    pub async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.sigterm.recv() => "SIGTERM",
            _ = self.sigint.recv() => "SIGINT",
        }
    }
}
