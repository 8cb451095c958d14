//! One connection of a **filtered steal**: HTTP/1.x connections are served
//! by hyper, each request going to the subscriber when the filter takes it
//! and to the original destination otherwise; anything else (including
//! HTTP/2) is passed through raw to the original destination.
//!
//! # Flow control
//! * Request bodies of taken requests go to the client chunk by chunk
//!   ([`MAX_CHUNK`] at most) as its bounded link has room, so a slow client
//!   slows the peer; nothing is buffered whole.
//! * Response parts from the client wait in a queue of
//!   [`RESPONSE_QUEUE_CAPACITY`] per request, drained as the peer reads.
//! * Requests not taken stream through hyper's client both ways.
//!
//! # Upgrades
//! A taken request that asks for a protocol upgrade (WebSocket) and that the
//! client answers `101` becomes a raw stolen connection: the client gets
//! `Upgraded { request, conn }`, then `Data` both ways as for any stolen
//! connection. Upgrades not taken pass through to the original destination
//! (hyper's upgrade on both sides).
//!
//! # Limits
//! * A connection whose peer sends nothing for [`PEEK_TIMEOUT`] (a
//!   server-speaks-first protocol) is passed through raw after that delay.
//! * An upgraded connection no longer counts against the port's connection
//!   limit.

use super::Subscriber;
use super::conn::{self, Accepted};
use super::filter::{CompiledFilter, RequestView};
use crate::net::NetApi;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use remora_protocol::incoming::{
    HttpRequestHead, HttpResponseHead, HttpVersion, IncomingServer, RemotePort,
};
use remora_protocol::outgoing::MAX_CHUNK;
use remora_protocol::{ConnectionId, HttpRequestId, ServerMessage};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Response parts from the client queued for one taken request.
pub const RESPONSE_QUEUE_CAPACITY: usize = 64;

/// How long a taken request waits for the client's `ResponseHead` before
/// the peer gets a 502.
pub const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a new connection may stay silent before it is passed through
/// raw (its protocol is not known until its first bytes).
pub const PEEK_TIMEOUT: Duration = Duration::from_secs(1);

/// Ids of taken requests, unique in this agent.
static REQUEST_IDS: AtomicU64 = AtomicU64::new(0);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// What the client sends for one taken request.
#[derive(Debug)]
pub(super) enum ResponsePart {
    Head(HttpResponseHead),
    Body { chunk: Bytes, last: bool },
    Failed(String),
}

/// A client's taken requests waiting for their answer, by id. Cheap to
/// clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestTable {
    /// client --response parts--> the request's hyper service
    inner: Arc<Mutex<HashMap<HttpRequestId, mpsc::Sender<ResponsePart>>>>,
}

impl RequestTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<HttpRequestId, mpsc::Sender<ResponsePart>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, request: HttpRequestId) -> Option<mpsc::Sender<ResponsePart>> {
        self.lock().get(&request).cloned()
    }

    pub(super) fn remove(&self, request: HttpRequestId) {
        self.lock().remove(&request);
    }
}

/// While alive, `request` is in its table; dropped before the answer is
/// complete, it tells the client `RequestCancelled`.
struct PendingRequest {
    request: HttpRequestId,
    subscriber: Subscriber,
    done: bool,
    /// Sends the request body; stops when the request is dropped.
    _body: Option<AbortOnDropHandle<()>>,
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        self.subscriber.requests.remove(self.request);
        if !self.done && !self.subscriber.token.is_cancelled() {
            let cancelled = ServerMessage::Incoming(IncomingServer::RequestCancelled {
                request: self.request,
            });
            let out_tx = self.subscriber.out_tx.clone();
            let token = self.subscriber.token.clone();
            // Drop cannot wait for room on the link.
            tokio::spawn(async move {
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = out_tx.send(cancelled) => {}
                }
            });
        }
    }
}

/// Everything a filtered connection needs.
#[derive(Clone)]
pub(super) struct Filtered {
    pub subscriber: Subscriber,
    pub filter: Arc<CompiledFilter>,
    pub net: NetApi,
    pub mark: Option<u32>,
    pub shutdown: CancellationToken,
    /// Ids of incoming connections (upgraded requests become one).
    pub conn_ids: Arc<AtomicU64>,
}

/// Serve one connection of a filtered port until it ends, the agent shuts
/// down or the subscriber goes.
pub(super) async fn serve(accepted: Accepted, filtered: Filtered) {
    let Accepted {
        stream,
        permit,
        peer,
        local,
        port,
        conn,
    } = accepted;
    let shutdown = filtered.shutdown.clone();
    let stop = filtered.subscriber.token.clone();
    let work = async {
        if looks_like_http1(&stream).await {
            serve_http1(stream, peer, local, port, filtered).await;
        } else {
            tracing::debug!(%conn, "not HTTP/1.x; passed through raw");
            pass_through(stream, local, &filtered).await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = stop.cancelled() => {}
        _ = work => {}
    }
    drop(permit);
}

/// Whether the first bytes are an HTTP/1.x request line (`GET /...`); the
/// HTTP/2 preface (`PRI * HTTP/2.0`) is not.
async fn looks_like_http1(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 24];
    let deadline = tokio::time::Instant::now() + PEEK_TIMEOUT;
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        match request_line_start(&buf[..n]) {
            Some(verdict) => return verdict,
            // Too few bytes yet to say: wait for more.
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None => return false,
        }
    }
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

/// Raw pass-through to the original destination.
async fn pass_through(mut stream: TcpStream, local: SocketAddr, filtered: &Filtered) {
    match filtered.net.connect_tcp_marked(local, filtered.mark).await {
        Ok(mut service) => {
            let _ = service.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut service).await;
        }
        Err(e) => {
            tracing::warn!(destination = %local, error = %e, "cannot reach the original destination");
        }
    }
}

/// The upstream HTTP/1.1 connection of one downstream connection, made on
/// its first request not taken.
type Upstream = Arc<tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<Incoming>>>>;

async fn serve_http1(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    port: RemotePort,
    filtered: Filtered,
) {
    let upstream: Upstream = Arc::default();
    let service = hyper::service::service_fn(move |request| {
        let (filtered, upstream) = (filtered.clone(), upstream.clone());
        async move {
            let response = route(request, peer, local, port, &filtered, &upstream).await;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "filtered HTTP connection ended");
    }
}

async fn route(
    request: Request<Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
    port: RemotePort,
    filtered: &Filtered,
    upstream: &Upstream,
) -> Response<Body> {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().to_string(), |p| p.as_str().to_owned());
    let view = RequestView {
        method: request.method().as_str(),
        path_and_query: &path_and_query,
        headers: request.headers(),
    };
    let taken = filtered.filter.matches(&view);
    let upgrade = request.headers().contains_key(hyper::header::UPGRADE);
    if taken {
        steal(request, path_and_query, peer, port, upgrade, filtered).await
    } else {
        forward(request, local, filtered, upstream).await
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

fn bad_gateway() -> Response<Body> {
    plain(
        StatusCode::BAD_GATEWAY,
        "remora: the local application did not answer this request\n",
    )
}

fn wire_version(version: Version) -> HttpVersion {
    match version {
        Version::HTTP_10 | Version::HTTP_09 => HttpVersion::Http10,
        Version::HTTP_2 | Version::HTTP_3 => HttpVersion::Http2,
        _ => HttpVersion::Http11,
    }
}

/// Send a taken request to the client and answer the peer with its response.
async fn steal(
    request: Request<Incoming>,
    uri: String,
    peer: SocketAddr,
    port: RemotePort,
    upgrade: bool,
    filtered: &Filtered,
) -> Response<Body> {
    let subscriber = &filtered.subscriber;
    let id = HttpRequestId(REQUEST_IDS.fetch_add(1, Ordering::Relaxed) + 1);
    let mut request = request;
    let upgraded = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let head = HttpRequestHead {
        method: parts.method.as_str().to_owned(),
        uri,
        version: wire_version(parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    };
    let (part_tx, mut part_rx) = mpsc::channel(RESPONSE_QUEUE_CAPACITY);
    subscriber.requests.lock().insert(id, part_tx);
    let mut pending = PendingRequest {
        request: id,
        subscriber: subscriber.clone(),
        done: false,
        _body: None,
    };
    let announce = ServerMessage::Incoming(IncomingServer::Request {
        request: id,
        port,
        peer,
        head,
    });
    let token = &subscriber.token;
    let sent = tokio::select! {
        _ = token.cancelled() => false,
        sent = subscriber.out_tx.send(announce) => sent.is_ok(),
    };
    if !sent {
        return bad_gateway();
    }
    pending._body = Some(AbortOnDropHandle::new(tokio::spawn(send_body(
        id,
        body,
        subscriber.clone(),
    ))));
    let first = tokio::select! {
        _ = token.cancelled() => None,
        part = tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, part_rx.recv()) => part.ok().flatten(),
    };
    let head = match first {
        Some(ResponsePart::Head(head)) => head,
        Some(ResponsePart::Failed(reason)) => {
            tracing::debug!(request = %id, %reason, "the client failed to answer");
            pending.done = true;
            return bad_gateway();
        }
        Some(ResponsePart::Body { .. }) => {
            tracing::debug!(request = %id, "response body before its head");
            pending.done = true;
            return bad_gateway();
        }
        None => {
            // Dropping `pending` tells the client the request is over.
            tracing::debug!(request = %id, "no response head in time");
            return bad_gateway();
        }
    };
    let Ok(status) = StatusCode::from_u16(head.status) else {
        pending.done = true;
        return bad_gateway();
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(upgraded) = upgraded else {
            tracing::debug!(request = %id, "101 to a request that asked for no upgrade");
            pending.done = true;
            return bad_gateway();
        };
        pending.done = true;
        let conn = ConnectionId(filtered.conn_ids.fetch_add(1, Ordering::Relaxed) + 1);
        let subscriber = subscriber.clone();
        tokio::spawn(async move {
            match upgraded.await {
                Ok(upgraded) => {
                    conn::steal_upgraded(id, conn, TokioIo::new(upgraded), subscriber).await;
                }
                Err(e) => tracing::debug!(request = %id, error = %e, "upgrade failed"),
            }
        });
        let mut response = Response::new(empty());
        *response.status_mut() = status;
        append_headers(response.headers_mut(), id, head.headers);
        return response;
    }
    let token = token.clone();
    // Ends after the `last` chunk; fails (aborting the peer's connection)
    // when the client fails or goes mid-body.
    let frames = futures::stream::unfold(
        (part_rx, pending, token, false),
        |(mut part_rx, mut pending, token, finished)| async move {
            if finished {
                return None;
            }
            let part = tokio::select! {
                _ = token.cancelled() => None,
                part = part_rx.recv() => part,
            };
            let item: Result<Frame<Bytes>, BoxError> = match part {
                Some(ResponsePart::Body { chunk, last }) => {
                    if last {
                        pending.done = true;
                    }
                    let state = (part_rx, pending, token, last);
                    return Some((Ok(Frame::data(chunk)), state));
                }
                Some(ResponsePart::Failed(reason)) => Err(reason.into()),
                Some(ResponsePart::Head(_)) => Err("a second response head".into()),
                None => Err("the client went away mid-response".into()),
            };
            pending.done = true;
            Some((item, (part_rx, pending, token, true)))
        },
    );
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    *response.status_mut() = status;
    append_headers(response.headers_mut(), id, head.headers);
    response
}

fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The client's response headers; invalid ones are dropped.
fn append_headers(headers: &mut HeaderMap, id: HttpRequestId, from: Vec<(String, Bytes)>) {
    for (name, value) in from {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::debug!(request = %id, %name, "invalid response header dropped"),
        }
    }
}

/// The body of a taken request to the client, `last` once at the end.
async fn send_body(request: HttpRequestId, body: Incoming, subscriber: Subscriber) {
    let mut frames = body.into_data_stream();
    let send = |chunk: Bytes, last: bool| {
        let message = ServerMessage::Incoming(IncomingServer::RequestBody {
            request,
            chunk,
            last,
        });
        let (out_tx, token) = (subscriber.out_tx.clone(), subscriber.token.clone());
        async move {
            tokio::select! {
                _ = token.cancelled() => false,
                sent = out_tx.send(message) => sent.is_ok(),
            }
        }
    };
    while let Some(data) = frames.next().await {
        // An error means the peer went; the request is then cancelled.
        let Ok(mut data) = data else { return };
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_CHUNK));
            if !send(chunk, false).await {
                return;
            }
        }
    }
    send(Bytes::new(), true).await;
}

/// A request not taken: to the original destination over this
/// connection's upstream connection, the response streamed back.
async fn forward(
    mut request: Request<Incoming>,
    local: SocketAddr,
    filtered: &Filtered,
    upstream: &Upstream,
) -> Response<Body> {
    let mut sender = upstream.lock().await;
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = None;
        let stream = match filtered.net.connect_tcp_marked(local, filtered.mark).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(destination = %local, error = %e, "cannot reach the original destination");
                return plain(
                    StatusCode::BAD_GATEWAY,
                    "remora: cannot reach the original destination\n",
                );
            }
        };
        let _ = stream.set_nodelay(true);
        let handshake = hyper::client::conn::http1::Builder::new()
            .preserve_header_case(true)
            .handshake(TokioIo::new(stream));
        match handshake.await {
            Ok((send, connection)) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream HTTP connection ended");
                    }
                });
                *sender = Some(send);
            }
            Err(e) => {
                tracing::warn!(error = %e, "upstream HTTP handshake failed");
                return bad_gateway();
            }
        }
    }
    let Some(send) = sender.as_mut() else {
        return bad_gateway();
    };
    if send.ready().await.is_err() {
        *sender = None;
        return bad_gateway();
    }
    let downstream_upgrade = hyper::upgrade::on(&mut request);
    let sent = send.send_request(request).await;
    drop(sender);
    match sent {
        Ok(mut response) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    if let (Ok(down), Ok(up)) = tokio::join!(downstream_upgrade, upstream_upgrade) {
                        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
            response.map(|body| body.map_err(BoxError::from).boxed())
        }
        Err(e) => {
            tracing::debug!(error = %e, "forwarded request failed");
            bad_gateway()
        }
    }
}

#[cfg(test)]
mod tests;
