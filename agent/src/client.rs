//! One client connection: the handshake, then a loop that dispatches its
//! frames (requests, outgoing streams, incoming subscriptions) while a writer
//! task sends everything back. A client's failure never touches another.

use crate::dns::DnsApi;
use crate::env::read_env;
use crate::fs::policy::FsPolicy;
use crate::fs::{self, FsApi};
use crate::handshake::{self, Negotiated};
use crate::incoming::{ClientIncoming, IncomingApi};
use crate::namespace::TargetNamespaces;
use crate::net::NetApi;
use crate::outgoing::Outgoing;
use crate::pool::NsPool;
use crate::server::ShutdownHandle;
use crate::session::SessionRegistry;
use bytes::Buf;
use futures::{SinkExt, StreamExt};
use remora_protocol::codec::{FrameCodec, FrameQueue, LinkCodec};
use remora_protocol::fs::FsRequest;
use remora_protocol::incoming::IncomingClient;
use remora_protocol::session::{SessionReply, SessionRequest};
use remora_protocol::{
    Capabilities, ClientMessage, CodecError, ErrorCode, Hello, HelloReply, RemoteError,
    RemoteResult, Request, RequestId, Response, ServerMessage, SessionId, SessionToken,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{Framed, FramedParts, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Server messages queued for one client's socket.
pub const OUTBOUND_CAPACITY: usize = 256;

/// Bytes of queued frames gathered into one (vectored) write: several data
/// chunks per system call when the socket is the bottleneck.
const WRITE_BATCH: usize = 256 * 1024;

/// Requests of one client being worked on at once; beyond that the agent
/// stops reading that client's frames until one finishes.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 64;

/// How long a new connection may take to say `Hello`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the last frames (e.g. `Closing`) get to reach a client that is
/// being closed.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the clients of one agent share.
#[derive(Debug)]
pub(crate) struct AgentContext {
    pub target: String,
    pub token: SessionToken,
    pub ns: Arc<dyn TargetNamespaces>,
    pub pool: NsPool,
    pub net: NetApi,
    pub dns: DnsApi,
    pub incoming: IncomingApi,
    pub sessions: SessionRegistry,
    pub shutdown: ShutdownHandle,
}

type HelloFramed = Framed<TcpStream, FrameCodec<Hello, HelloReply>>;
type LinkFramed = Framed<TcpStream, FrameCodec<ClientMessage, ServerMessage>>;
/// The client's frames, once the link is split for the writer task.
type LinkFrames = FramedRead<OwnedReadHalf, LinkCodec<ClientMessage, ServerMessage>>;

/// Serve one TCP connection until it ends.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<AgentContext>) {
    let _ = stream.set_nodelay(true);
    let mut framed: HelloFramed = Framed::new(stream, FrameCodec::default());
    let hello = tokio::select! {
        _ = ctx.shutdown.token().cancelled() => return,
        hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next()) => hello,
    };
    let hello = match hello {
        Err(_) => {
            tracing::info!(%peer, "no Hello within {}s; closing", HANDSHAKE_TIMEOUT.as_secs());
            return;
        }
        Ok(None) | Ok(Some(Err(CodecError::Io(_)))) => return,
        Ok(Some(Err(e))) => {
            tracing::warn!(%peer, error = %e, "undecodable Hello; closing");
            let _ = framed
                .send(handshake::rejected(format!("undecodable Hello: {e}")))
                .await;
            return;
        }
        Ok(Some(Ok(hello))) => hello,
    };
    let negotiated = match handshake::evaluate(&hello, &ctx.token, &ctx.target) {
        Ok(negotiated) => negotiated,
        Err(reason) => {
            tracing::warn!(%peer, user = %hello.client.user, %reason, "session refused");
            let _ = framed.send(handshake::rejected(reason)).await;
            return;
        }
    };
    let user = hello.client.user.clone();
    let (session, kill_rx) = ctx.sessions.register(&user, &ctx.target);
    let id = session.id();
    let span = tracing::info_span!("session", %id, %user);
    async move {
        if let Err(e) = framed.send(handshake::accepted(negotiated, id)).await {
            tracing::info!(error = %e, "client left during the handshake");
            return;
        }
        tracing::info!(
            %peer,
            host = %hello.client.hostname,
            program = %hello.client.program,
            version = %hello.client.remora_version,
            "session started"
        );
        // Keeps whatever the client sent right after its Hello.
        let link: LinkFramed = framed.map_codec(|_| FrameCodec::default());
        ClientTask::new(ctx, negotiated, id, user)
            .run(link, kill_rx)
            .await;
        drop(session);
    }
    .instrument(span)
    .await;
}

/// How a client's session ended.
#[derive(Debug)]
enum Ended {
    /// The connection closed or broke.
    Gone,
    /// The client said `Bye`.
    Bye,
    /// Closed by the agent; the client is told why.
    Closed(String),
}

/// Owns one client's state: its handle table, its outgoing and incoming
/// connections and its request budget.
struct ClientTask {
    ctx: Arc<AgentContext>,
    negotiated: Negotiated,
    user: String,
    /// Cancelled when the session ends (and when the agent shuts down).
    token: CancellationToken,
    /// request tasks, connections --server messages--> writer task
    out_tx: mpsc::Sender<ServerMessage>,
    out_rx: Option<mpsc::Receiver<ServerMessage>>,
    requests: Arc<Semaphore>,
    fs: FsApi,
    outgoing: Outgoing,
    incoming: ClientIncoming,
}

impl ClientTask {
    fn new(
        ctx: Arc<AgentContext>,
        negotiated: Negotiated,
        session: SessionId,
        user: String,
    ) -> Self {
        let token = ctx.shutdown.token().child_token();
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let outgoing = Outgoing::new(
            ctx.net.clone(),
            ctx.pool.clone(),
            ctx.target.clone(),
            negotiated.capabilities,
            out_tx.clone(),
            token.clone(),
        );
        let incoming = ClientIncoming::new(
            ctx.incoming.clone(),
            session,
            user.clone(),
            negotiated.capabilities,
            out_tx.clone(),
            token.clone(),
        );
        ClientTask {
            fs: FsApi::new(ctx.pool.clone()),
            ctx,
            negotiated,
            user,
            token,
            out_tx,
            out_rx: Some(out_rx),
            requests: Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT)),
            outgoing,
            incoming,
        }
    }

    async fn run(mut self, link: LinkFramed, mut kill_rx: mpsc::Receiver<String>) {
        let Some(out_rx) = self.out_rx.take() else {
            return;
        };
        // The writer writes data payloads as they are (no copy into a
        // codec's buffer); the reader keeps what followed the handshake and
        // hands large uploads on as slices of its buffer ([`LinkCodec`]).
        let FramedParts { io, read_buf, .. } = link.into_parts();
        let (reader, writer) = io.into_split();
        let mut frames = FramedRead::new(reader, LinkCodec::default());
        *frames.read_buffer_mut() = read_buf;
        let mut writer = tokio::spawn(write_loop(writer, out_rx));
        let token = self.token.clone();
        let ended = tokio::select! {
            ended = self.read_loop(&mut frames) => ended,
            _ = token.cancelled() => Ended::Closed(self.ctx.shutdown.reason()),
            Some(reason) = kill_rx.recv() => Ended::Closed(reason),
        };

        // Stop every request and connection of this client first, so that
        // nothing follows the `Closing` frame.
        self.token.cancel();
        match &ended {
            Ended::Closed(reason) => {
                tracing::info!(%reason, "closing the session");
                let closing = ServerMessage::Closing {
                    reason: reason.clone(),
                };
                let _ = tokio::time::timeout(FLUSH_TIMEOUT, self.out_tx.send(closing)).await;
            }
            Ended::Bye => tracing::info!("client said goodbye"),
            Ended::Gone => tracing::info!("client disconnected"),
        }
        let closed = self.fs.close_all();
        let connections = self.outgoing.active() + self.incoming.active();
        drop(self);
        if tokio::time::timeout(FLUSH_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        tracing::info!(
            files = closed,
            connections,
            "session ended; its files and connections are released"
        );
    }

    async fn read_loop(&mut self, frames: &mut LinkFrames) -> Ended {
        loop {
            let message = match frames.next().await {
                None | Some(Err(CodecError::Io(_))) => return Ended::Gone,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "undecodable frame from the client");
                    return Ended::Closed(format!("the agent could not read a frame: {e}"));
                }
                Some(Ok(message)) => message,
            };
            match message {
                ClientMessage::Request { id, request } => self.request(id, request).await,
                ClientMessage::Outgoing(message) => self.outgoing.handle(message).await,
                ClientMessage::Incoming(message) => self.incoming.handle(message).await,
                ClientMessage::Bye => return Ended::Bye,
                // The override wish is the operator's business (it owns the
                // registry of competing sessions); here it is a subscription.
                ClientMessage::SubscribeOverride { port, mode, filter } => {
                    let subscribe = IncomingClient::Subscribe { port, mode, filter };
                    self.incoming.handle(subscribe).await
                }
                ClientMessage::SessionPolicy(policy) => {
                    if !self
                        .negotiated
                        .capabilities
                        .contains(Capabilities::SESSION_POLICY)
                    {
                        return Ended::Closed(
                            "a session policy arrived on a session that did not negotiate it"
                                .into(),
                        );
                    }
                    match FsPolicy::compile(&policy) {
                        Ok(compiled) => {
                            tracing::info!(
                                fs_not_found = policy.fs_not_found.len(),
                                hide_process_env = policy.hide_process_env.is_some(),
                                "session policy in force"
                            );
                            self.fs.set_policy(compiled);
                        }
                        // Fail closed: no file request may run unchecked.
                        Err(reason) => {
                            return Ended::Closed(format!("invalid session policy: {reason}"));
                        }
                    }
                }
            }
        }
    }

    /// Run a request as its own task, within the client's request budget.
    async fn request(&self, id: RequestId, request: Request) {
        let Ok(permit) = self.requests.clone().acquire_owned().await else {
            return; // Never closed.
        };
        let worker = RequestWorker {
            ctx: self.ctx.clone(),
            capabilities: self.negotiated.capabilities,
            user: self.user.clone(),
            fs: self.fs.clone(),
        };
        let token = self.token.clone();
        let out_tx = self.out_tx.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                let reply = tokio::select! {
                    _ = token.cancelled() => return,
                    result = worker.execute(request) => ServerMessage::Response { id, result },
                };
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = out_tx.send(reply) => {}
                }
            }
            .in_current_span(),
        );
    }
}

/// What a request task needs to answer one request.
struct RequestWorker {
    ctx: Arc<AgentContext>,
    capabilities: Capabilities,
    user: String,
    fs: FsApi,
}

impl RequestWorker {
    async fn execute(self, request: Request) -> RemoteResult<Response> {
        match request {
            Request::Fs(mut request) => {
                self.need(Capabilities::FILES, "file access")?;
                match request {
                    FsRequest::Fsync { .. } => self.need(Capabilities::FILE_SYNC, "fsync")?,
                    FsRequest::SetMode { .. }
                    | FsRequest::SetOwner { .. }
                    | FsRequest::SetTimes { .. }
                    | FsRequest::Truncate { .. }
                    | FsRequest::Link { .. }
                    | FsRequest::Symlink { .. }
                    | FsRequest::StatFs { .. } => {
                        self.need(Capabilities::FILE_METADATA, "file metadata changes")?
                    }
                    _ => {}
                }
                if let FsRequest::Open(open) = &mut request
                    && !self.capabilities.contains(Capabilities::FILE_SNAPSHOT)
                {
                    open.snapshot_limit = 0;
                }
                self.fs.handle(request).await.map(Response::Fs)
            }
            Request::Lookup(request) => {
                self.need(Capabilities::DNS, "DNS")?;
                self.ctx.dns.lookup(request).await.map(Response::Lookup)
            }
            Request::Reverse(request) => {
                self.need(Capabilities::DNS, "DNS")?;
                self.ctx.dns.reverse(request).await.map(Response::Reverse)
            }
            Request::DnsQuery(request) => {
                self.need(Capabilities::DNS_QUERY, "raw DNS queries")?;
                self.ctx.dns.query(request).await.map(Response::DnsAnswer)
            }
            Request::Hostname => fs::hostname(&self.ctx.pool).await.map(Response::Hostname),
            Request::Env(request) => {
                self.need(Capabilities::ENV, "the environment")?;
                read_env(&self.ctx.ns.proc_dir(), &request)
                    .await
                    .map(Response::Env)
            }
            Request::Db(_) => Err(RemoteError::new(
                ErrorCode::Unsupported,
                "database branches are made by the operator: set `operator` (or --operator)",
            )),
            Request::Queues(_) => Err(RemoteError::new(
                ErrorCode::Unsupported,
                "queues are split by the operator: set `operator` (or --operator)",
            )),
            Request::Session(request) => {
                self.need(Capabilities::SESSIONS, "session control")?;
                match request {
                    SessionRequest::List => Ok(SessionReply::Sessions(self.ctx.sessions.list())),
                    SessionRequest::Kill { id } => {
                        let reason = format!("killed by {}", self.user);
                        tracing::info!(victim = %id, "killing a session on request");
                        self.ctx.sessions.kill(id, reason)?;
                        Ok(SessionReply::Killed)
                    }
                }
                .map(Response::Session)
            }
            Request::Ping => Ok(Response::Pong),
        }
    }

    fn need(&self, capability: Capabilities, what: &str) -> RemoteResult<()> {
        if self.capabilities.contains(capability) {
            Ok(())
        } else {
            Err(RemoteError::new(
                ErrorCode::Unsupported,
                format!("{what} was not negotiated for this session"),
            ))
        }
    }
}

/// Writes the client's outbound queue to its socket: what is queued when
/// the socket is free goes out in one vectored write (up to
/// [`WRITE_BATCH`]), each large data payload as it is ([`FrameQueue`]).
/// Stops after a `Closing` frame, when the queue closes, or on a write error.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut out_rx: mpsc::Receiver<ServerMessage>,
) {
    let mut frames = FrameQueue::default();
    while let Some(message) = out_rx.recv().await {
        let mut next = Some(message);
        let mut last = false;
        while let Some(message) = next.take() {
            last = matches!(message, ServerMessage::Closing { .. });
            if let Err(e) = frames.push(&message) {
                tracing::debug!(error = %e, "cannot write to the client");
                return;
            }
            if !last && frames.remaining() < WRITE_BATCH {
                next = out_rx.try_recv().ok();
            }
        }
        if let Err(e) = writer.write_all_buf(&mut frames).await {
            tracing::debug!(error = %e, "cannot write to the client");
            return;
        }
        if last {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests;
