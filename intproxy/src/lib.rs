//! The intproxy: one per `remora run`, between every layer of the run's
//! process tree and the agent (or operator).
//!
//! - [`agent_link`]: the one multiplexed connection to the agent, as an actor
//!   with a cheap [`agent_link::AgentApi`] handle.
//! - [`layer`]: accepts layer sessions (one per process), authenticates them,
//!   answers their requests in order.
//! - [`outgoing`]: interceptors. For a remote outgoing stream it opens the
//!   stream from the target first, then a local socket the layer connects the
//!   application's socket to; bytes then flow through real kernel sockets.
//! - [`incoming`]: the target's stolen or mirrored connections, and HTTP
//!   requests stolen by filter, delivered to the app's own local listener.
//!
//! # Lifetime
//! The intproxy lives exactly as long as the process tree it serves: it exits
//! when no layer connected within [`IntProxyConfig::first_connect_timeout`], or
//! when the last layer session has been gone for [`IntProxyConfig::linger`].
//! The first [`IntProxyConfig::setup_sessions`] sessions are the CLI's own
//! (`remora ext` fetching the environment, then exiting): they do not count
//! as the run's first process, so the wait for it starts over when they end.
//! Every layer connects from its constructor and keeps its connection for the
//! life of its process, so "no sessions" means "no process left". If the agent
//! goes away, layers keep being served: remote calls fail fast with
//! `Unavailable` and a one-line warning, local calls are unaffected.

pub mod agent_link;
pub mod error;
pub mod file_stream;
pub mod flow;
pub mod incoming;
pub mod layer;
pub mod outgoing;

pub use error::{Error, Result};

use remora_protocol::SessionToken;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Line printed on stdout once the intproxy accepts layers.
pub const READY_PREFIX: &str = "REMORA_INTPROXY_LISTENING";

/// A byte stream to the agent (or operator) that carries the framed remora
/// protocol: a TCP connection, or a port-forward WebSocket's payloads.
pub trait AgentStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AgentStream for T {}

/// What an [`AgentDialer`] returns.
pub type DialFuture = futures::future::BoxFuture<'static, std::io::Result<Box<dyn AgentStream>>>;

/// Opens a new [`AgentStream`] each time it is called.
pub type DialFn = dyn Fn() -> DialFuture + Send + Sync;

/// Reaches the agent through something else than a TCP address (a
/// Kubernetes port-forward): what it is, for messages, and how to open it.
#[derive(Clone)]
pub struct AgentDialer {
    /// Says where it leads (`pod P port N through port-forward`).
    pub describe: String,
    /// Opens the stream.
    pub dial: Arc<DialFn>,
}

impl std::fmt::Debug for AgentDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentDialer")
            .field("describe", &self.describe)
            .finish_non_exhaustive()
    }
}

/// Where the agent (or operator) is.
#[derive(Debug, Clone)]
pub enum AgentEndpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A stream opened by a dialer.
    Dial(AgentDialer),
}

impl From<SocketAddr> for AgentEndpoint {
    fn from(addr: SocketAddr) -> Self {
        AgentEndpoint::Tcp(addr)
    }
}

impl std::fmt::Display for AgentEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentEndpoint::Tcp(addr) => write!(f, "{addr}"),
            AgentEndpoint::Dial(dialer) => f.write_str(&dialer.describe),
        }
    }
}

/// How to run an intproxy.
#[derive(Debug, Clone)]
pub struct IntProxyConfig {
    /// The agent (or operator) to connect to.
    pub agent: AgentEndpoint,
    /// Token presented to the agent.
    pub agent_token: SessionToken,
    /// Token layers must present.
    pub layer_token: SessionToken,
    /// Who we are, for the agent's session list.
    pub identity: remora_protocol::ClientIdentity,
    /// Target name sent in the handshake.
    pub target: Option<String>,
    /// Where to accept layers (port 0 picks one).
    pub listen: SocketAddr,
    pub first_connect_timeout: Duration,
    pub linger: Duration,
    /// How many of the first sessions are set-up sessions that do not count
    /// as the first process (0 for `remora run`, whose own session lives on
    /// in the command; 1 for `remora ext`, which exits).
    pub setup_sessions: usize,
    /// Ask the operator to take ports over from sessions holding conflicting
    /// filters (`--override-filter`); an agent ignores the wish.
    pub override_filters: bool,
    /// Told each time the last layer session has left and the linger begins
    /// (the CLI then lets go of the user's terminal or pipe).
    pub on_idle: Option<std::sync::mpsc::SyncSender<()>>,
}

/// A bound, connected intproxy ready to [`IntProxy::run`].
#[derive(Debug)]
pub struct IntProxy {
    listener: TcpListener,
    agent: agent_link::AgentApi,
    config: Arc<IntProxyConfig>,
}

impl IntProxy {
    /// Connect to the agent (handshake included) and bind the layer listener.
    pub async fn start(config: IntProxyConfig) -> Result<IntProxy> {
        let agent = agent_link::connect(&config).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        Ok(IntProxy {
            listener,
            agent,
            config: Arc::new(config),
        })
    }

    /// Where layers connect.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|source| Error::Bind {
            addr: self.config.listen,
            source,
        })
    }

    /// Serve layers until the process tree is gone.
    pub async fn run(self) -> Result<()> {
        layer::serve(self.listener, self.agent, self.config).await
    }
}
