//! remora-agent: runs privileged next to a target process and performs the
//! operations remora clients send it (outgoing connections, DNS, files,
//! environment, hostname) *inside the target's namespaces*.
//!
//! # Structure
//!
//! * [`server`]: the [`Agent`]: listener, lifetime (idle timeout, linger
//!   after the last client, target exit, shutdown), one task per client.
//! * `client`: one client: handshake ([`handshake`]), then its frames are
//!   dispatched (each request a task, each outgoing connection a task, see
//!   [`outgoing`]) and a writer task sends replies through a bounded queue.
//! * [`net`]: the **network thread**, which `setns`-es into the target's
//!   network namespace once and owns a current-thread runtime. It creates and
//!   connects TCP/UDP sockets and runs DNS queries; connected sockets go back
//!   to the main runtime (a socket keeps the namespace it was created in).
//! * [`pool`]: the **namespace workers**, threads that `unshare(CLONE_FS)` and
//!   then enter the target's mount, UTS and network namespaces. All blocking
//!   file I/O ([`fs`]), hosts/resolv.conf reads ([`dns`]), unix socket
//!   connects and `gethostname` run there, so paths and symlinks (even
//!   absolute ones) resolve exactly as inside the target.
//! * [`namespace`]: the [`TargetNamespaces`] seam with the real
//!   `/proc/<PID>/ns` implementation.
//! * [`broker`]: the local fast path: real file and socket descriptors
//!   opened inside the target, handed to layers on this machine with
//!   `SCM_RIGHTS` (only with `--fd-broker`).
//! * [`incoming`]: incoming traffic (steal, mirror): the incoming task, its
//!   listeners inside the target, and the netfilter rules that send the
//!   subscribed ports there, run by the **netfilter thread** inside the
//!   target's network namespace and removed even when the agent is killed.
//!
//! # Unsafe code
//! None. The workspace forbids `unsafe`, and the agent keeps it that way:
//! `nix` offers safe wrappers for `setns`, `unshare`, `fdopendir`, `access`
//! and the socket calls the namespace module needs.

pub mod args;
pub mod broker;
mod client;
pub mod container;
pub mod dns;
pub mod env;
pub mod error;
mod flow;
pub mod fs;
pub mod handshake;
pub mod incoming;
pub mod namespace;
pub mod net;
pub mod outgoing;
pub mod pool;
mod pump;
pub mod server;
pub mod session;
pub mod target;

pub use args::Args;
pub use error::{Error, Result};
pub use namespace::{OwnNamespaces, ProcessNamespaces, TargetNamespaces};
pub use server::{Agent, AgentConfig, ExitReason, ShutdownHandle};
pub use target::TargetPid;

use remora_protocol::SessionToken;
use std::io::Write;
use std::time::Duration;

/// Environment variable holding the session token clients must present.
pub const TOKEN_ENV: &str = "REMORA_AGENT_TOKEN";

/// Environment variable holding the log filter (`tracing` env-filter syntax).
pub const LOG_ENV: &str = "REMORA_AGENT_LOG";

/// The line prefix announcing the listening address on stdout.
pub const LISTENING_PREFIX: &str = "REMORA_AGENT_LISTENING";

/// Log to stderr, filtered by [`LOG_ENV`] (default `info`). Does nothing when
/// a subscriber is already installed.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The main process of container `id`, as [`container::Lookup::find_pid`]
/// finds it with the runtime sockets of `args`.
async fn container_pid(args: &Args, id: &str) -> Result<u32> {
    let lookup = container::Lookup {
        containerd: args.containerd_socket.clone(),
        crio: args.crio_socket.clone(),
        docker: args.docker_socket.clone(),
        ..container::Lookup::default()
    };
    let (pid, _) = lookup.find_pid(id).await.map_err(Error::Container)?;
    Ok(pid)
}

/// Run the agent as the binary does: token from [`TOKEN_ENV`], announce
/// `REMORA_AGENT_LISTENING <ip:port>` on stdout, serve until idle, until every
/// client left, until the target exits, or until SIGTERM/SIGINT. Every
/// incoming traffic rule is removed before it returns.
///
/// # Errors
/// A one-line, user-facing [`Error`]; [`Error::TargetGone`] when the target
/// exited while the agent served it.
pub async fn run(args: Args) -> Result<()> {
    let token = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|token| !token.is_empty())
        .ok_or(Error::MissingToken)?;
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| Error::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| Error::Signal {
        signal: "SIGINT",
        source,
    })?;

    let target = match (args.target, &args.container_id) {
        _ if args.targetless => TargetPid(std::process::id()),
        (Some(target), _) => target,
        (None, Some(id)) => TargetPid(container_pid(&args, id).await?),
        (None, None) => {
            return Err(Error::Container(container::ContainerError::InvalidId(
                "(none: give --target or --container-id)".into(),
            )));
        }
    };
    let mut config = AgentConfig::new(target, SessionToken(token));
    config.listen = args.listen;
    config.netfilter = args.netfilter;
    config.idle_timeout =
        (args.idle_timeout_secs > 0).then(|| Duration::from_secs(args.idle_timeout_secs));
    config.fd_broker = args.fd_broker.map(|path| {
        let token = std::env::var(broker::BROKER_TOKEN_ENV).unwrap_or_default();
        (path, SessionToken(token))
    });
    let agent = if args.targetless {
        Agent::bind_with(config, std::sync::Arc::new(OwnNamespaces)).await?
    } else {
        Agent::bind(config).await?
    };
    announce(agent.local_addr())?;

    let shutdown = agent.shutdown_handle();
    let wait = agent.wait();
    tokio::pin!(wait);
    let outcome = loop {
        tokio::select! {
            outcome = &mut wait => break outcome,
            _ = sigterm.recv() => shutdown.shutdown("the agent received SIGTERM"),
            _ = sigint.recv() => shutdown.shutdown("the agent received SIGINT"),
        }
    };
    let reason = outcome?;
    tracing::info!(?reason, "agent stopped");
    Ok(())
}

fn announce(addr: std::net::SocketAddr) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{LISTENING_PREFIX} {addr}")
        .and_then(|()| stdout.flush())
        .map_err(|source| Error::Announce { source })
}
