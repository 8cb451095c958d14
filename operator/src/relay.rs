//! One session: the client's connection relayed, frame by frame, to the
//! session's own connection to its target's agent, with the operator's
//! rules applied on the way.
//!
//! * client → agent: session control and database requests are answered
//!   here (a branch reads the target's environment from the agent, with an
//!   operator request id the client never sees); files the
//!   policies hide are answered `NotFound`; outgoing connects and incoming
//!   subscriptions are checked against the policies, then subscriptions
//!   against the [filter registry](crate::registry); everything else passes
//!   unchanged (request and connection ids included: the agent connection
//!   is this session's alone).
//! * agent → client: environment replies lose the variables policies
//!   withhold; subscription results update the registry.
//!
//! When the session ends (client gone, killed, agent gone) the agent
//! connection is closed, and the agent drops the session's subscriptions at
//! once.

use crate::policy::{Destination, LearnedBlock, PolicyStore, SubscribeCheck};
use crate::registry::{ClaimRequest, describe};
use crate::sessions::{SessionCommand, Sessions};
use futures::{Sink, SinkExt, Stream, StreamExt};
use remora_protocol::db::DbRequest;
use remora_protocol::env::EnvRequest;
use remora_protocol::incoming::{
    HttpFilter, IncomingClient, IncomingMode, IncomingServer, RemotePort,
};
use remora_protocol::outgoing::{OutgoingClient, OutgoingServer};
use remora_protocol::session::{LogLevel, SessionPolicy, SessionReply, SessionRequest};
use remora_protocol::{
    Capabilities, ClientMessage, CodecError, ErrorCode, RemoteError, RemoteResult, Request,
    RequestId, Response, ServerMessage, SessionId,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// Frames queued for the client, and for the agent.
pub const OUTBOUND_CAPACITY: usize = 256;
/// Request ids the operator uses on a session's agent connection (its own
/// pings); clients count theirs up from 1, far below.
pub const OPERATOR_REQUEST_BASE: u64 = 1 << 63;
/// How long the operator waits for the agent's answer to its own request
/// (the target's environment, for database branches).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a takeover waits for the previous holder's agent to let go.
pub const EVICT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the last frames get to reach a closing client.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a killed session that holds ports keeps relaying after giving
/// them back at the agent: new requests already reach the target, and the
/// ones handed to the session before are still answered (its client hears
/// why the session ended after that). An operator stopping (its pod
/// deleted) kills every session this way, so no stolen request is lost.
pub const KILL_DRAIN: Duration = Duration::from_millis(1000);

/// Who the session is and what it shares with the rest of the operator.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// The session's id.
    pub id: SessionId,
    /// Its user.
    pub user: String,
    /// Its target's canonical name.
    pub target: String,
    /// Every session and the filter registry.
    pub sessions: Sessions,
    /// The policies in force.
    pub policies: PolicyStore,
    /// What the session's agent connection negotiated.
    pub agent_capabilities: Capabilities,
    /// Database branches (none in tests that do not need them).
    pub branches: Option<crate::branches::Branches>,
    /// Queue splits (none: refused).
    pub queue_splitter: Option<Arc<dyn crate::queue_splits::QueueSplitter>>,
    /// What the platform lets this session's user do.
    pub grants: crate::access::Grants,
}

/// Why a file request cannot be checked by the agent.
#[derive(Debug)]
enum Unenforceable {
    /// The agent connection is gone.
    AgentGone,
    /// The agent cannot enforce session policies; the reason says so.
    TooOld(String),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The client's connection closed or broke.
    ClientGone,
    /// The client said goodbye.
    Bye,
    /// The agent connection closed (the agent stopped).
    AgentGone(String),
    /// Killed (or the client sent garbage); the client is told why.
    Killed(String),
}

/// State both directions of the relay look at.
#[derive(Debug, Default)]
struct Shared {
    /// Environment requests in flight: their replies get filtered.
    env_requests: HashSet<RequestId>,
    /// Lookups of names an `outgoing_block` entry names.
    lookups: HashMap<RequestId, (String, Vec<(String, Destination)>)>,
    /// Addresses such names resolved to, and the entry blocking them.
    learned: Vec<LearnedBlock>,
    /// The operator's own requests on the agent connection.
    pings: HashMap<RequestId, oneshot::Sender<()>>,
    /// The operator's own requests whose answers it reads (the target's
    /// environment, for database branches).
    asks: HashMap<RequestId, oneshot::Sender<RemoteResult<Response>>>,
    next_ping: u64,
    /// Messages already shown to the user (each policy hit once).
    told: HashSet<String>,
    /// The session policy the agent enforces now.
    policy_sent: Option<SessionPolicy>,
    /// File requests in flight while the agent enforces file rules: its
    /// refusals are shown to the user.
    fs_requests: HashSet<RequestId>,
    /// Raw DNS queries in flight: the name that answered (after the
    /// target's search list) is checked against `outgoing_block` too.
    dns_queries: HashSet<RequestId>,
}

#[derive(Debug, Clone)]
struct Relay {
    ctx: SessionContext,
    /// relay --frames--> client writer
    client_tx: mpsc::Sender<ServerMessage>,
    /// relay --frames--> agent writer
    agent_tx: mpsc::Sender<ClientMessage>,
    shared: Arc<Mutex<Shared>>,
}

/// Relay `client` ⇄ `agent` until the session ends; returns how.
pub async fn run<CS, CR, AS, AR>(
    client_sink: CS,
    mut client_stream: CR,
    agent_sink: AS,
    mut agent_stream: AR,
    ctx: SessionContext,
    mut commands: mpsc::Receiver<SessionCommand>,
) -> Ended
where
    CS: Sink<ServerMessage, Error = CodecError> + Unpin + Send + 'static,
    CR: Stream<Item = Result<ClientMessage, CodecError>> + Unpin,
    AS: Sink<ClientMessage, Error = CodecError> + Unpin + Send + 'static,
    AR: Stream<Item = Result<ServerMessage, CodecError>> + Unpin,
{
    let (client_tx, client_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let (agent_tx, agent_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let mut client_writer = tokio::spawn(write_loop(client_sink, client_rx, |m| {
        matches!(m, ServerMessage::Closing { .. })
    }));
    let mut agent_writer = tokio::spawn(write_loop(agent_sink, agent_rx, |m| {
        matches!(m, ClientMessage::Bye)
    }));
    let relay = Relay {
        ctx,
        client_tx,
        agent_tx,
        shared: Arc::default(),
    };
    let ended = {
        let up = relay.clone().upstream(&mut client_stream);
        let down = relay.clone().downstream(&mut agent_stream);
        // Killed while holding ports: why, once the drain is over.
        let mut draining: Option<String> = None;
        let drain = tokio::time::sleep(KILL_DRAIN);
        tokio::pin!(up, down, drain);
        loop {
            tokio::select! {
                ended = &mut up => break ended,
                ended = &mut down => break ended,
                () = &mut drain, if draining.is_some() => {
                    break Ended::Killed(draining.take().unwrap_or_default());
                }
                Some(command) = commands.recv() => match command {
                    SessionCommand::Kill { .. } if draining.is_some() => {}
                    SessionCommand::Kill { reason } => {
                        if relay.give_back_ports().await {
                            drain.as_mut().reset(tokio::time::Instant::now() + KILL_DRAIN);
                            draining = Some(reason);
                        } else {
                            break Ended::Killed(reason);
                        }
                    }
                    SessionCommand::Evict { port, by, done } => relay.evict(port, by, done).await,
                },
            }
        }
    };
    let closing = match &ended {
        Ended::Killed(reason) => Some(reason.clone()),
        Ended::AgentGone(reason) => Some(format!(
            "the agent of {} stopped ({reason})",
            relay.ctx.target
        )),
        Ended::ClientGone | Ended::Bye => None,
    };
    tracing::info!(session = %relay.ctx.id, ?ended, "session ending");
    if let Some(reason) = closing {
        let _ = tokio::time::timeout(
            FLUSH_TIMEOUT,
            relay.client_tx.send(ServerMessage::Closing { reason }),
        )
        .await;
    }
    if !matches!(ended, Ended::Bye | Ended::AgentGone(_)) {
        let _ = relay.agent_tx.try_send(ClientMessage::Bye);
    }
    drop(relay);
    // Both writers end once their queues drain; then both connections close.
    for writer in [&mut agent_writer, &mut client_writer] {
        if tokio::time::timeout(FLUSH_TIMEOUT, &mut *writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
    ended
}

/// Write queued frames, flushing when the queue is empty; stop after a
/// frame `last` says is the last one, or when the queue closes.
async fn write_loop<T, S>(mut sink: S, mut rx: mpsc::Receiver<T>, last: fn(&T) -> bool)
where
    S: Sink<T, Error = CodecError> + Unpin,
{
    while let Some(message) = rx.recv().await {
        let is_last = last(&message);
        if sink.feed(message).await.is_err() {
            return;
        }
        if (is_last || rx.is_empty()) && sink.flush().await.is_err() {
            return;
        }
        if is_last {
            break;
        }
    }
    let _ = sink.close().await;
}

impl Relay {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        // Every critical section leaves the maps consistent, even on panic.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn to_client(&self, message: ServerMessage) -> bool {
        self.client_tx.send(message).await.is_ok()
    }

    async fn to_agent(&self, message: ClientMessage) -> bool {
        self.agent_tx.send(message).await.is_ok()
    }

    /// Show `message` on the user's terminal, once per session.
    async fn tell_once(&self, level: LogLevel, message: String) {
        if self.shared().told.insert(message.clone()) {
            let _ = self.to_client(ServerMessage::Log { level, message }).await;
        }
    }

    async fn upstream<R>(self, frames: &mut R) -> Ended
    where
        R: Stream<Item = Result<ClientMessage, CodecError>> + Unpin,
    {
        // An agent too old for the rules refuses file requests, later.
        if let Err(Unenforceable::AgentGone) = self.sync_policy().await {
            return Ended::AgentGone("its connection closed".into());
        }
        loop {
            let message = match frames.next().await {
                None | Some(Err(CodecError::Io(_))) => return Ended::ClientGone,
                Some(Err(e)) => {
                    tracing::warn!(session = %self.ctx.id, error = %e, "undecodable frame from the client");
                    return Ended::Killed(format!("the operator could not read a frame: {e}"));
                }
                Some(Ok(message)) => message,
            };
            let forwarded = match message {
                ClientMessage::Request { id, request } => self.request(id, request).await,
                ClientMessage::Outgoing(OutgoingClient::Connect {
                    conn,
                    transport,
                    remote,
                }) => {
                    let verdict = {
                        let shared = self.shared();
                        self.ctx.policies.current().check_outgoing(
                            &self.ctx.target,
                            &remote,
                            &shared.learned,
                        )
                    };
                    match verdict {
                        Ok(()) => {
                            self.to_agent(ClientMessage::Outgoing(OutgoingClient::Connect {
                                conn,
                                transport,
                                remote,
                            }))
                            .await
                        }
                        Err(reason) => {
                            tracing::info!(session = %self.ctx.id, %reason, "outgoing connection refused");
                            let result =
                                Err(RemoteError::new(ErrorCode::Forbidden, reason.clone()));
                            self.tell_once(LogLevel::Warn, reason).await;
                            let _ =
                                self.to_client(ServerMessage::Outgoing(
                                    OutgoingServer::Connected { conn, result },
                                ))
                                .await;
                            true
                        }
                    }
                }
                ClientMessage::Incoming(IncomingClient::Subscribe { port, mode, filter }) => {
                    self.subscribe(port, mode, filter, false).await
                }
                ClientMessage::SubscribeOverride { port, mode, filter } => {
                    self.subscribe(port, mode, filter, true).await
                }
                // Policies come from the operator only: a client's would
                // replace the session's rules at the agent.
                ClientMessage::SessionPolicy(_) => {
                    tracing::warn!(session = %self.ctx.id, "a client sent a session policy");
                    return Ended::Killed(
                        "clients may not send session policies (only the operator does)".into(),
                    );
                }
                ClientMessage::Incoming(IncomingClient::Unsubscribe { port }) => {
                    let (target, id) = (&self.ctx.target, self.ctx.id);
                    self.ctx
                        .sessions
                        .with_registry(|r| r.release(target, port, id));
                    self.to_agent(ClientMessage::Incoming(IncomingClient::Unsubscribe {
                        port,
                    }))
                    .await
                }
                ClientMessage::Bye => {
                    let _ = self.to_agent(ClientMessage::Bye).await;
                    return Ended::Bye;
                }
                other => self.to_agent(other).await,
            };
            if !forwarded {
                return Ended::AgentGone("its connection closed".into());
            }
        }
    }

    /// Answer or forward a request; false when the agent link is gone.
    async fn request(&self, id: RequestId, request: Request) -> bool {
        let answer = |result: RemoteResult<Response>| ServerMessage::Response { id, result };
        match &request {
            Request::Session(control) => {
                let result = session_control(&self.ctx.sessions, &self.ctx.user, control);
                let _ = self.to_client(answer(result)).await;
                return true;
            }
            Request::Fs(fs) => {
                let hidden = fs.paths().into_iter().find_map(|path| {
                    self.ctx
                        .policies
                        .current()
                        .fs_hidden(&self.ctx.target, path)
                        .map(|(label, pattern)| {
                            format!("{path} is hidden by {label} (fs_not_found {pattern:?})")
                        })
                });
                if let Some(reason) = hidden {
                    self.tell_once(LogLevel::Info, reason.clone()).await;
                    let error = RemoteError::new(ErrorCode::NotFound, reason);
                    let _ = self.to_client(answer(Err(error))).await;
                    return true;
                }
                // The path's text is not the path: the agent decides on the
                // path as the target resolves it, under the policy in force.
                match self.sync_policy().await {
                    Ok(true) => {
                        if !fs.paths().is_empty() {
                            self.shared().fs_requests.insert(id);
                        }
                    }
                    Ok(false) => {}
                    Err(Unenforceable::AgentGone) => return false,
                    Err(Unenforceable::TooOld(reason)) => {
                        let error = RemoteError::new(ErrorCode::Forbidden, reason.clone());
                        self.tell_once(LogLevel::Warn, reason).await;
                        let _ = self.to_client(answer(Err(error))).await;
                        return true;
                    }
                }
            }
            Request::Env(_) => {
                self.shared().env_requests.insert(id);
            }
            Request::Db(db) => {
                let result = match &self.ctx.branches {
                    Some(branches) => self.branch_request(branches, db.clone()).await,
                    None => Err(RemoteError::new(
                        ErrorCode::Unsupported,
                        "this operator makes no database branches",
                    )),
                };
                let _ = self.to_client(answer(result)).await;
                return true;
            }
            Request::Queues(request) => {
                let result = match &self.ctx.queue_splitter {
                    Some(splitter) => splitter
                        .handle(
                            self.ctx.target.clone(),
                            self.ctx.id,
                            self.ctx.user.clone(),
                            request.clone(),
                        )
                        .await
                        .map(Response::Queues)
                        .map_err(|reason| RemoteError::new(ErrorCode::InvalidInput, reason)),
                    None => Err(RemoteError::new(
                        ErrorCode::Unsupported,
                        "this operator splits no queues (queue splitting needs the operator \
                         in Kubernetes mode: docs/queues.md)",
                    )),
                };
                let _ = self.to_client(answer(result)).await;
                return true;
            }
            // A raw query's addresses are not learned for outgoing_block: a
            // blocked name is refused instead.
            Request::DnsQuery(query) => {
                let hits = self
                    .ctx
                    .policies
                    .current()
                    .blocked_name(&self.ctx.target, &query.name);
                if let Some((label, _)) = hits.first() {
                    let reason = format!(
                        "DNS queries for {} are refused: {label} blocks connections to it",
                        query.name
                    );
                    self.tell_once(LogLevel::Warn, reason.clone()).await;
                    let error = RemoteError::new(ErrorCode::Forbidden, reason);
                    let _ = self.to_client(answer(Err(error))).await;
                    return true;
                }
                self.shared().dns_queries.insert(id);
            }
            Request::Lookup(lookup) => {
                let hits = self
                    .ctx
                    .policies
                    .current()
                    .blocked_name(&self.ctx.target, &lookup.name);
                if !hits.is_empty() {
                    self.shared()
                        .lookups
                        .insert(id, (lookup.name.clone(), hits));
                }
            }
            _ => {}
        }
        self.to_agent(ClientMessage::Request { id, request }).await
    }

    /// Make the agent enforce the session policy in force now (sent again
    /// when the policy file changed). `Ok(true)` when it has file rules.
    async fn sync_policy(&self) -> Result<bool, Unenforceable> {
        let policy = self.ctx.policies.current().session_policy(&self.ctx.target);
        let active = policy != SessionPolicy::default();
        // The agent starts with no policy: nothing to send for an empty one.
        let sent = self.shared().policy_sent.clone().unwrap_or_default();
        if sent == policy {
            return Ok(active);
        }
        if !self
            .ctx
            .agent_capabilities
            .contains(Capabilities::SESSION_POLICY)
        {
            if !active {
                return Ok(false);
            }
            return Err(Unenforceable::TooOld(format!(
                "file access on {} is refused: its policies (fs_not_found, env_exclude) need an \
                 agent that enforces session policies (protocol v2); restart the target's agent \
                 with this operator's version",
                self.ctx.target
            )));
        }
        self.shared().policy_sent = Some(policy.clone());
        if self.to_agent(ClientMessage::SessionPolicy(policy)).await {
            Ok(active)
        } else {
            Err(Unenforceable::AgentGone)
        }
    }

    async fn subscribe(
        &self,
        port: RemotePort,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
        take_over: bool,
    ) -> bool {
        let target = self.ctx.target.clone();
        let policies = self.ctx.policies.current();
        let check = SubscribeCheck {
            target: &target,
            port: port.0,
            mode,
            filter: filter.as_ref(),
            take_over,
        };
        let grant = match mode {
            IncomingMode::Steal => &self.ctx.grants.steal,
            IncomingMode::Mirror => &self.ctx.grants.mirror,
        };
        if let crate::access::Grant::Denied(reason) = grant {
            let reason = reason.clone();
            return self.refuse(port, ErrorCode::Forbidden, reason).await;
        }
        if let Err(reason) = policies.check_subscribe(&check) {
            return self.refuse(port, ErrorCode::Forbidden, reason).await;
        }
        // What the check above read as text is enforced by structure: the
        // required header AND the session's filter.
        let filter = policies.constrain_filter(&target, filter);
        let claim = ClaimRequest {
            target: &target,
            port,
            session: self.ctx.id,
            user: &self.ctx.user,
            mode,
            filter: filter.as_ref(),
            take_over,
        };
        let claimed = self
            .ctx
            .sessions
            .with_registry(|r| r.claim(&claim, SystemTime::now()));
        let evicted = match claimed {
            Ok(evicted) => evicted,
            Err(conflict) => {
                return self
                    .refuse(port, ErrorCode::AddressInUse, conflict.message)
                    .await;
            }
        };
        for holder in evicted {
            let Some(tx) = self.ctx.sessions.command_tx(holder.session) else {
                continue;
            };
            let (done, done_rx) = oneshot::channel();
            let by = format!("{} (session {})", self.ctx.user, self.ctx.id);
            if tx
                .send(SessionCommand::Evict { port, by, done })
                .await
                .is_ok()
            {
                let _ = tokio::time::timeout(EVICT_TIMEOUT, done_rx).await;
            }
            let what = holder
                .filter
                .as_ref()
                .map_or_else(|| "its unfiltered subscription".to_owned(), describe);
            let message = format!(
                "port {} on {target}: took over from {} (session {}, {what})",
                port.0, holder.user, holder.session
            );
            let _ = self
                .to_client(ServerMessage::Log {
                    level: LogLevel::Warn,
                    message,
                })
                .await;
        }
        // The agent needs no override wish: the previous holder let go.
        self.to_agent(ClientMessage::Incoming(IncomingClient::Subscribe {
            port,
            mode,
            filter,
        }))
        .await
    }

    /// Refuse a subscription without asking the agent (the layer shows the
    /// reason on the user's terminal).
    async fn refuse(&self, port: RemotePort, code: ErrorCode, reason: String) -> bool {
        tracing::info!(session = %self.ctx.id, port = port.0, %reason, "subscription refused");
        let result = Err(RemoteError::new(code, reason));
        let _ = self
            .to_client(ServerMessage::Incoming(IncomingServer::Subscribed {
                port,
                result,
            }))
            .await;
        true
    }

    /// The session is being killed: give every port it holds back at the
    /// agent (new requests reach the target), keeping the connection so
    /// that requests already handed to it are answered. Whether it held any.
    async fn give_back_ports(&self) -> bool {
        let (target, session) = (&self.ctx.target, self.ctx.id);
        let ports: Vec<RemotePort> = self.ctx.sessions.with_registry(|r| {
            let held = r.subscriptions_of(session);
            for s in &held {
                r.release(target, s.port, session);
            }
            held.into_iter().map(|s| s.port).collect()
        });
        for port in &ports {
            let _ = self
                .to_agent(ClientMessage::Incoming(IncomingClient::Unsubscribe {
                    port: *port,
                }))
                .await;
        }
        !ports.is_empty()
    }

    /// Another session took `port` over: let go of it at the agent.
    async fn evict(&self, port: RemotePort, by: String, done: oneshot::Sender<()>) {
        let id = {
            let mut shared = self.shared();
            shared.next_ping += 1;
            let id = RequestId(OPERATOR_REQUEST_BASE + shared.next_ping);
            shared.pings.insert(id, done);
            id
        };
        let (target, session) = (&self.ctx.target, self.ctx.id);
        self.ctx
            .sessions
            .with_registry(|r| r.release(target, port, session));
        let _ = self
            .to_agent(ClientMessage::Incoming(IncomingClient::Unsubscribe {
                port,
            }))
            .await;
        // The agent handles one connection's frames in order: the pong
        // means the unsubscription reached its incoming task.
        let _ = self
            .to_agent(ClientMessage::Request {
                id,
                request: Request::Ping,
            })
            .await;
        let message = format!(
            "port {} on {target}: your subscription was taken over by {by} (override); \
             its requests no longer reach you",
            port.0
        );
        let _ = self
            .to_client(ServerMessage::Log {
                level: LogLevel::Warn,
                message,
            })
            .await;
    }

    /// A database request of this session. Branches read their connection
    /// settings from the target's environment as its agent reads it.
    async fn branch_request(
        &self,
        branches: &crate::branches::Branches,
        db: DbRequest,
    ) -> RemoteResult<Response> {
        let target = crate::platform::ResolvedTarget {
            name: self.ctx.target.clone(),
        };
        let env = match &db {
            DbRequest::Branch(_) => Some(self.target_env().await?),
            _ => None,
        };
        let session = env.as_ref().map(|env| crate::branches::SessionTarget {
            target: &target,
            env,
        });
        branches
            .handle(db, &self.ctx.user, session)
            .await
            .map(Response::Db)
    }

    /// The target's whole environment, asked of the agent by the operator
    /// (no policy withholds anything from the operator itself).
    async fn target_env(&self) -> RemoteResult<std::collections::BTreeMap<String, String>> {
        let unavailable = |why: String| {
            RemoteError::new(
                ErrorCode::Unavailable,
                format!("reading the environment of {}: {why}", self.ctx.target),
            )
        };
        let (done, answer) = oneshot::channel();
        let id = {
            let mut shared = self.shared();
            shared.next_ping += 1;
            let id = RequestId(OPERATOR_REQUEST_BASE + shared.next_ping);
            shared.asks.insert(id, done);
            id
        };
        let request = Request::Env(EnvRequest {
            include: Vec::new(),
            exclude: Vec::new(),
        });
        if !self.to_agent(ClientMessage::Request { id, request }).await {
            self.shared().asks.remove(&id);
            return Err(unavailable("the agent connection closed".into()));
        }
        let answered = tokio::time::timeout(ASK_TIMEOUT, answer).await;
        self.shared().asks.remove(&id);
        match answered {
            Ok(Ok(Ok(Response::Env(reply)))) => Ok(reply.vars),
            Ok(Ok(Ok(other))) => Err(unavailable(format!("unexpected answer {other:?}"))),
            Ok(Ok(Err(e))) => Err(unavailable(e.message)),
            Ok(Err(_)) => Err(unavailable("the agent connection closed".into())),
            Err(_) => Err(unavailable(format!(
                "the agent did not answer within {}s",
                ASK_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn downstream<R>(self, frames: &mut R) -> Ended
    where
        R: Stream<Item = Result<ServerMessage, CodecError>> + Unpin,
    {
        loop {
            let mut message = match frames.next().await {
                None => return Ended::AgentGone("it closed the connection".into()),
                Some(Err(e)) => return Ended::AgentGone(e.to_string()),
                Some(Ok(ServerMessage::Closing { reason })) => return Ended::AgentGone(reason),
                Some(Ok(message)) => message,
            };
            match &mut message {
                ServerMessage::Response { id, result } if id.0 >= OPERATOR_REQUEST_BASE => {
                    if let Some(done) = self.shared().pings.remove(id) {
                        let _ = done.send(());
                    }
                    if let Some(asked) = self.shared().asks.remove(id) {
                        let _ = asked.send(result.clone());
                    }
                    continue;
                }
                ServerMessage::Response { id, result } => {
                    let fs = self.shared().fs_requests.remove(id);
                    if fs
                        && let Err(error) = &*result
                        && error.code == ErrorCode::NotFound
                        && error.message.contains(" is hidden by ")
                    {
                        self.tell_once(LogLevel::Info, error.message.clone()).await;
                    }
                    let env = self.shared().env_requests.remove(id);
                    if env && let Ok(Response::Env(reply)) = result {
                        self.withhold_env(&mut reply.vars).await;
                    }
                    let dns = self.shared().dns_queries.remove(id);
                    if dns
                        && let Ok(Response::DnsAnswer(reply)) = &*result
                        && let Some(name) = question_name(&reply.message)
                    {
                        let hits = self
                            .ctx
                            .policies
                            .current()
                            .blocked_name(&self.ctx.target, &name);
                        if let Some((label, _)) = hits.first() {
                            let reason = format!(
                                "DNS queries for {name} are refused: {label} blocks connections \
                                 to it"
                            );
                            self.tell_once(LogLevel::Warn, reason.clone()).await;
                            *result = Err(RemoteError::new(ErrorCode::Forbidden, reason));
                        }
                    }
                    let lookup = self.shared().lookups.remove(id);
                    if let (Some((name, hits)), Ok(Response::Lookup(reply))) = (lookup, &*result) {
                        let mut shared = self.shared();
                        for ip in &reply.addresses {
                            for (label, dest) in &hits {
                                shared.learned.push(LearnedBlock {
                                    ip: *ip,
                                    name: name.clone(),
                                    dest: dest.clone(),
                                    label: label.clone(),
                                });
                            }
                        }
                    }
                }
                ServerMessage::Incoming(IncomingServer::Subscribed { port, result }) => {
                    let (target, id, port, ok) =
                        (&self.ctx.target, self.ctx.id, *port, result.is_ok());
                    self.ctx.sessions.with_registry(|r| {
                        if ok {
                            r.confirm(target, port, id);
                        } else {
                            r.release(target, port, id);
                        }
                    });
                }
                _ => {}
            }
            if !self.to_client(message).await {
                return Ended::ClientGone;
            }
        }
    }

    async fn withhold_env(&self, vars: &mut std::collections::BTreeMap<String, String>) {
        let policies = self.ctx.policies.current();
        let mut withheld: Vec<(String, String)> = Vec::new();
        vars.retain(
            |name, _| match policies.env_excluded(&self.ctx.target, name) {
                Some(label) => {
                    withheld.push((name.clone(), label.to_owned()));
                    false
                }
                None => true,
            },
        );
        for (name, label) in withheld {
            self.tell_once(
                LogLevel::Info,
                format!(
                    "{name} withheld from {} by {label} (env_exclude)",
                    self.ctx.target
                ),
            )
            .await;
        }
    }
}

/// `remora session ls` / `kill`, answered by the operator itself.
pub fn session_control(
    sessions: &Sessions,
    user: &str,
    request: &SessionRequest,
) -> RemoteResult<Response> {
    match request {
        SessionRequest::List => Ok(SessionReply::Sessions(sessions.list())),
        SessionRequest::Kill { id } => {
            tracing::info!(victim = %id, by = %user, "killing a session on request");
            sessions
                .kill(*id, format!("session killed by {user}"))
                .map(|()| SessionReply::Killed)
        }
    }
    .map(Response::Session)
}

#[cfg(test)]
mod tests;

/// The name asked in a DNS message's first question (lowercase, no
/// trailing dot); `None` when the message has none or is malformed.
fn question_name(msg: &[u8]) -> Option<String> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            break;
        }
        // A question name is never compressed.
        if len > 63 {
            return None;
        }
        let label = msg.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + len;
    }
    Some(labels.join("."))
}
