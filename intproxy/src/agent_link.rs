//! The intproxy's single connection to the agent, as an actor.
//!
//! [`AgentLinkTask`] owns the framed connection and the tables of in-flight
//! requests and open streams; everything else talks to it through an
//! [`AgentApi`]. When the link dies every waiter gets an `Unavailable` error
//! at once and later calls fail immediately, so nothing ever hangs on a dead
//! agent.

use crate::error::{Error, Result};
pub use crate::flow::StreamFlow;
use crate::flow::{Admit, Route};
use crate::{AgentEndpoint, AgentStream, IntProxyConfig};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use remora_protocol::codec::{FrameCodec, LinkCodec};
use remora_protocol::fs::{FsReply, FsRequest};
use remora_protocol::handshake::PROTOCOL_VERSION;
use remora_protocol::incoming::{
    HttpFilter, HttpRequestHead, HttpResponseHead, IncomingClient, IncomingMode, IncomingServer,
    RemotePort,
};
use remora_protocol::outgoing::{Connected, OutgoingClient, OutgoingServer};
use remora_protocol::session::LogLevel;
use remora_protocol::{
    Capabilities, ClientMessage, ConnectionId, ErrorCode, Hello, HelloReply, HttpRequestId,
    RemoteAddr, RemoteError, RemoteResult, Request, RequestId, Response, ServerMessage,
};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

/// Most queued commands written out with one flush.
const MAX_BATCH: usize = 64;

/// errno of a peer that broke the protocol (Linux `EPROTO`).
const PROTOCOL_ERROR: i32 = 71;

/// Commands queued to the link task. Bounded: callers wait when the agent is slow.
const COMMAND_CAPACITY: usize = 1024;

/// What happens on an outgoing stream, as seen from the agent.
#[derive(Debug)]
pub enum StreamEvent {
    Data(Bytes),
    ShutdownWrite,
    Closed(Option<RemoteError>),
}

#[derive(Debug)]
enum Command {
    Request {
        request: Request,
        reply: oneshot::Sender<RemoteResult<Response>>,
    },
    Connect {
        transport: remora_protocol::net::Transport,
        remote: RemoteAddr,
        /// agent --stream events--> interceptor task
        events_tx: mpsc::Sender<StreamEvent>,
        route: Route,
        reply: oneshot::Sender<RemoteResult<(ConnectionId, Connected)>>,
    },
    Send(ClientMessage),
    Subscribe {
        port: RemotePort,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
        /// agent --incoming events of this port--> the port's task
        events_tx: mpsc::Sender<IncomingEvent>,
        reply: oneshot::Sender<RemoteResult<()>>,
    },
}

/// Incoming traffic of one subscribed port, as the agent reports it.
#[derive(Debug)]
pub enum IncomingEvent {
    NewConnection {
        conn: ConnectionId,
        peer: SocketAddr,
        local: SocketAddr,
        flow: StreamFlow,
    },
    Data {
        conn: ConnectionId,
        data: Bytes,
    },
    ShutdownWrite {
        conn: ConnectionId,
    },
    Closed {
        conn: ConnectionId,
    },
    /// An HTTP request that matched the subscription's filter, with the
    /// credit of its answer's body and of its own.
    Request {
        request: HttpRequestId,
        peer: SocketAddr,
        head: HttpRequestHead,
        flow: StreamFlow,
    },
    /// A piece of a request's body; `last` ends it.
    RequestBody {
        request: HttpRequestId,
        chunk: Bytes,
        last: bool,
    },
    /// The HTTP client went away: stop answering `request`.
    RequestCancelled {
        request: HttpRequestId,
    },
    /// `request` was answered 101: from now on it is raw connection `conn`.
    Upgraded {
        request: HttpRequestId,
        conn: ConnectionId,
        flow: StreamFlow,
    },
}

/// Events buffered per subscribed port (connection events and data chunks).
pub const INCOMING_EVENT_CAPACITY: usize = 256;

/// Cheap, cloneable handle to the link.
#[derive(Debug, Clone)]
pub struct AgentApi {
    /// callers --commands--> link task
    command_tx: mpsc::Sender<Command>,
    dead: Arc<Mutex<Option<String>>>,
    /// The agent negotiated per-stream credit ([`crate::flow`]).
    flow_control: bool,
    /// ...and per-request credit for HTTP bodies (v4).
    http_flow_control: bool,
}

fn unavailable(reason: &str) -> RemoteError {
    RemoteError::new(
        ErrorCode::Unavailable,
        format!("remora agent unavailable: {reason}"),
    )
}

impl AgentApi {
    fn dead_error(&self) -> RemoteError {
        let reason = self.dead.lock().ok().and_then(|d| d.clone());
        unavailable(reason.as_deref().unwrap_or("connection closed"))
    }

    /// Why the link to the agent is gone, once it is.
    pub fn lost(&self) -> Option<String> {
        self.dead.lock().ok().and_then(|d| d.clone())
    }

    /// Send a request and wait for its reply.
    pub async fn request(&self, request: Request) -> RemoteResult<Response> {
        let (reply, rx) = oneshot::channel();
        if self
            .command_tx
            .send(Command::Request { request, reply })
            .await
            .is_err()
        {
            return Err(self.dead_error());
        }
        rx.await.unwrap_or_else(|_| Err(self.dead_error()))
    }

    /// Whether streams follow per-stream credit.
    pub fn flow_control(&self) -> bool {
        self.flow_control
    }

    /// Whether the bodies of taken HTTP requests follow per-request credit.
    pub fn http_flow_control(&self) -> bool {
        self.http_flow_control
    }

    /// Send `msg` without waiting for room on the link (from code that
    /// cannot wait, such as a body being polled); dropped if the link ends.
    pub fn send_incoming_later(&self, msg: IncomingClient) {
        let command_tx = self.command_tx.clone();
        tokio::spawn(async move {
            let _ = command_tx
                .send(Command::Send(ClientMessage::Incoming(msg)))
                .await;
        });
    }

    /// Open a stream from the target; returns its id, what the target says
    /// about it, the receiver of its events and its credit.
    pub async fn connect(
        &self,
        transport: remora_protocol::net::Transport,
        remote: RemoteAddr,
    ) -> RemoteResult<(
        ConnectionId,
        Connected,
        mpsc::Receiver<StreamEvent>,
        StreamFlow,
    )> {
        let route = Route::new(self.flow_control);
        let flow = route.flow();
        let (events_tx, events_rx) = mpsc::channel(route.inbound.queue_capacity());
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Connect {
            transport,
            remote,
            events_tx,
            route,
            reply,
        };
        if self.command_tx.send(cmd).await.is_err() {
            return Err(self.dead_error());
        }
        let (conn, connected) = rx.await.unwrap_or_else(|_| Err(self.dead_error()))?;
        Ok((conn, connected, events_rx, flow))
    }

    /// Subscribe a port of the target; incoming connections arrive on the
    /// returned receiver.
    pub async fn subscribe(
        &self,
        port: RemotePort,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
    ) -> RemoteResult<mpsc::Receiver<IncomingEvent>> {
        let (events_tx, events_rx) = mpsc::channel(INCOMING_EVENT_CAPACITY);
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Subscribe {
            port,
            mode,
            filter,
            events_tx,
            reply,
        };
        if self.command_tx.send(cmd).await.is_err() {
            return Err(self.dead_error());
        }
        rx.await.unwrap_or_else(|_| Err(self.dead_error()))?;
        Ok(events_rx)
    }

    /// Send an incoming-traffic message (data back to a peer, unsubscribe...).
    pub async fn send_incoming(&self, msg: IncomingClient) -> RemoteResult<()> {
        self.command_tx
            .send(Command::Send(ClientMessage::Incoming(msg)))
            .await
            .map_err(|_| self.dead_error())
    }

    /// Send the head of the local app's response to a stolen HTTP request.
    pub async fn send_response_head(
        &self,
        request: HttpRequestId,
        head: HttpResponseHead,
    ) -> RemoteResult<()> {
        self.send_incoming(IncomingClient::ResponseHead { request, head })
            .await
    }

    /// Send a piece of a response body (at most `MAX_CHUNK` bytes); `last`
    /// ends the response.
    pub async fn send_response_body(
        &self,
        request: HttpRequestId,
        chunk: Bytes,
        last: bool,
    ) -> RemoteResult<()> {
        self.send_incoming(IncomingClient::ResponseBody {
            request,
            chunk,
            last,
        })
        .await
    }

    /// Tell the agent the local app could not answer `request` (it answers
    /// 502 when no head was sent yet, and aborts the response otherwise).
    pub async fn send_response_failed(
        &self,
        request: HttpRequestId,
        reason: String,
    ) -> RemoteResult<()> {
        self.send_incoming(IncomingClient::ResponseFailed { request, reason })
            .await
    }

    /// Send a stream message (data, shutdown, close). Errors mean the link is gone.
    pub async fn send(&self, msg: OutgoingClient) -> RemoteResult<()> {
        self.command_tx
            .send(Command::Send(ClientMessage::Outgoing(msg)))
            .await
            .map_err(|_| self.dead_error())
    }
}

/// The link's codec hands a large data message's payload on as a slice of
/// the read buffer ([`LinkCodec`]).
type AgentFramed = Framed<Box<dyn AgentStream>, LinkCodec<ServerMessage, ClientMessage>>;

/// Open the stream to the agent: a TCP connection, or the dialer's stream
/// (a port-forward WebSocket, with no local socket in between).
async fn open(endpoint: &AgentEndpoint) -> std::io::Result<Box<dyn AgentStream>> {
    match endpoint {
        AgentEndpoint::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true).ok();
            Ok(Box::new(stream))
        }
        AgentEndpoint::Dial(dialer) => (dialer.dial)().await,
    }
}

/// Connect, handshake and start the link task.
pub async fn connect(config: &IntProxyConfig) -> Result<AgentApi> {
    let addr = config.agent.to_string();
    let stream = open(&config.agent)
        .await
        .map_err(|source| Error::AgentConnect {
            addr: addr.clone(),
            source,
        })?;
    let mut hs = Framed::new(stream, FrameCodec::<HelloReply, Hello>::default());
    let hello = Hello {
        version: PROTOCOL_VERSION,
        capabilities: Capabilities::ALL,
        token: config.agent_token.clone(),
        client: config.identity.clone(),
        target: config.target.clone(),
    };
    let handshake_error = |reason: String| Error::Handshake {
        addr: addr.clone(),
        reason,
    };
    hs.send(hello)
        .await
        .map_err(|e| handshake_error(e.to_string()))?;
    let capabilities = match hs.next().await {
        Some(Ok(HelloReply::Accepted {
            version,
            capabilities,
            ..
        })) => {
            remora_protocol::handshake::check_accepted(version, "the agent (or operator)")
                .map_err(handshake_error)?;
            // Messages added after v1 go only to a peer that negotiated them.
            if config.override_filters && !capabilities.contains(Capabilities::SUBSCRIBE_OVERRIDE) {
                return Err(handshake_error(format!(
                    "taking ports over (--override-filter) needs a server that negotiates it \
                     (protocol v2); it speaks {version}, this remora speaks {PROTOCOL_VERSION}: \
                     upgrade the agent or operator"
                )));
            }
            // Credit messages are v3 (streams) and v4 (HTTP bodies) variants,
            // and `Request::DnsQuery` is v4, whatever bits a relay passed on.
            let mut capabilities = capabilities;
            if version < remora_protocol::ProtocolVersion(3) {
                capabilities = Capabilities(capabilities.0 & !Capabilities::FLOW_CONTROL.0);
            }
            if version < remora_protocol::ProtocolVersion(4) {
                capabilities = Capabilities(capabilities.0 & !Capabilities::HTTP_FLOW_CONTROL.0);
                capabilities = Capabilities(capabilities.0 & !Capabilities::DNS_QUERY.0);
            }
            capabilities
        }
        Some(Ok(HelloReply::Rejected {
            reason,
            server_protocol,
            server_version,
        })) => {
            return Err(Error::Rejected {
                reason,
                server_version,
                server_protocol: server_protocol.to_string(),
                ours: PROTOCOL_VERSION.to_string(),
            });
        }
        Some(Err(e)) => return Err(handshake_error(e.to_string())),
        None => return Err(handshake_error("connection closed during handshake".into())),
    };
    let framed: AgentFramed = hs.map_codec(|_| LinkCodec::default());
    let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
    let dead = Arc::new(Mutex::new(None));
    let flow_control = capabilities.contains(Capabilities::FLOW_CONTROL);
    let http_flow_control = capabilities.contains(Capabilities::HTTP_FLOW_CONTROL);
    let task = AgentLinkTask {
        framed,
        command_rx,
        next_request: 1,
        next_conn: 1,
        pending: HashMap::new(),
        connecting: HashMap::new(),
        streams: HashMap::new(),
        subscribing: HashMap::new(),
        ports: HashMap::new(),
        incoming_conns: HashMap::new(),
        http_requests: HashMap::new(),
        closing: HashSet::new(),
        dead: dead.clone(),
        override_filters: config.override_filters,
        capabilities,
    };
    tokio::spawn(task.run());
    Ok(AgentApi {
        command_tx,
        dead,
        flow_control,
        http_flow_control,
    })
}

type ConnectReply = oneshot::Sender<RemoteResult<(ConnectionId, Connected)>>;

/// Owns the connection and the routing tables.
struct AgentLinkTask {
    framed: AgentFramed,
    command_rx: mpsc::Receiver<Command>,
    next_request: u64,
    next_conn: u64,
    pending: HashMap<RequestId, oneshot::Sender<RemoteResult<Response>>>,
    connecting: HashMap<ConnectionId, (mpsc::Sender<StreamEvent>, Route, ConnectReply)>,
    streams: HashMap<ConnectionId, (mpsc::Sender<StreamEvent>, Route)>,
    subscribing: HashMap<
        RemotePort,
        (
            mpsc::Sender<IncomingEvent>,
            oneshot::Sender<RemoteResult<()>>,
        ),
    >,
    ports: HashMap<RemotePort, mpsc::Sender<IncomingEvent>>,
    /// Ports unsubscribed while some of their HTTP requests were in flight:
    /// they take nothing new, but their task keeps getting those requests'
    /// events (body, cancellation) until the last one is done, as a server
    /// that stops listening still serves the connections it accepted.
    closing: HashSet<RemotePort>,
    /// Which port each incoming connection belongs to, and its credit.
    incoming_conns: HashMap<ConnectionId, (RemotePort, Route)>,
    /// Which port each stolen HTTP request belongs to, and its credit, until
    /// its response is done (last body chunk or failure) or it is cancelled.
    http_requests: HashMap<HttpRequestId, (RemotePort, Route)>,
    /// What the agent (or operator) said it implements: messages beyond
    /// protocol v1 are only sent when it has their capability bit.
    capabilities: Capabilities,
    dead: Arc<Mutex<Option<String>>>,
    /// Subscribe with [`ClientMessage::SubscribeOverride`].
    override_filters: bool,
}

impl AgentLinkTask {
    async fn run(mut self) {
        let reason = loop {
            tokio::select! {
                cmd = self.command_rx.recv() => match cmd {
                    Some(cmd) => if let Err(e) = self.on_commands(cmd).await {
                        break format!("sending to the agent: {e}");
                    },
                    // Every handle dropped: orderly goodbye.
                    None => {
                        let _ = self.framed.send(ClientMessage::Bye).await;
                        break "intproxy shutting down".to_string();
                    }
                },
                msg = self.framed.next() => match msg {
                    Some(Ok(ServerMessage::Closing { reason })) => {
                        eprintln!("remora: the agent ended the session: {reason}");
                        break reason;
                    }
                    Some(Ok(msg)) => self.on_message(msg).await,
                    Some(Err(e)) => break format!("reading from the agent: {e}"),
                    None => break "the agent closed the connection".to_string(),
                },
            }
        };
        self.shut_down(&reason);
    }

    /// Handle `cmd` and whatever else is queued already, then write them out
    /// at once: one system call for a burst of messages, not one each.
    async fn on_commands(&mut self, cmd: Command) -> Result<(), remora_protocol::CodecError> {
        self.on_command(cmd).await?;
        let mut batched = 1;
        while batched < MAX_BATCH {
            let Ok(cmd) = self.command_rx.try_recv() else {
                break;
            };
            self.on_command(cmd).await?;
            batched += 1;
        }
        self.framed.flush().await
    }

    /// Queue the frames of one command (written by [`Self::on_commands`]).
    async fn on_command(&mut self, cmd: Command) -> Result<(), remora_protocol::CodecError> {
        match cmd {
            Command::Request { request, reply } => {
                if let Request::Fs(FsRequest::Fsync { .. }) = request
                    && !self.capabilities.contains(Capabilities::FILE_SYNC)
                {
                    // A v1 agent cannot sync; its writes were synchronous
                    // already, as they were before v2.
                    let _ = reply.send(Ok(Response::Fs(FsReply::Done)));
                    return Ok(());
                }
                if let Request::DnsQuery(_) = request
                    && !self.capabilities.contains(Capabilities::DNS_QUERY)
                {
                    // An older agent could not decode it.
                    let _ = reply.send(Err(remora_protocol::RemoteError::new(
                        remora_protocol::ErrorCode::Unsupported,
                        "the agent is too old for raw DNS queries (res_query); upgrade it",
                    )));
                    return Ok(());
                }
                let id = RequestId(self.next_request);
                self.next_request += 1;
                self.pending.insert(id, reply);
                self.framed
                    .feed(ClientMessage::Request { id, request })
                    .await
            }
            Command::Connect {
                transport,
                remote,
                events_tx,
                route,
                reply,
            } => {
                let conn = ConnectionId(self.next_conn);
                self.next_conn += 1;
                self.connecting.insert(conn, (events_tx, route, reply));
                self.framed
                    .feed(ClientMessage::Outgoing(OutgoingClient::Connect {
                        conn,
                        transport,
                        remote,
                    }))
                    .await
            }
            Command::Subscribe {
                port,
                mode,
                filter,
                events_tx,
                reply,
            } => {
                self.subscribing.insert(port, (events_tx, reply));
                let can_override = self.capabilities.contains(Capabilities::SUBSCRIBE_OVERRIDE);
                if self.override_filters && !can_override {
                    tracing::warn!(
                        "the agent or operator predates filter overrides (protocol v1): \
                         subscribing port {port:?} without --override-filter"
                    );
                }
                let subscribe = if self.override_filters && can_override {
                    ClientMessage::SubscribeOverride { port, mode, filter }
                } else {
                    ClientMessage::Incoming(IncomingClient::Subscribe { port, mode, filter })
                };
                self.framed.feed(subscribe).await
            }
            Command::Send(msg) => {
                if let ClientMessage::Incoming(IncomingClient::Unsubscribe { port }) = &msg {
                    self.unsubscribed(*port);
                }
                if let ClientMessage::Incoming(IncomingClient::Close { conn }) = &msg {
                    self.incoming_conns.remove(conn);
                }
                if let ClientMessage::Incoming(
                    IncomingClient::ResponseBody {
                        request,
                        last: true,
                        ..
                    }
                    | IncomingClient::ResponseFailed { request, .. },
                ) = &msg
                {
                    self.request_done(*request);
                }
                if let ClientMessage::Outgoing(OutgoingClient::Close { conn }) = &msg {
                    self.streams.remove(conn);
                }
                self.framed.feed(msg).await
            }
        }
    }

    async fn on_message(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::Response { id, result } => {
                if let Some(reply) = self.pending.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            ServerMessage::Outgoing(OutgoingServer::Connected { conn, result }) => {
                if let Some((events_tx, route, reply)) = self.connecting.remove(&conn) {
                    match result {
                        Ok(connected) => {
                            self.streams.insert(conn, (events_tx, route));
                            if reply.send(Ok((conn, connected))).is_err() {
                                // The requester gave up: release the stream.
                                self.streams.remove(&conn);
                                let _ = self
                                    .framed
                                    .send(ClientMessage::Outgoing(OutgoingClient::Close { conn }))
                                    .await;
                            }
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
            ServerMessage::Outgoing(OutgoingServer::Data { conn, data }) => {
                self.deliver(conn, StreamEvent::Data(data)).await;
            }
            ServerMessage::Outgoing(OutgoingServer::ShutdownWrite { conn }) => {
                self.deliver(conn, StreamEvent::ShutdownWrite).await;
            }
            ServerMessage::Outgoing(OutgoingServer::Closed { conn, error }) => {
                self.deliver(conn, StreamEvent::Closed(error)).await;
                self.streams.remove(&conn);
            }
            ServerMessage::Outgoing(OutgoingServer::Credit { conn, bytes }) => {
                if let Some((_, route)) = self.streams.get(&conn) {
                    route.window.grant(bytes);
                }
            }
            ServerMessage::Incoming(msg) => self.on_incoming(msg).await,
            ServerMessage::Log { level, message } => {
                let prefix = match level {
                    LogLevel::Info => "",
                    LogLevel::Warn => "warning: ",
                    LogLevel::Error => "error: ",
                };
                eprintln!("remora: {prefix}{message}");
            }
            ServerMessage::Closing { .. } => unreachable!("handled by run()"),
        }
    }

    async fn on_incoming(&mut self, msg: IncomingServer) {
        match msg {
            IncomingServer::Subscribed { port, result } => {
                if let Some((events_tx, reply)) = self.subscribing.remove(&port) {
                    if result.is_ok() {
                        // A port still closing is taken over: its task ends
                        // (requests whose body is whole are still answered).
                        self.closing.remove(&port);
                        self.http_requests.retain(|_, (p, _)| *p != port);
                        self.ports.insert(port, events_tx);
                    }
                    let _ = reply.send(result);
                }
            }
            IncomingServer::NewConnection {
                conn,
                port,
                peer,
                local,
            } => {
                if self.closing.contains(&port) {
                    // Nothing listens for it any more.
                    let close = ClientMessage::Incoming(IncomingClient::Close { conn });
                    let _ = self.framed.send(close).await;
                    return;
                }
                let route = Route::new(self.flow_control());
                let flow = route.flow();
                self.incoming_conns.insert(conn, (port, route));
                let event = IncomingEvent::NewConnection {
                    conn,
                    peer,
                    local,
                    flow,
                };
                self.deliver_incoming(conn, event).await;
            }
            IncomingServer::Data { conn, data } => {
                let admit = match self.incoming_conns.get(&conn) {
                    Some((_, route)) => route.inbound.admit(data.len()),
                    None => return,
                };
                if admit == Admit::Violation {
                    self.incoming_violation(conn).await;
                    return;
                }
                self.deliver_incoming(conn, IncomingEvent::Data { conn, data })
                    .await;
            }
            IncomingServer::Credit { conn, bytes } => {
                if let Some((_, route)) = self.incoming_conns.get(&conn) {
                    route.window.grant(bytes);
                }
            }
            IncomingServer::ShutdownWrite { conn } => {
                self.deliver_incoming(conn, IncomingEvent::ShutdownWrite { conn })
                    .await;
            }
            IncomingServer::Closed { conn } => {
                self.deliver_incoming(conn, IncomingEvent::Closed { conn })
                    .await;
                self.incoming_conns.remove(&conn);
            }
            IncomingServer::Request {
                request,
                port,
                peer,
                head,
            } => {
                if !self.ports.contains_key(&port) || self.closing.contains(&port) {
                    // Unsubscribed meanwhile: nobody local can answer.
                    let reason = format!("nothing listens locally for port {} any more", port.0);
                    let _ = self
                        .framed
                        .send(ClientMessage::Incoming(IncomingClient::ResponseFailed {
                            request,
                            reason,
                        }))
                        .await;
                    return;
                }
                let route = Route::new(self.http_flow_control());
                let flow = route.flow();
                self.http_requests.insert(request, (port, route));
                self.deliver_request(
                    request,
                    IncomingEvent::Request {
                        request,
                        peer,
                        head,
                        flow,
                    },
                )
                .await;
            }
            IncomingServer::RequestBody {
                request,
                chunk,
                last,
            } => {
                let admit = match self.http_requests.get(&request) {
                    Some((_, route)) => route.inbound.admit(chunk.len()),
                    None => return,
                };
                if admit == Admit::Violation {
                    tracing::warn!(%request, "the agent sent beyond its credit; request failed");
                    self.deliver_request(request, IncomingEvent::RequestCancelled { request })
                        .await;
                    self.request_done(request);
                    let reason = "the agent sent more request body than its window".to_owned();
                    let failed = IncomingClient::ResponseFailed { request, reason };
                    let _ = self.framed.send(ClientMessage::Incoming(failed)).await;
                    return;
                }
                self.deliver_request(
                    request,
                    IncomingEvent::RequestBody {
                        request,
                        chunk,
                        last,
                    },
                )
                .await;
            }
            IncomingServer::RequestCancelled { request } => {
                self.deliver_request(request, IncomingEvent::RequestCancelled { request })
                    .await;
                self.request_done(request);
            }
            IncomingServer::ResponseCredit { request, bytes } => {
                if let Some((_, route)) = self.http_requests.get(&request) {
                    route.window.grant(bytes);
                }
            }
            IncomingServer::Upgraded { request, conn } => {
                // The upgraded stream's data is routed by connection from now on.
                let route = Route::new(self.flow_control());
                let flow = route.flow();
                if let Some((port, _)) = self.http_requests.get(&request) {
                    self.incoming_conns.insert(conn, (*port, route));
                }
                let event = IncomingEvent::Upgraded {
                    request,
                    conn,
                    flow,
                };
                self.deliver_request(request, event).await;
                // No more HTTP messages come for it.
                self.request_done(request);
            }
        }
    }

    /// The session stopped listening on `port`: no new connection or request
    /// goes to it, its raw connections end, and its task goes once the
    /// requests in flight are done.
    fn unsubscribed(&mut self, port: RemotePort) {
        self.incoming_conns.retain(|_, (p, _)| *p != port);
        if self.http_requests.values().any(|(p, _)| *p == port) {
            self.closing.insert(port);
        } else {
            self.ports.remove(&port);
        }
    }

    /// `request` is answered, failed or cancelled; the last one of a closing
    /// port ends its task.
    fn request_done(&mut self, request: HttpRequestId) {
        let Some((port, _)) = self.http_requests.remove(&request) else {
            return;
        };
        if self.closing.contains(&port) && !self.http_requests.values().any(|(p, _)| *p == port) {
            self.closing.remove(&port);
            self.ports.remove(&port);
        }
    }

    /// Hand an HTTP request event to its port's task.
    async fn deliver_request(&mut self, request: HttpRequestId, event: IncomingEvent) {
        let Some((port, _)) = self.http_requests.get(&request) else {
            return;
        };
        self.deliver_to_port(*port, event).await;
    }

    /// Hand an incoming event to its port's task (waiting applies
    /// backpressure, as for outgoing streams).
    async fn deliver_incoming(&mut self, conn: ConnectionId, event: IncomingEvent) {
        let Some(port) = self.incoming_conns.get(&conn).map(|(port, _)| *port) else {
            return;
        };
        self.deliver_to_port(port, event).await;
    }

    /// The agent sent beyond a connection's credit: the connection ends.
    async fn incoming_violation(&mut self, conn: ConnectionId) {
        tracing::warn!(%conn, "the agent sent beyond its credit; closing the connection");
        self.deliver_incoming(conn, IncomingEvent::Closed { conn })
            .await;
        self.incoming_conns.remove(&conn);
        let close = ClientMessage::Incoming(IncomingClient::Close { conn });
        let _ = self.framed.send(close).await;
    }

    fn flow_control(&self) -> bool {
        self.capabilities.contains(Capabilities::FLOW_CONTROL)
    }

    fn http_flow_control(&self) -> bool {
        self.capabilities.contains(Capabilities::HTTP_FLOW_CONTROL)
    }

    /// Hand an event to a port's task; a gone task unsubscribes the port.
    async fn deliver_to_port(&mut self, port: RemotePort, event: IncomingEvent) {
        let Some(tx) = self.ports.get(&port) else {
            return;
        };
        if tx.send(event).await.is_err() {
            self.ports.remove(&port);
            self.incoming_conns.retain(|_, (p, _)| *p != port);
            self.http_requests.retain(|_, (p, _)| *p != port);
            if !self.closing.remove(&port) {
                let _ = self
                    .framed
                    .send(ClientMessage::Incoming(IncomingClient::Unsubscribe {
                        port,
                    }))
                    .await;
            }
        }
    }

    /// Hand a stream event to its interceptor. With flow control this never
    /// waits: the queue holds a full window. Without it (an older agent),
    /// waiting here makes a slow local reader slow the whole link.
    async fn deliver(&mut self, conn: ConnectionId, event: StreamEvent) {
        if let Some((tx, route)) = self.streams.get(&conn) {
            let admit = match &event {
                StreamEvent::Data(data) => route.inbound.admit(data.len()),
                _ => route.inbound.admit_end(),
            };
            let failed = match admit {
                Admit::Violation => {
                    tracing::warn!(%conn, "the agent sent beyond its credit; closing the stream");
                    let error = RemoteError::new(
                        ErrorCode::Other(PROTOCOL_ERROR),
                        "the agent sent more than the stream's window",
                    );
                    let _ = tx.try_send(StreamEvent::Closed(Some(error)));
                    true
                }
                Admit::Queue => matches!(
                    tx.try_send(event),
                    Err(mpsc::error::TrySendError::Closed(_))
                        | Err(mpsc::error::TrySendError::Full(_))
                ),
                Admit::Wait => tx.send(event).await.is_err(),
            };
            if failed {
                // Interceptor gone: tell the agent to drop the stream.
                self.streams.remove(&conn);
                let _ = self
                    .framed
                    .send(ClientMessage::Outgoing(OutgoingClient::Close { conn }))
                    .await;
            }
        }
    }

    /// Each layer session then tells its process once (see `AgentApi::lost`),
    /// so the user's warning lands on the app's stderr, wherever that goes.
    fn shut_down(mut self, reason: &str) {
        tracing::info!("agent link closed: {reason}");
        if let Ok(mut dead) = self.dead.lock() {
            *dead = Some(reason.to_string());
        }
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(unavailable(reason)));
        }
        for (_, (_, _, reply)) in self.connecting.drain() {
            let _ = reply.send(Err(unavailable(reason)));
        }
        for (_, (_, reply)) in self.subscribing.drain() {
            let _ = reply.send(Err(unavailable(reason)));
        }
        self.ports.clear();
        for (_, (tx, _)) in self.streams.drain() {
            let _ = tx.try_send(StreamEvent::Closed(Some(unavailable(reason))));
        }
        // Commands already queued are answered with errors by their senders
        // noticing the dropped receiver.
        self.command_rx.close();
    }
}
