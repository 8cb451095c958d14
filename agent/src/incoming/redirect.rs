//! The netfilter seam: the [`Redirector`] trait that sends a port of the
//! target to one of the agent's listeners, the choice of backend, and the
//! **netfilter thread** that runs every redirector operation inside the
//! target's network namespace.
//!
//! Netfilter tools are separate programs (`nft`, `iptables`); a process
//! inherits the network namespace of the thread that spawns it, so the
//! netfilter thread `setns`-es once and every tool it starts works on the
//! target's rules, while the tool binaries still come from the agent's own
//! filesystem.

use crate::error::{Error, Result};
use crate::incoming::iptables::Iptables;
use crate::incoming::nft::Nftables;
use crate::namespace::TargetNamespaces;
use remora_protocol::incoming::RemotePort;
use std::io;
use std::process::{Command, Stdio};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Redirector operations waiting for the netfilter thread.
pub const REDIRECT_COMMAND_CAPACITY: usize = 16;

/// A port of one of the agent's own listeners inside the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerPort(pub u16);

impl std::fmt::Display for ListenerPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a netfilter operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedirectError {
    #[error(
        "neither nft nor iptables is installed next to the agent: install nftables (or \
         iptables) in the agent's image"
    )]
    NoBackend,

    #[error("cannot run {tool}: {reason}")]
    Spawn { tool: String, reason: String },

    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },

    #[error("{tool} did not answer within {secs}s")]
    Timeout { tool: &'static str, secs: u64 },

    #[error("{tool} exited unexpectedly; its rules are gone")]
    Exited { tool: &'static str },

    #[error("the agent's netfilter thread is gone")]
    Gone,
}

impl RedirectError {
    pub(crate) fn spawn(tool: impl Into<String>, e: &io::Error) -> Self {
        RedirectError::Spawn {
            tool: tool.into(),
            reason: e.to_string(),
        }
    }
}

/// Sends TCP traffic for ports of the target to the agent's listeners, and
/// takes it back.
///
/// Implementations run on the netfilter thread, inside the target's network
/// namespace, and may block (they run external tools).
///
/// # Guarantees
/// * `add` is all or nothing: when it fails, no rule of that call stays.
/// * Every rule an implementation installs disappears after `remove_all`,
///   when the implementation is dropped, and when the agent process dies,
///   even by `SIGKILL` (see the backends for how).
/// * Traffic of sockets marked with [`super::REMORA_MARK`] is never
///   redirected.
pub trait Redirector: Send + std::fmt::Debug {
    /// Redirect TCP traffic for `port` (from other hosts and from the target
    /// itself) to the agent's listener on port `to`.
    ///
    /// # Errors
    /// The tool's error; nothing was changed.
    fn add(&mut self, port: RemotePort, to: ListenerPort) -> Result<(), RedirectError>;

    /// Stop redirecting `port`. Removing a port that is not redirected is a no-op.
    ///
    /// # Errors
    /// The tool's error.
    fn remove(&mut self, port: RemotePort) -> Result<(), RedirectError>;

    /// Remove every rule, table and chain this redirector created, and any
    /// helper process it runs. Idempotent.
    ///
    /// # Errors
    /// The first error; the remaining cleanup steps are still attempted.
    fn remove_all(&mut self) -> Result<(), RedirectError>;

    /// Remove what agents that no longer run left behind (tables or chains
    /// named after a pid for which `is_alive` is false). Returns their names.
    ///
    /// # Errors
    /// The tool's error.
    fn remove_stale(
        &mut self,
        is_alive: &dyn Fn(u32) -> bool,
    ) -> Result<Vec<String>, RedirectError>;
}

/// Which netfilter front end the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NetfilterBackend {
    /// nftables when `nft` is installed, iptables otherwise.
    #[default]
    Auto,
    /// `nft`, in a table `inet remora_<agent pid>` owned by the agent.
    Nftables,
    /// `iptables`/`ip6tables` (nft or legacy), in chains `REMORA_<agent pid>`.
    Iptables,
}

/// Whether `program` can be run (`<program> --version` succeeds).
pub(crate) fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The redirector for `backend`, named after this agent's pid. Runs tools,
/// so call it on the netfilter thread.
///
/// # Errors
/// [`RedirectError::NoBackend`] when the tools are missing.
pub fn netfilter(backend: NetfilterBackend) -> Result<Box<dyn Redirector>, RedirectError> {
    let pid = std::process::id();
    let nft = || Box::new(Nftables::new(pid)) as Box<dyn Redirector>;
    let iptables = || Iptables::detect(pid).map(|i| Box::new(i) as Box<dyn Redirector>);
    match backend {
        NetfilterBackend::Nftables => Ok(nft()),
        NetfilterBackend::Iptables => iptables(),
        NetfilterBackend::Auto if installed("nft") => Ok(nft()),
        NetfilterBackend::Auto => iptables(),
    }
}

/// Whether a process with this pid runs, in the agent's view of `/proc`.
pub fn pid_is_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Builds the redirector on the netfilter thread.
pub type RedirectorFactory =
    Box<dyn FnOnce() -> Result<Box<dyn Redirector>, RedirectError> + Send + 'static>;

type Reply<T> = oneshot::Sender<Result<T, RedirectError>>;

/// Work for the netfilter thread.
enum RedirectCommand {
    Add {
        port: RemotePort,
        to: ListenerPort,
        reply: Reply<()>,
    },
    Remove {
        port: RemotePort,
        reply: Reply<()>,
    },
    RemoveAll {
        reply: Reply<()>,
    },
    RemoveStale {
        reply: Reply<Vec<String>>,
    },
}

/// Handle to the netfilter thread. Cheap to clone; when every handle is
/// dropped the thread removes every rule and ends.
#[derive(Debug, Clone)]
pub struct RedirectApi {
    /// incoming task --operation--> netfilter thread
    cmd_tx: mpsc::Sender<RedirectCommand>,
}

impl std::fmt::Debug for RedirectCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedirectCommand::Add { port, to, .. } => write!(f, "Add({}, {to})", port.0),
            RedirectCommand::Remove { port, .. } => write!(f, "Remove({})", port.0),
            RedirectCommand::RemoveAll { .. } => f.write_str("RemoveAll"),
            RedirectCommand::RemoveStale { .. } => f.write_str("RemoveStale"),
        }
    }
}

impl RedirectApi {
    /// Start the netfilter thread and wait until it is inside the target's
    /// network namespace. The redirector itself is built by `factory` on
    /// first use (detecting the tools takes a process start or two).
    ///
    /// # Errors
    /// [`Error::NotPermitted`] and friends when it cannot enter.
    pub async fn start(ns: Arc<dyn TargetNamespaces>, factory: RedirectorFactory) -> Result<Self> {
        let (cmd_tx, cmd_rx) = mpsc::channel(REDIRECT_COMMAND_CAPACITY);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        std::thread::Builder::new()
            .name("remora-netfilter".into())
            .spawn(move || {
                if let Err(e) = ns.enter_net() {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                if ready_tx.send(Ok(())).is_ok() {
                    serve(cmd_rx, factory);
                }
            })
            .map_err(|source| Error::SpawnThread {
                what: "netfilter",
                source,
            })?;
        ready_rx
            .await
            .map_err(|_| Error::ThreadLost { what: "netfilter" })??;
        Ok(RedirectApi { cmd_tx })
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(Reply<T>) -> RedirectCommand,
    ) -> Result<T, RedirectError> {
        let (reply, reply_rx) = oneshot::channel();
        self.cmd_tx
            .send(command(reply))
            .await
            .map_err(|_| RedirectError::Gone)?;
        reply_rx.await.map_err(|_| RedirectError::Gone)?
    }

    /// [`Redirector::add`] on the netfilter thread.
    pub async fn add(&self, port: RemotePort, to: ListenerPort) -> Result<(), RedirectError> {
        self.call(|reply| RedirectCommand::Add { port, to, reply })
            .await
    }

    /// [`Redirector::remove`] on the netfilter thread.
    pub async fn remove(&self, port: RemotePort) -> Result<(), RedirectError> {
        self.call(|reply| RedirectCommand::Remove { port, reply })
            .await
    }

    /// [`Redirector::remove_all`] on the netfilter thread.
    pub async fn remove_all(&self) -> Result<(), RedirectError> {
        self.call(|reply| RedirectCommand::RemoveAll { reply })
            .await
    }

    /// [`Redirector::remove_stale`] on the netfilter thread, with
    /// [`pid_is_alive`].
    pub async fn remove_stale(&self) -> Result<Vec<String>, RedirectError> {
        self.call(|reply| RedirectCommand::RemoveStale { reply })
            .await
    }
}

/// The netfilter thread's loop: one operation at a time, in order.
fn serve(mut cmd_rx: mpsc::Receiver<RedirectCommand>, factory: RedirectorFactory) {
    let mut factory = Some(factory);
    let mut redirector: Option<Result<Box<dyn Redirector>, RedirectError>> = None;
    // Whether something may be installed since the last `remove_all`.
    let mut dirty = false;
    while let Some(command) = cmd_rx.blocking_recv() {
        tracing::debug!(?command, "netfilter operation");
        let current = redirector.get_or_insert_with(|| match factory.take() {
            Some(factory) => factory(),
            None => Err(RedirectError::Gone),
        });
        let current = match current {
            Ok(current) => current,
            Err(e) => {
                let e = e.clone();
                match command {
                    RedirectCommand::Add { reply, .. }
                    | RedirectCommand::Remove { reply, .. }
                    | RedirectCommand::RemoveAll { reply } => {
                        let _ = reply.send(Err(e));
                    }
                    RedirectCommand::RemoveStale { reply } => {
                        let _ = reply.send(Err(e));
                    }
                }
                continue;
            }
        };
        match command {
            RedirectCommand::Add { port, to, reply } => {
                dirty = true;
                let _ = reply.send(current.add(port, to));
            }
            RedirectCommand::Remove { port, reply } => {
                let _ = reply.send(current.remove(port));
            }
            RedirectCommand::RemoveAll { reply } => {
                let result = current.remove_all();
                dirty = result.is_err();
                let _ = reply.send(result);
            }
            RedirectCommand::RemoveStale { reply } => {
                let _ = reply.send(current.remove_stale(&pid_is_alive));
            }
        }
    }
    if dirty
        && let Some(Ok(mut last)) = redirector
        && let Err(e) = last.remove_all()
    {
        tracing::warn!(error = %e, "cannot remove the agent's netfilter rules");
    }
}
