//! Stolen HTTP requests: each one is replayed to the application's listener
//! and its response streamed back to the agent. A request that reached the
//! target as HTTP/1.x is replayed with hyper's HTTP/1 client; one that came
//! as HTTP/2 with hyper's HTTP/2 client (prior knowledge, h2c), so the app
//! sees the protocol its real clients speak and the response head says
//! `Http2`.
//!
//! Connections to the app are kept alive and reused for the next request of
//! the same peer (see [`pool`]), so the dialer → peer mapping of each
//! connection still names exactly one client.
//!
//! # Flow control
//! Memory stays bounded both ways, so a 1 GiB upload or download streams:
//! the response body is forwarded frame by frame in pieces of at most
//! [`MAX_CHUNK`] bytes, and the request body flows through a channel. With
//! an agent of protocol v4 each request has its own credit both ways
//! ([`remora_protocol::flow`]): the channel holds the agent's whole window,
//! so the port task never waits for a slow app, credit goes back as hyper
//! takes the chunks to write them to the app, and the answer's chunks wait
//! for the request's credit, so a peer that does not read holds only its own
//! request. With an older agent the channel holds [`BODY_CAPACITY`] chunks
//! and a slow app makes the link wait. An
//! upgrade (WebSocket, HTTP/1 only) answered `101` by the app becomes a raw
//! stream once the agent announces it (`Upgraded`), pumped like a stolen
//! connection.
//!
//! # Limits
//! * An HTTP/2 request needs an app that speaks HTTP/2 without TLS (h2c with
//!   prior knowledge), as the target's service did; it is not downgraded to
//!   HTTP/1.1 for an app that only speaks HTTP/1.
//! * Trailers are dropped both ways (the protocol has no place for them).

mod pool;

use super::{PeerTable, dial_app, pump_raw};
use crate::agent_link::{AgentApi, StreamFlow};
use crate::flow::{CreditReturn, SendWindow};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, TE};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Method, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pool::{AppConn, Pool, Sender};
use remora_protocol::HttpRequestId;
use remora_protocol::flow::MAX_MESSAGES_IN_WINDOW;
use remora_protocol::incoming::{HttpRequestHead, HttpResponseHead, HttpVersion, IncomingClient};
use remora_protocol::outgoing::MAX_CHUNK;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;

/// Request body chunks buffered per request (each at most one agent frame)
/// when the agent has no HTTP body credit.
const BODY_CAPACITY: usize = 16;

/// Where a port's requests go.
pub(super) struct Target {
    pub agent: AgentApi,
    pub peers: PeerTable,
    pub app: SocketAddr,
    /// The port's idle connections to the app.
    pub pool: AppPool,
}

/// The idle connections to the app of one port.
pub(super) type AppPool = Pool<ChannelBody>;

/// How long a finished connection may take to be ready for the next
/// request before it is given up instead of pooled.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The port task's handle on one request. Dropping it aborts the request
/// (its connection to the app is closed and its peer mapping forgotten).
pub(super) struct RequestHandle {
    /// port task --request body chunks--> the request's body; `None` once
    /// the body is complete (or the request declared none).
    body_tx: Option<mpsc::Sender<Bytes>>,
    /// The channel holds the agent's whole window: sending never waits.
    credit: bool,
    /// port task --the upgraded connection's id and input--> the request task
    upgrade_tx: Option<oneshot::Sender<super::Upgrade>>,
    task: AbortOnDropHandle<()>,
}

impl RequestHandle {
    /// The request is answered (or failed) and can be forgotten.
    pub(super) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// The agent turned this request into raw connection `conn`; `false` when
    /// the request cannot take it (already upgraded or over).
    pub(super) fn upgraded(&mut self, upgrade: super::Upgrade) -> bool {
        match self.upgrade_tx.take() {
            Some(tx) => tx.send(upgrade).is_ok(),
            None => false,
        }
    }

    /// The port's events ended (the app closed its listener, or the link is
    /// gone) while this request was in flight. Like a server that stops
    /// listening but still answers the connections it accepted, a request
    /// whose body has all arrived is still answered; one still waiting for
    /// body can never get the rest, so it fails.
    pub(super) fn orphan(self, agent: &AgentApi, request: HttpRequestId) {
        if self.body_tx.is_none() {
            drop(self.task.detach());
            return;
        }
        drop(self);
        let agent = agent.clone();
        tokio::spawn(async move {
            let reason = "the local app stopped listening before the request body arrived";
            let _ = agent.send_response_failed(request, reason.into()).await;
        });
    }

    /// Feed a piece of the request body. With credit it never waits;
    /// without, it waits while the app is slow to read.
    pub(super) async fn body(&mut self, chunk: Bytes, last: bool) {
        if let Some(tx) = &self.body_tx {
            let gone = if self.credit {
                // Empty chunks cost credit too: the body returns it.
                tx.try_send(chunk).is_err()
            } else {
                !chunk.is_empty() && tx.send(chunk).await.is_err()
            };
            if gone {
                // The request is over (answered early or failed).
                self.body_tx = None;
            }
        }
        if last {
            // Closing the channel ends the body.
            self.body_tx = None;
        }
    }
}

/// Start delivering `request` to the app.
pub(super) fn spawn(
    target: Target,
    request: HttpRequestId,
    peer: SocketAddr,
    head: HttpRequestHead,
    flow: StreamFlow,
) -> RequestHandle {
    let credit = target.agent.http_flow_control();
    let StreamFlow { window, returner } = flow;
    let (body_tx, body) = if has_body(&head) {
        // With credit: every chunk a whole window holds, and the end.
        let capacity = if credit {
            MAX_MESSAGES_IN_WINDOW + 1
        } else {
            BODY_CAPACITY
        };
        let (tx, rx) = mpsc::channel(capacity);
        let credit = BodyCredit {
            agent: target.agent.clone(),
            request,
            returner,
        };
        (Some(tx), ChannelBody::new(rx, credit))
    } else {
        (None, ChannelBody::empty())
    };
    let (upgrade_tx, upgrade_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let forwarded = forward(&target, request, peer, head, body, upgrade_rx, window).await;
        if let Err(reason) = forwarded {
            let _ = target.agent.send_response_failed(request, reason).await;
        }
    });
    RequestHandle {
        body_tx,
        credit,
        upgrade_tx: Some(upgrade_tx),
        task: AbortOnDropHandle::new(task),
    }
}

/// Send the request to the app and its response to the agent. `Err` is the
/// reason given to the agent in `ResponseFailed`.
async fn forward(
    target: &Target,
    request: HttpRequestId,
    peer: SocketAddr,
    head: HttpRequestHead,
    body: ChannelBody,
    upgrade_rx: oneshot::Receiver<super::Upgrade>,
    window: SendWindow,
) -> Result<(), String> {
    let app = target.app;
    let http2 = head.version == HttpVersion::Http2;
    let mut req = build_request(head, body, app)?;
    let pooled = target.pool.take(peer, http2);
    let mut fresh = pooled.is_none();
    let mut conn = match pooled {
        Some(conn) => conn,
        None => connect(target, peer, http2).await?,
    };
    // Aborted with this task: a cancelled request closes its connection.
    let response = loop {
        match conn.sender.send(req).await {
            Ok(response) => break response,
            // The pooled connection closed before the request went out:
            // once more on a new one.
            Err((_, Some(back))) if !fresh => {
                req = back;
                conn = connect(target, peer, http2).await?;
                fresh = true;
            }
            Err((e, _)) => {
                let over = if http2 { " over HTTP/2" } else { "" };
                return Err(format!("the local app at {app} did not answer{over}: {e}"));
            }
        }
    };
    // HTTP/2 has no `101`: its upgrades are extended CONNECT streams.
    let switching = !http2 && response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS;
    let mut response = response;
    let upgrade = switching.then(|| hyper::upgrade::on(&mut response));
    let (parts, mut body) = response.into_parts();
    let head = HttpResponseHead {
        status: parts.status.as_u16(),
        version: match parts.version {
            Version::HTTP_10 => HttpVersion::Http10,
            Version::HTTP_2 => HttpVersion::Http2,
            _ => HttpVersion::Http11,
        },
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    Bytes::copy_from_slice(value.as_bytes()),
                )
            })
            .collect(),
    };
    let agent = &target.agent;
    let agent_gone = |e: remora_protocol::RemoteError| e.to_string();
    agent
        .send_response_head(request, head)
        .await
        .map_err(agent_gone)?;
    if let Some(upgrade) = upgrade {
        // No body after a 101: the connection now belongs to the protocol
        // both sides switched to.
        let io = upgrade
            .await
            .map_err(|e| format!("upgrading the connection to the local app at {app}: {e}"))?;
        let Ok((conn, mut input, flow)) = upgrade_rx.await else {
            return Ok(());
        };
        pump_raw(agent, conn, TokioIo::new(io), &mut input, flow).await;
        let _ = agent
            .send_incoming(remora_protocol::incoming::IncomingClient::Close { conn })
            .await;
        return Ok(());
    }
    // The last data chunk says it is the last when hyper knows the body
    // ends there (a known length); otherwise an empty chunk says so after.
    let mut ended = false;
    while !ended && let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| format!("reading the response of the local app at {app}: {e}"))?;
        // Trailers are dropped: the protocol has no place for them yet.
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let at_end = body.is_end_stream();
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_CHUNK));
            let last = at_end && data.is_empty();
            // Only this request waits while its peer does not read.
            if !window.take(chunk.len()).await {
                return Err("the request's credit was withdrawn".to_owned());
            }
            agent
                .send_response_body(request, chunk, last)
                .await
                .map_err(agent_gone)?;
            ended |= last;
        }
    }
    if !ended {
        if !window.take(0).await {
            return Err("the request's credit was withdrawn".to_owned());
        }
        agent
            .send_response_body(request, Bytes::new(), true)
            .await
            .map_err(agent_gone)?;
    }
    // The answer was read whole: the connection can carry the next request
    // of this peer once hyper says so.
    drop(body);
    if let Ok(Ok(())) = tokio::time::timeout(READY_TIMEOUT, conn.sender.ready()).await {
        target.pool.put(peer, http2, conn);
    }
    Ok(())
}

/// A new connection to the app for `peer`, mapped to it before it exists.
async fn connect(
    target: &Target,
    peer: SocketAddr,
    http2: bool,
) -> Result<AppConn<ChannelBody>, String> {
    let app = target.app;
    let (stream, registered) = dial_app(&target.peers, app, peer, None)
        .await
        .map_err(|e| format!("connecting to the local app at {app}: {e}"))?;
    let io = TokioIo::new(stream);
    let (sender, driver) = if http2 {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|e| format!("talking HTTP/2 to the local app at {app}: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        (Sender::Http2(sender), driver)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("talking HTTP/1 to the local app at {app}: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        (Sender::Http1(sender), driver)
    };
    Ok(AppConn {
        sender,
        _driver: AbortOnDropHandle::new(driver),
        _registered: registered,
    })
}

/// Whether the agent will send a body for this request. HTTP/1 requests
/// without `Content-Length` or `Transfer-Encoding` have none; HTTP/2 ones may
/// have one without a length, except for the methods that never carry one.
fn has_body(head: &HttpRequestHead) -> bool {
    let header = |wanted: &str| {
        head.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value)
    };
    if header("transfer-encoding").is_some() {
        return true;
    }
    if let Some(length) = header("content-length") {
        return length.as_ref() != b"0";
    }
    head.version == HttpVersion::Http2
        && !["GET", "HEAD", "DELETE", "OPTIONS"]
            .iter()
            .any(|m| head.method.eq_ignore_ascii_case(m))
}

/// The request as the app receives it, the client's headers included.
/// * HTTP/1.x: origin-form URI, the request's version, a `Host` header (from
///   the URI or `:authority` when the client sent none).
/// * HTTP/2: absolute URI whose authority is the client's (`:authority`,
///   else the URI's, else `Host`, else the app's address), no `Host` header
///   (RFC 9113 §8.3.1) and none of the connection-specific headers HTTP/2
///   forbids.
fn build_request(
    head: HttpRequestHead,
    body: ChannelBody,
    app: SocketAddr,
) -> Result<hyper::Request<ChannelBody>, String> {
    let method = Method::from_bytes(head.method.as_bytes())
        .map_err(|_| format!("invalid request method {:?}", head.method))?;
    let uri: Uri = head
        .uri
        .parse()
        .map_err(|e| format!("invalid request URI {:?}: {e}", head.uri))?;
    let mut authority = uri
        .authority()
        .map(|a| Bytes::copy_from_slice(a.as_str().as_bytes()));
    let mut headers = HeaderMap::new();
    for (name, value) in head.headers {
        if let Some(pseudo) = name.strip_prefix(':') {
            if pseudo.eq_ignore_ascii_case("authority") {
                authority = Some(value);
            }
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid request header name {name:?}"))?;
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| format!("invalid value of request header {name}"))?;
        headers.append(name, value);
    }
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let (uri, version) = match head.version {
        HttpVersion::Http10 | HttpVersion::Http11 => {
            if !headers.contains_key(HOST) {
                if let Some(value) = authority.and_then(|a| HeaderValue::from_maybe_shared(a).ok())
                {
                    headers.insert(HOST, value);
                }
            }
            let version = if head.version == HttpVersion::Http10 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            (Uri::try_from(path).map_err(|e| e.to_string()), version)
        }
        HttpVersion::Http2 => {
            strip_connection_headers(&mut headers);
            let host = headers.remove(HOST);
            let authority = authority
                .or_else(|| host.map(|h| Bytes::copy_from_slice(h.as_bytes())))
                .and_then(|a| Authority::from_maybe_shared(a).ok())
                .map_or_else(|| Authority::try_from(app.to_string()), Ok)
                .map_err(|e| format!("no authority for the request to {app}: {e}"))?;
            let uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|e| e.to_string());
            (uri, Version::HTTP_2)
        }
    };
    let uri = uri.map_err(|e| format!("invalid request target {path:?}: {e}"))?;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(body)
        .map_err(|e| format!("building the request for the local app: {e}"))?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Headers that only mean something for one HTTP/1 connection, which HTTP/2
/// forbids (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Remove the connection-specific headers, those `Connection` names too, and
/// `TE` unless it is `trailers`.
fn strip_connection_headers(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in CONNECTION_SPECIFIC
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
    if headers
        .get_all(TE)
        .iter()
        .any(|value| !value.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(TE);
    }
}

/// A request body fed by the port task; it ends when the channel closes.
#[derive(Debug)]
pub(super) struct ChannelBody {
    rx: Option<mpsc::Receiver<Bytes>>,
    credit: Option<BodyCredit>,
}

/// Gives the agent back the credit of the request body hyper has taken.
#[derive(Debug)]
struct BodyCredit {
    agent: AgentApi,
    request: HttpRequestId,
    returner: CreditReturn,
}

impl ChannelBody {
    fn new(rx: mpsc::Receiver<Bytes>, credit: BodyCredit) -> Self {
        ChannelBody {
            rx: Some(rx),
            credit: Some(credit),
        }
    }

    fn empty() -> Self {
        ChannelBody {
            rx: None,
            credit: None,
        }
    }

    /// hyper took `len` bytes to write them to the app.
    fn taken(&mut self, len: usize) {
        if let Some(credit) = &mut self.credit
            && let Some(bytes) = credit.returner.written(len)
        {
            let request = credit.request;
            let message = IncomingClient::RequestCredit { request, bytes };
            credit.agent.send_incoming_later(message);
        }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        loop {
            let Some(rx) = self.rx.as_mut() else {
                return Poll::Ready(None);
            };
            match rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => {
                    self.taken(chunk.len());
                    // An empty chunk (the end, sent apart) is no frame.
                    if !chunk.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                }
                Poll::Ready(None) => {
                    self.rx = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }
}

#[cfg(test)]
mod tests;
