//! The operator as a whole: accepts connections, authenticates them, and
//! turns each into a session relayed to its target's shared agent (or a
//! control connection answering `remora session ls/kill`).
//!
//! The accept path is generic over `AsyncRead + AsyncWrite`, so a TLS
//! acceptor can wrap the TCP stream without touching the rest.

use crate::access::{Access, Caller, SessionObserver, TokenAccess, Vouched};
use crate::agents::{AgentLease, AgentPool};
use crate::branches::Branches;
use crate::error::{Error, Result};
use crate::platform::{Platform, ResolvedTarget};
use crate::policy::PolicyStore;
use crate::relay::{self, SessionContext};
use crate::sessions::Sessions;
use futures::{SinkExt, StreamExt};
use remora_protocol::codec::FrameCodec;
use remora_protocol::handshake::negotiate;
use remora_protocol::queues::{QueueReply, QueueRequest};
use remora_protocol::{
    Capabilities, ClientMessage, CodecError, ErrorCode, Hello, HelloReply, PROTOCOL_VERSION,
    ProtocolVersion, RemoteError, Request, Response, ServerMessage, SessionId, SessionToken,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a new connection may take to say `Hello`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to an agent may take.
pub const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// remora's version, as told to clients.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How an operator is set up.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// What clients must present.
    pub token: SessionToken,
    /// The policies in force.
    pub policies: PolicyStore,
    /// Where `db-branches.json` is kept (none: in memory only).
    pub state_dir: Option<std::path::PathBuf>,
    /// Where the database-branch registry is kept instead of `state_dir`
    /// (Kubernetes: `RemoraDbBranch` objects).
    pub branch_store: Option<Arc<dyn crate::branches::store::BranchStore>>,
    /// Who makes branch pods (Kubernetes; only with `branch_store`).
    pub branch_pods: Option<Arc<dyn crate::branches::pods::BranchPods>>,
    /// Extra directories with PostgreSQL client programs, for branches of
    /// servers newer than the default `pg_dump`.
    pub pg_bindirs: Vec<std::path::PathBuf>,
    /// Branch servers and read-only roles for database branches (`--db-config`).
    pub db_settings: crate::branches::settings::DbSettings,
    /// Who may connect; none: whoever presents `token`.
    pub access: Option<Arc<dyn Access>>,
    /// Where the session table is mirrored (RemoraSession objects).
    pub observer: Option<Arc<dyn SessionObserver>>,
    /// Who splits queues for sessions (none: `split_queues` is refused).
    pub queue_splitter: Option<Arc<dyn crate::queue_splits::QueueSplitter>>,
}

/// What every connection shares.
#[derive(Debug)]
struct Context {
    access: Arc<dyn Access>,
    agents: Arc<AgentPool>,
    sessions: Sessions,
    policies: PolicyStore,
    branches: Branches,
    queue_splitter: Option<Arc<dyn crate::queue_splits::QueueSplitter>>,
}

/// A running operator.
#[derive(Debug)]
pub struct Operator {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    sessions: Sessions,
    agents: Arc<AgentPool>,
    ctx: Arc<Context>,
}

/// Serves connections that reach the operator other than through its
/// listener (the aggregated API's upgraded streams); a cheap handle.
#[derive(Debug, Clone)]
pub struct Connections {
    ctx: Arc<Context>,
}

impl Connections {
    /// Serve one client connection as the listener serves its own, with the
    /// identity its carrier vouches for ([`Access::admit_vouched`]) instead
    /// of the Hello's token when `vouched` is given. Returns when the
    /// connection ends.
    pub async fn serve<S>(&self, stream: S, peer: SocketAddr, vouched: Option<Vouched>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        serve_connection(stream, peer, self.ctx.clone(), vouched).await;
    }
}

impl Operator {
    /// Bind the listener and start serving in the background.
    ///
    /// # Errors
    /// [`Error::Bind`].
    pub async fn bind(config: OperatorConfig, platform: Arc<dyn Platform>) -> Result<Operator> {
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
        let cancel = CancellationToken::new();
        let branches = match config.branch_store.clone() {
            Some(store) => Branches::start_stored(
                platform.clone(),
                store,
                config.branch_pods.clone(),
                config.pg_bindirs.clone(),
                config.db_settings.clone(),
                cancel.clone(),
            )
            .await
            .map_err(|reason| Error::BranchStore { reason })?,
            None => Branches::start(
                platform.clone(),
                config.state_dir.clone(),
                config.pg_bindirs.clone(),
                config.db_settings.clone(),
                cancel.clone(),
            ),
        };
        let agents = AgentPool::new(platform);
        let sessions = match config.observer {
            Some(observer) => Sessions::observed(observer),
            None => Sessions::default(),
        };
        let access = config.access.unwrap_or_else(|| {
            Arc::new(TokenAccess {
                token: config.token,
            })
        });
        let ctx = Arc::new(Context {
            access,
            agents: agents.clone(),
            sessions: sessions.clone(),
            policies: config.policies.clone(),
            branches,
            queue_splitter: config.queue_splitter.clone(),
        });
        tokio::spawn(
            config
                .policies
                .watch(crate::policy::RELOAD_INTERVAL, cancel.clone()),
        );
        tracing::info!(%local_addr, platform = agents.platform().name(), "operator listening");
        let task = tokio::spawn(accept_loop(listener, ctx.clone(), cancel.clone()));
        Ok(Operator {
            local_addr,
            cancel,
            task,
            sessions,
            agents,
            ctx,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle serving connections that arrive other than through the
    /// listener.
    pub fn connections(&self) -> Connections {
        Connections {
            ctx: self.ctx.clone(),
        }
    }

    /// The sessions (tests, benchmarks).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Stop accepting, end every session (clients hear `reason`) and stop
    /// every agent.
    pub async fn shutdown(self, reason: &str) {
        for session in self.sessions.list() {
            let _ = self.sessions.kill(session.id, reason.to_owned());
        }
        self.cancel.cancel();
        let _ = self.task.await;
        self.agents.stop_all().await;
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Context>, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tracker.spawn(serve_connection(stream, peer, ctx.clone(), None));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
}

fn rejected(reason: String) -> HelloReply {
    HelloReply::Rejected {
        reason,
        server_protocol: PROTOCOL_VERSION,
        server_version: SERVER_VERSION.to_owned(),
    }
}

fn accepted(version: ProtocolVersion, capabilities: Capabilities, id: SessionId) -> HelloReply {
    HelloReply::Accepted {
        version,
        capabilities,
        session: id,
        server_version: SERVER_VERSION.to_owned(),
    }
}

/// Serve one client connection (any byte stream: TCP, or an upgraded
/// stream of the aggregated API whose carrier vouches for the client).
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    ctx: Arc<Context>,
    vouched: Option<Vouched>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut framed = Framed::new(stream, FrameCodec::<Hello, HelloReply>::default());
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next()).await {
        Err(_) | Ok(None) | Ok(Some(Err(CodecError::Io(_)))) => return,
        Ok(Some(Err(e))) => {
            let _ = framed
                .send(rejected(format!("undecodable Hello: {e}")))
                .await;
            return;
        }
        Ok(Some(Ok(hello))) => hello,
    };
    let version = match negotiate(hello.version) {
        Ok(version) => version,
        Err(reason) => {
            let _ = framed.send(rejected(reason)).await;
            return;
        }
    };
    let admitted = match &vouched {
        Some(who) => ctx.access.admit_vouched(&hello, who).await,
        None => ctx.access.authenticate(&hello).await,
    };
    let mut caller: Caller = match admitted {
        Ok(caller) => caller,
        Err(reason) => {
            tracing::warn!(%peer, user = %hello.client.user, %reason, "client not authenticated");
            let _ = framed.send(rejected(reason)).await;
            return;
        }
    };
    let user = caller.user.clone();
    let Some(target) = hello.target.clone() else {
        // A control connection: session listing and killing only.
        let reply = accepted(
            version,
            Capabilities::SESSIONS | Capabilities::DB_BRANCHES | Capabilities::QUEUE_SPLITS,
            SessionId(0),
        );
        if framed.send(reply).await.is_ok() {
            control(framed.map_codec(|_| FrameCodec::default()), &ctx, &caller).await;
        }
        return;
    };
    let platform = ctx.agents.platform().clone();
    let resolved = match platform.resolve(&target) {
        Ok(resolved) => resolved,
        Err(e) => {
            let _ = framed.send(rejected(e.to_string())).await;
            return;
        }
    };
    caller.grants = match ctx.access.authorize(&caller, &resolved).await {
        Ok(grants) => grants,
        Err(reason) => {
            tracing::warn!(%peer, %user, target = %resolved.name, %reason, "session not authorised");
            let _ = framed.send(rejected(reason)).await;
            return;
        }
    };
    // Policy objects may select targets by label.
    let target_labels = platform.target_labels(&resolved).await;
    let (lease, agent, agent_reply) = match connect_agent(&ctx, &resolved, &hello).await {
        Ok(connected) => connected,
        Err(reason) => {
            tracing::warn!(%peer, %user, target = %resolved.name, %reason, "session refused");
            let _ = framed.send(rejected(reason)).await;
            return;
        }
    };
    let HelloReply::Accepted {
        version: agent_version,
        capabilities,
        ..
    } = agent_reply
    else {
        unreachable!("connect_agent returns accepted sessions only");
    };
    let (guard, commands) =
        ctx.sessions
            .register_identified(&user, caller.identity.as_deref(), &resolved.name);
    let id = guard.id();
    // The session policy is the operator's business with the agent; the
    // override is the operator's own (whatever the agent says).
    let client_capabilities = Capabilities(capabilities.0 & !Capabilities::SESSION_POLICY.0)
        | hello
            .capabilities
            .intersect(Capabilities::SUBSCRIBE_OVERRIDE);
    if framed
        .send(accepted(
            agent_version.min(version),
            client_capabilities | Capabilities::DB_BRANCHES,
            id,
        ))
        .await
        .is_err()
    {
        lease.release().await;
        return;
    }
    tracing::info!(
        session = %id, %peer, %user, target = %resolved.name,
        program = %hello.client.program, "session started"
    );
    let client: Framed<S, FrameCodec<ClientMessage, ServerMessage>> =
        framed.map_codec(|_| FrameCodec::default());
    let (client_sink, client_stream) = client.split();
    let (agent_sink, agent_stream) = agent.split();
    let session = SessionContext {
        id,
        user,
        target: resolved.name.clone(),
        sessions: ctx.sessions.clone(),
        // Policies may name users and groups the platform vouches for.
        policies: match (&caller.identity, target_labels) {
            (None, None) => ctx.policies.clone(),
            (identity, target_labels) => ctx.policies.for_subject(crate::policy::Subject {
                user: identity.clone(),
                groups: caller.groups.clone(),
                target_labels,
            }),
        },
        agent_capabilities: capabilities,
        branches: Some(ctx.branches.clone()),
        queue_splitter: ctx.queue_splitter.clone(),
        grants: caller.grants.clone(),
    };
    let ended = relay::run(
        client_sink,
        client_stream,
        agent_sink,
        agent_stream,
        session,
        commands,
    )
    .await;
    if let Some(splitter) = &ctx.queue_splitter {
        // Draining the session's queue and, for the last one, restoring the
        // workload take a while; its state is in the split's status, so a
        // stop midway is finished by the next operator.
        tokio::spawn(splitter.leave(id));
    }
    drop(guard);
    tracing::info!(session = %id, ?ended, "session ended");
    lease.release().await;
}

type AgentLink = Framed<TcpStream, FrameCodec<ServerMessage, ClientMessage>>;

/// Get the target's agent and open this session's own connection to it,
/// with the client's identity. Retries once with a fresh agent when the one
/// found does not answer (it may have just exited on its own).
async fn connect_agent(
    ctx: &Context,
    target: &ResolvedTarget,
    hello: &Hello,
) -> std::result::Result<(AgentLease, AgentLink, HelloReply), String> {
    let mut last_error = String::new();
    for attempt in 0..2 {
        let lease = ctx
            .agents
            .acquire(target, attempt > 0)
            .await
            .map_err(|e| e.to_string())?;
        match handshake_when_listening(&lease, hello).await {
            Ok((link, reply @ HelloReply::Accepted { .. })) => return Ok((lease, link, reply)),
            Ok((_, HelloReply::Rejected { reason, .. })) => {
                lease.release().await;
                return Err(format!(
                    "the agent of {} refused the session: {reason}",
                    target.name
                ));
            }
            Err(e) => {
                last_error = e;
                lease.release().await;
            }
        }
    }
    Err(format!(
        "cannot reach the agent of {}: {last_error}",
        target.name
    ))
}

/// How long a freshly started agent may take to listen: a Kubernetes
/// agent's container runs before its listener does, and the port-forward
/// to it closes until then.
const AGENT_LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// [`handshake_agent`], retried with short doubling waits for
/// [`AGENT_LISTEN_TIMEOUT`] when the agent was just started; an agent that
/// was already running gets one try (it may have exited on its own, and
/// [`connect_agent`] then replaces it).
async fn handshake_when_listening(
    lease: &AgentLease,
    hello: &Hello,
) -> std::result::Result<(AgentLink, HelloReply), String> {
    let deadline = tokio::time::Instant::now()
        + if lease.fresh {
            AGENT_LISTEN_TIMEOUT
        } else {
            Duration::ZERO
        };
    let mut delay = Duration::from_millis(20);
    loop {
        match handshake_agent(lease.addr, &lease.token, hello).await {
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "the new agent does not answer yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

async fn handshake_agent(
    addr: SocketAddr,
    token: &SessionToken,
    hello: &Hello,
) -> std::result::Result<(AgentLink, HelloReply), String> {
    let stream = tokio::time::timeout(AGENT_CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("no answer from {addr}"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, FrameCodec::<HelloReply, Hello>::default());
    let agent_hello = Hello {
        version: hello.version.min(PROTOCOL_VERSION),
        // The operator asks for session policies on its own behalf.
        capabilities: hello.capabilities | Capabilities::SESSION_POLICY,
        token: token.clone(),
        client: hello.client.clone(),
        // The agent's own token already names it (each agent gets a random
        // one); what it calls its target may differ from the operator's
        // canonical name (a Kubernetes agent serves `pid/<container pid>`
        // for `deployment/web`), so no target is asked for.
        target: None,
    };
    framed
        .send(agent_hello)
        .await
        .map_err(|e| format!("sending Hello: {e}"))?;
    let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next())
        .await
        .map_err(|_| "no Hello reply".to_owned())?
        .ok_or_else(|| "the agent closed the connection".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok((framed.map_codec(|_| FrameCodec::default()), reply))
}

/// A control connection: `Session` requests and pings until the client leaves.
/// `QueueRequest::Prepare` on a control connection: the caller must be
/// allowed a session on the target, as the session that follows will be.
async fn prepare_split(
    ctx: &Context,
    caller: &Caller,
    target: &str,
) -> std::result::Result<Response, RemoteError> {
    let refused = |reason: String| RemoteError::new(ErrorCode::InvalidInput, reason);
    let Some(splitter) = &ctx.queue_splitter else {
        return Err(RemoteError::new(
            ErrorCode::Unsupported,
            "this operator splits no queues (queue splitting needs the operator in Kubernetes \
             mode: docs/queues.md)",
        ));
    };
    let resolved = ctx
        .agents
        .platform()
        .resolve(target)
        .map_err(|e| refused(e.to_string()))?;
    ctx.access
        .authorize(caller, &resolved)
        .await
        .map_err(|reason| RemoteError::new(ErrorCode::Forbidden, reason))?;
    splitter
        .prepare(resolved.name)
        .await
        .map(|()| Response::Queues(QueueReply::Prepared))
        .map_err(refused)
}

async fn control<S>(
    mut link: Framed<S, FrameCodec<ClientMessage, ServerMessage>>,
    ctx: &Context,
    caller: &Caller,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = caller.user.as_str();
    while let Some(Ok(message)) = link.next().await {
        let (id, request) = match message {
            ClientMessage::Request { id, request } => (id, request),
            ClientMessage::Bye => return,
            _ => continue,
        };
        let result = match &request {
            Request::Session(control) => relay::session_control(&ctx.sessions, user, control),
            Request::Ping => Ok(Response::Pong),
            Request::Db(db) => ctx
                .branches
                .handle(db.clone(), user, None)
                .await
                .map(Response::Db),
            Request::Queues(QueueRequest::Prepare { target }) => {
                prepare_split(ctx, caller, target).await
            }
            Request::Queues(QueueRequest::List) => match &ctx.queue_splitter {
                Some(splitter) => splitter
                    .list()
                    .await
                    .map(Response::Queues)
                    .map_err(|reason| RemoteError::new(ErrorCode::Unavailable, reason)),
                None => Ok(Response::Queues(QueueReply::List(Vec::new()))),
            },
            _ => Err(RemoteError::new(
                ErrorCode::Unsupported,
                "this is a control connection (no target): only session requests",
            )),
        };
        if link
            .send(ServerMessage::Response { id, result })
            .await
            .is_err()
        {
            return;
        }
    }
}
