//! The agent as a whole: binds the listener, starts the namespace threads,
//! accepts clients, and decides when to stop (idle, everyone left, target
//! gone, or asked to).

use crate::client::{self, AgentContext};
use crate::dns::DnsApi;
use crate::error::{Error, Result};
use crate::incoming::{IncomingApi, IncomingSettings, NetfilterBackend, RedirectApi, netfilter};
use crate::namespace::{ProcessNamespaces, TargetNamespaces};
use crate::net::NetApi;
use crate::pool::{NsPool, POOL_WORKERS};
use crate::session::{SessionCount, SessionRegistry};
use crate::target::TargetPid;
use remora_protocol::SessionToken;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the agent waits for a first client by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the agent stays up after its last client left, for a reconnect.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(1);

/// How often the agent checks that its target still runs.
pub const TARGET_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long clients get to hear `Closing` when the agent stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How long incoming connections already inside the agent (requests a
/// session took, requests on their way to the target's service) get to
/// finish when the agent stops, after its redirects are gone and before its
/// clients hear `Closing`. Kubernetes gives a pod 30 s after SIGTERM by
/// default; the test cluster gives 2 s.
pub const INCOMING_DRAIN: Duration = Duration::from_secs(1);

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub target: TargetPid,
    pub listen: SocketAddr,
    pub token: SessionToken,
    /// Stop when no client connected within this time (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Stop this long after the last client left (`None`: never).
    pub linger: Option<Duration>,
    /// How often to check that the target still runs.
    pub target_poll: Duration,
    /// Which netfilter tools redirect incoming traffic.
    pub netfilter: NetfilterBackend,
    /// Serve the local fast path ([`crate::broker`]) on this unix socket,
    /// to layers presenting this token.
    pub fd_broker: Option<(std::path::PathBuf, SessionToken)>,
}

impl AgentConfig {
    /// The defaults of the `remora-agent` binary, listening on 127.0.0.1 on
    /// a free port.
    pub fn new(target: TargetPid, token: SessionToken) -> Self {
        AgentConfig {
            target,
            listen: (Ipv4Addr::LOCALHOST, 0).into(),
            token,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            linger: Some(DEFAULT_LINGER),
            target_poll: TARGET_POLL_INTERVAL,
            netfilter: NetfilterBackend::Auto,
            fd_broker: None,
        }
    }
}

/// Why a running agent stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// No client connected within the idle timeout.
    IdleTimeout,
    /// Every client left and none came back within the linger time.
    ClientsLeft,
    /// [`ShutdownHandle::shutdown`] was called (e.g. on SIGTERM).
    Shutdown,
}

/// Asks a running agent to stop; every client is told `reason`.
///
/// Stopping goes in an order that loses no incoming request: the redirects
/// go first (new connections reach the target's own service), connections
/// already inside the agent get [`INCOMING_DRAIN`] to finish while their
/// sessions are still connected, and only then do clients hear `Closing`.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    /// Cancelled when the agent is asked to stop.
    requested: CancellationToken,
    /// Cancelled once incoming traffic is drained: ends every client.
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl ShutdownHandle {
    fn new() -> Self {
        ShutdownHandle {
            requested: CancellationToken::new(),
            token: CancellationToken::new(),
            reason: Arc::default(),
        }
    }

    /// Stop the agent. The first reason given is the one clients hear.
    pub fn shutdown(&self, reason: impl Into<String>) {
        self.set_reason(reason);
        self.requested.cancel();
    }

    fn set_reason(&self, reason: impl Into<String>) {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| reason.into());
    }

    /// End every client now (the last step of stopping).
    fn close(&self, reason: impl Into<String>) {
        self.set_reason(reason);
        self.requested.cancel();
        self.token.cancel();
    }

    /// Cancelled when the clients are to be closed (after the drain).
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why the agent is stopping.
    pub(crate) fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "the agent is shutting down".to_owned())
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    local_addr: SocketAddr,
    shutdown: ShutdownHandle,
    task: JoinHandle<Result<ExitReason>>,
    /// The local fast path, removed when the agent stops.
    _broker: Option<crate::broker::Broker>,
}

impl Agent {
    /// Enter the namespaces of `config.target`, bind the listener and start
    /// serving in the background.
    ///
    /// # Errors
    /// [`Error::TargetNotFound`] when the target does not run,
    /// [`Error::NotPermitted`] without the privileges to enter it,
    /// [`Error::Bind`] when the address is taken.
    pub async fn bind(config: AgentConfig) -> Result<Agent> {
        let target = config.target;
        let ns = tokio::task::spawn_blocking(move || ProcessNamespaces::open(target))
            .await
            .map_err(|e| Error::Internal {
                reason: e.to_string(),
            })??;
        Self::bind_with(config, Arc::new(ns)).await
    }

    /// [`Agent::bind`] with any implementation of the namespaces (tests).
    pub async fn bind_with(config: AgentConfig, ns: Arc<dyn TargetNamespaces>) -> Result<Agent> {
        let pool = NsPool::start(ns.clone(), POOL_WORKERS).await?;
        let net = NetApi::start(ns.clone()).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let broker = match &config.fd_broker {
            Some((path, token)) => {
                match crate::broker::Broker::start(path, token.clone(), ns.clone()) {
                    Ok(broker) => Some(broker),
                    Err(e) => {
                        // The proxied path still works: the layer falls back.
                        tracing::warn!(path = %path.display(), error = %e, "no local fast path");
                        None
                    }
                }
            }
            None => None,
        };
        let shutdown = ShutdownHandle::new();
        let backend = config.netfilter;
        let redirect = RedirectApi::start(ns.clone(), Box::new(move || netfilter(backend))).await?;
        let (incoming, incoming_task) = IncomingApi::start(
            net.clone(),
            redirect,
            IncomingSettings::new(ns.name()),
            shutdown.token().clone(),
        );
        let ctx = Arc::new(AgentContext {
            target: ns.name(),
            token: config.token.clone(),
            ns,
            dns: DnsApi::new(pool.clone(), net.clone()),
            pool,
            net,
            incoming,
            sessions: SessionRegistry::default(),
            shutdown: shutdown.clone(),
        });
        tracing::info!(target = %ctx.target, %local_addr, "agent listening");
        let task = tokio::spawn(supervise(listener, ctx, config, incoming_task));
        Ok(Agent {
            local_addr,
            shutdown,
            task,
            _broker: broker,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to stop the agent from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Wait until the agent stops.
    ///
    /// # Errors
    /// [`Error::TargetGone`] when it stopped because its target exited.
    pub async fn wait(self) -> Result<ExitReason> {
        self.task.await.map_err(|e| Error::Internal {
            reason: e.to_string(),
        })?
    }
}

/// Accept clients and watch the agent's lifetime conditions. Returns once
/// every client is done and the incoming task removed its rules.
async fn supervise(
    listener: TcpListener,
    ctx: Arc<AgentContext>,
    config: AgentConfig,
    incoming_task: JoinHandle<()>,
) -> Result<ExitReason> {
    let clients = TaskTracker::new();
    let mut count_rx = ctx.sessions.subscribe_count();
    let started = Instant::now();
    let mut count = SessionCount::default();
    let mut empty_since: Option<Instant> = None;
    let mut poll = tokio::time::interval(config.target_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let outcome = loop {
        let deadline = if count.total == 0 {
            config.idle_timeout.map(|idle| started + idle)
        } else if count.active == 0 {
            config
                .linger
                .zip(empty_since)
                .map(|(linger, since)| since + linger)
        } else {
            None
        };
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctx.shutdown.requested.cancelled() => break Ok(ExitReason::Shutdown),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, "connection accepted");
                    clients.spawn(client::serve(stream, peer, ctx.clone()));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            changed = count_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let now = *count_rx.borrow_and_update();
                if now.active == 0 && (empty_since.is_none() || now.total != count.total) {
                    empty_since = Some(Instant::now());
                } else if now.active > 0 {
                    empty_since = None;
                }
                count = now;
            }
            _ = expired => {
                break Ok(if count.total == 0 {
                    ExitReason::IdleTimeout
                } else {
                    ExitReason::ClientsLeft
                });
            }
            _ = poll.tick() => {
                let ns = ctx.ns.clone();
                let alive = tokio::task::spawn_blocking(move || ns.is_alive())
                    .await
                    .unwrap_or(true);
                if !alive {
                    break Err(Error::TargetGone { target: ctx.target.clone() });
                }
            }
        }
    };

    let reason = match &outcome {
        Ok(ExitReason::IdleTimeout) => "no client connected in time".to_owned(),
        Ok(ExitReason::ClientsLeft) => "every client left".to_owned(),
        Ok(ExitReason::Shutdown) => ctx.shutdown.reason(),
        Err(Error::TargetGone { target }) => format!("target {target} exited"),
        Err(e) => e.to_string(),
    };
    tracing::info!(%reason, "agent stopping");
    drop(listener);
    // Incoming traffic first: redirects out, in-flight connections finish
    // while their sessions are still connected (see `ShutdownHandle`).
    ctx.incoming.withdraw(INCOMING_DRAIN).await;
    ctx.shutdown.close(reason);
    clients.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, clients.wait())
        .await
        .is_err()
    {
        tracing::warn!("some clients did not finish in time");
    }
    // The shutdown token stops the incoming task, which removes its rules.
    if tokio::time::timeout(SHUTDOWN_GRACE, incoming_task)
        .await
        .is_err()
    {
        tracing::warn!("incoming traffic rules were not removed in time");
    }
    outcome
}
