//! One connection of a port held by **filtered steals**: each HTTP request
//! goes to the first subscriber whose filter takes it (see
//! [`super::filter::Routes`]) and every other request to the original
//! destination, which answers exactly as it would without remora.
//!
//! The first bytes of the connection decide how it is served:
//! * an HTTP/1.x request line: [`h1`], a small HTTP/1 proxy of its own that
//!   forwards requests not taken **byte for byte** over one upstream
//!   connection (no re-serialising), parsing only request and response heads
//!   and body framing;
//! * the HTTP/2 connection preface (prior knowledge, `h2c`): [`h2`], served
//!   by hyper, each stream routed on its own;
//! * anything else (TLS, a protocol where the server speaks first and the
//!   peer stays silent for [`FIRST_BYTES_TIMEOUT`]): passed through raw.
//!
//! # Flow control
//! With a client of protocol v4 ([`Capabilities::HTTP_FLOW_CONTROL`]) each
//! taken request has credit both ways ([`remora_protocol::flow`]):
//! * its body goes to the client chunk by chunk ([`MAX_CHUNK`] at most)
//!   while the request has credit, returned as the local app reads it, so an
//!   app that does not read slows only its own peer;
//! * the answer's parts wait in a queue that holds the client's whole window
//!   and are credited back as they go to the peer, so a peer that does not
//!   read holds only its own answer, for as long as it likes.
//!
//! An older client has no such credit: request bodies go as its bounded link
//! has room, and answer parts wait in a queue of [`RESPONSE_QUEUE_CAPACITY`]
//! (the link gives up a request whose peer stops reading for
//! [`super::session::HTTP_RESPONSE_STALL_TIMEOUT`]).
//!
//! [`Capabilities::HTTP_FLOW_CONTROL`]: remora_protocol::Capabilities::HTTP_FLOW_CONTROL
//! * Requests not taken stream through with one buffer per direction.
//!
//! # Upgrades
//! A taken request that asks for a protocol upgrade (WebSocket) and that the
//! client answers `101` becomes a raw stolen connection: the client gets
//! `Upgraded { request, conn }`, then `Data` both ways as for any stolen
//! connection. Upgrades not taken become a raw tunnel to the original
//! destination.
//!
//! # Limits
//! * An upgraded connection no longer counts against the port's connection
//!   limit.
//! * HTTP/2 requests not taken are re-encoded by hyper (HPACK, frames): the
//!   same requests and answers, not the same bytes.

mod framing;
mod h1;
mod h2;

use super::Subscriber;
use super::conn::Accepted;
use super::task::PortRoutes;
use crate::flow::{CreditReturn, Inbound, SendWindow};
use crate::net::NetApi;
use bytes::{Bytes, BytesMut};
use remora_protocol::flow::MAX_MESSAGES_IN_WINDOW;
use remora_protocol::incoming::{HttpRequestHead, HttpResponseHead, IncomingServer, RemotePort};
use remora_protocol::outgoing::MAX_CHUNK;
use remora_protocol::{HttpRequestId, ServerMessage};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Response parts from a client without HTTP body credit queued for one
/// taken request.
pub const RESPONSE_QUEUE_CAPACITY: usize = 64;

/// How long a taken request waits for the client's `ResponseHead` before
/// the peer gets a 502.
pub const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a new connection may stay silent before it is passed through
/// raw (its protocol is not known until its first bytes).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Ids of taken requests, unique in this agent.
static REQUEST_IDS: AtomicU64 = AtomicU64::new(0);

/// What the client sends for one taken request.
#[derive(Debug)]
pub(super) enum ResponsePart {
    Head(HttpResponseHead),
    Body { chunk: Bytes, last: bool },
    Failed(String),
}

/// One taken request in its client's table.
#[derive(Debug, Clone)]
pub(super) struct RequestEntry {
    /// client --response parts--> the request's task
    pub parts: mpsc::Sender<ResponsePart>,
    /// Credit for the request body to the client.
    pub window: SendWindow,
    /// The client's answer body the agent holds, in credit.
    pub inbound: Inbound,
}

/// A client's taken requests waiting for their answer, by id. Cheap to
/// clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestTable {
    inner: Arc<Mutex<HashMap<HttpRequestId, RequestEntry>>>,
}

impl RequestTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<HttpRequestId, RequestEntry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, request: HttpRequestId) -> Option<RequestEntry> {
        self.lock().get(&request).cloned()
    }

    pub(super) fn remove(&self, request: HttpRequestId) {
        self.lock().remove(&request);
    }
}

/// A request handed to a subscriber. While alive, it is in the
/// subscriber's table; dropped before `done`, it tells the client
/// `RequestCancelled`.
struct PendingRequest {
    request: HttpRequestId,
    subscriber: Subscriber,
    done: bool,
    /// Sends the request body (h2); stops when the request is dropped.
    body: Option<AbortOnDropHandle<()>>,
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        self.subscriber.requests.remove(self.request);
        if !self.done && !self.subscriber.token.is_cancelled() {
            let cancelled = ServerMessage::Incoming(IncomingServer::RequestCancelled {
                request: self.request,
            });
            // Drop cannot wait for room on the link.
            self.subscriber.send_later(cancelled);
        }
    }
}

/// A taken request announced to its subscriber.
struct Taken {
    pending: PendingRequest,
    parts: mpsc::Receiver<ResponsePart>,
    /// Credit for the request body.
    window: SendWindow,
    /// Credit owed to the client for answer parts taken from the queue.
    returner: CreditReturn,
}

impl Taken {
    /// Tell `subscriber` about a new request; `None` when its session is
    /// gone.
    async fn announce(
        subscriber: &Subscriber,
        port: RemotePort,
        peer: SocketAddr,
        head: HttpRequestHead,
    ) -> Option<Taken> {
        let request = HttpRequestId(REQUEST_IDS.fetch_add(1, Ordering::Relaxed) + 1);
        let credit = subscriber.http_flow_control;
        // With credit: every part a whole window holds, the head and a
        // failure.
        let capacity = if credit {
            MAX_MESSAGES_IN_WINDOW + 2
        } else {
            RESPONSE_QUEUE_CAPACITY
        };
        let (part_tx, parts) = mpsc::channel(capacity);
        let (window, inbound) = (SendWindow::new(credit), Inbound::new(credit));
        let returner = inbound.returner();
        let entry = RequestEntry {
            parts: part_tx,
            window: window.clone(),
            inbound,
        };
        subscriber.requests.lock().insert(request, entry);
        let pending = PendingRequest {
            request,
            subscriber: subscriber.clone(),
            done: false,
            body: None,
        };
        let announce = ServerMessage::Incoming(IncomingServer::Request {
            request,
            port,
            peer,
            head,
        });
        send(subscriber, announce).await.then_some(Taken {
            pending,
            parts,
            window,
            returner,
        })
    }

    fn id(&self) -> HttpRequestId {
        self.pending.request
    }

    /// What sends the request body to the subscriber.
    fn body_sender(&self) -> BodySender {
        BodySender {
            subscriber: self.pending.subscriber.clone(),
            request: self.id(),
            window: self.window.clone(),
        }
    }

    /// Wait for the response head. `Err` (the peer gets a 502) when the
    /// client failed, sent nonsense, went away or took too long.
    async fn head(&mut self) -> Result<HttpResponseHead, ()> {
        let id = self.id();
        let token = self.pending.subscriber.token.clone();
        let first = tokio::select! {
            _ = token.cancelled() => None,
            part = tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, self.parts.recv()) => {
                part.ok().flatten()
            }
        };
        match first {
            Some(ResponsePart::Head(head)) => Ok(head),
            Some(ResponsePart::Failed(reason)) => {
                tracing::debug!(request = %id, %reason, "the client failed to answer");
                self.pending.done = true;
                Err(())
            }
            Some(ResponsePart::Body { .. }) => {
                tracing::debug!(request = %id, "response body before its head");
                self.pending.done = true;
                Err(())
            }
            None => {
                // Dropping the request tells the client it is over.
                tracing::debug!(request = %id, "no response head in time");
                Err(())
            }
        }
    }

    /// The next piece of the response body: `Ok(Some((chunk, last)))`,
    /// `Ok(None)` after the last one, `Err` when the client failed or went.
    async fn next_body(&mut self) -> Result<Option<(Bytes, bool)>, String> {
        if self.pending.done {
            return Ok(None);
        }
        let token = self.pending.subscriber.token.clone();
        let part = tokio::select! {
            _ = token.cancelled() => None,
            part = self.parts.recv() => part,
        };
        let result = match part {
            Some(ResponsePart::Body { chunk, last }) => {
                self.pending.done = last;
                // Taken from the queue on its way to the peer: its credit
                // goes back (none is needed after the last part).
                if let Some(bytes) = self.returner.written(chunk.len())
                    && !last
                {
                    let credit = IncomingServer::ResponseCredit {
                        request: self.id(),
                        bytes,
                    };
                    send(&self.pending.subscriber, ServerMessage::Incoming(credit)).await;
                }
                return Ok(Some((chunk, last)));
            }
            Some(ResponsePart::Failed(reason)) => Err(reason),
            Some(ResponsePart::Head(_)) => Err("a second response head".to_owned()),
            None => Err("the client went away mid-response".to_owned()),
        };
        self.pending.done = true;
        result
    }
}

/// Sends the body of a taken request to its subscriber.
struct BodySender {
    subscriber: Subscriber,
    request: HttpRequestId,
    window: SendWindow,
}

impl BodySender {
    /// One chunk of the body (`last` once, at the end), once the request has
    /// credit for it; `false` when the subscriber is gone.
    async fn send(&self, chunk: Bytes, last: bool) -> bool {
        let credit = tokio::select! {
            _ = self.subscriber.token.cancelled() => false,
            credit = self.window.take(chunk.len()) => credit,
        };
        if !credit {
            return false;
        }
        let message = ServerMessage::Incoming(IncomingServer::RequestBody {
            request: self.request,
            chunk,
            last,
        });
        send(&self.subscriber, message).await
    }
}

/// Send `message` to the subscriber when its link has room; `false` when
/// its session is gone.
async fn send(subscriber: &Subscriber, message: ServerMessage) -> bool {
    tokio::select! {
        _ = subscriber.token.cancelled() => false,
        sent = subscriber.out_tx.send(message) => sent.is_ok(),
    }
}

/// Everything a filtered connection needs.
#[derive(Clone)]
pub(super) struct Filtered {
    /// The port's routes, replaced as sessions come and go.
    pub routes: watch::Receiver<PortRoutes>,
    pub net: NetApi,
    pub mark: Option<u32>,
    pub shutdown: CancellationToken,
    /// Ids of incoming connections (upgraded requests become one).
    pub conn_ids: Arc<AtomicU64>,
}

impl Filtered {
    /// The routes as they are now.
    fn routes(&self) -> PortRoutes {
        self.routes.borrow().clone()
    }

    /// A marked connection to the original destination (never redirected
    /// back to the agent).
    async fn connect(&self, local: SocketAddr) -> io::Result<TcpStream> {
        let stream = self.net.connect_tcp_marked(local, self.mark).await;
        match stream {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Err(e) => {
                tracing::warn!(destination = %local, error = %e, "cannot reach the original destination");
                Err(e)
            }
        }
    }

    fn next_conn_id(&self) -> remora_protocol::ConnectionId {
        remora_protocol::ConnectionId(self.conn_ids.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// Which protocol a connection speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    Other,
}

/// Serve one connection of a filtered port until it ends or the agent
/// closes (after its drain). A released port's connections go on: requests
/// already taken are answered by their session, later ones go to the
/// original destination (the port's routes are then empty).
pub(super) async fn serve(accepted: Accepted, filtered: Filtered) {
    let Accepted {
        mut stream,
        permit,
        peer,
        local,
        port,
        conn,
    } = accepted;
    let shutdown = filtered.shutdown.clone();
    let work = async {
        let mut buf = BytesMut::with_capacity(framing::READ_SIZE);
        match first_bytes(&mut stream, &mut buf).await {
            Protocol::Http1 => h1::serve(stream, buf, peer, local, port, &filtered).await,
            Protocol::Http2 => {
                let stream = Prefixed::new(buf.freeze(), stream);
                h2::serve(stream, peer, local, port, &filtered).await;
            }
            Protocol::Other => {
                tracing::debug!(%conn, "not HTTP; passed through raw");
                pass_through(stream, &buf, local, &filtered).await;
            }
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = work => {}
    }
    drop(permit);
}

/// Read until the first bytes tell the protocol (or the peer stays silent
/// for [`FIRST_BYTES_TIMEOUT`], or closes).
async fn first_bytes(stream: &mut TcpStream, buf: &mut BytesMut) -> Protocol {
    let deadline = tokio::time::Instant::now() + FIRST_BYTES_TIMEOUT;
    loop {
        if let Some(protocol) = classify(buf) {
            return protocol;
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Protocol::Other,
        }
    }
}

/// `None` while too few bytes arrived to tell.
fn classify(bytes: &[u8]) -> Option<Protocol> {
    if bytes.is_empty() {
        return None;
    }
    if bytes.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    if H2_PREFACE.starts_with(bytes) {
        return None;
    }
    request_line_start(bytes).map(|http1| {
        if http1 {
            Protocol::Http1
        } else {
            Protocol::Other
        }
    })
}

/// `Some(true)`: an HTTP/1.x method then a space; `Some(false)`: not HTTP/1;
/// `None`: too short to tell.
fn request_line_start(bytes: &[u8]) -> Option<bool> {
    const LONGEST_METHOD: usize = 16;
    match bytes.iter().position(|&b| b == b' ') {
        Some(0) => Some(false),
        Some(end) => {
            let method = &bytes[..end];
            Some(
                end <= LONGEST_METHOD
                    && method != b"PRI"
                    && method.iter().all(|b| b.is_ascii_uppercase() || *b == b'-'),
            )
        }
        None if bytes.len() > LONGEST_METHOD => Some(false),
        None if !bytes.iter().all(|b| b.is_ascii_uppercase() || *b == b'-') => Some(false),
        None => None,
    }
}

/// Raw pass-through to the original destination, starting with the bytes
/// already read.
async fn pass_through(mut stream: TcpStream, read: &[u8], local: SocketAddr, filtered: &Filtered) {
    if let Ok(mut service) = filtered.connect(local).await
        && service.write_all(read).await.is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut service).await;
    }
}

/// A stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub(super) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(super) fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Split `data` into chunks the link carries.
fn chunks(mut data: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || (!data.is_empty()).then(|| data.split_to(data.len().min(MAX_CHUNK))))
}

#[cfg(test)]
mod tests;
