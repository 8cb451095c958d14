//! HTTP/2 (prior knowledge, `h2c`) connections of a filtered port, served
//! by hyper: each stream is routed on its own. Streams not taken go to the
//! original destination over one upstream HTTP/2 connection per peer
//! connection (made on the first such stream); taken ones go to their
//! subscriber with `HttpVersion::Http2`.

use super::{Filtered, Taken, chunks};
use crate::incoming::Subscriber;
use crate::incoming::filter::{HeaderLine, RequestView};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_protocol::HttpRequestId;
use remora_protocol::incoming::{HttpRequestHead, HttpVersion, RemotePort};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::AbortOnDropHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// The upstream HTTP/2 connection of one peer connection.
type Upstream = Arc<tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<Incoming>>>>;

/// Serve one HTTP/2 connection until it ends.
pub(super) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    port: RemotePort,
    filtered: &Filtered,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let upstream: Upstream = Arc::default();
    let filtered = filtered.clone();
    let service = hyper::service::service_fn(move |request| {
        let (filtered, upstream) = (filtered.clone(), upstream.clone());
        async move {
            let response = route(request, peer, local, port, &filtered, &upstream).await;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "filtered HTTP/2 connection ended");
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
    let taken_by = pick(&request, &path_and_query, filtered);
    match taken_by {
        Some(subscriber) => steal(request, path_and_query, peer, port, &subscriber).await,
        None => forward(request, local, filtered, upstream).await,
    }
}

/// The subscriber whose filter takes the request, if any. HTTP/2 carries
/// the host as the `:authority` pseudo-header: filters see it as `host`.
fn pick(
    request: &Request<Incoming>,
    path_and_query: &str,
    filtered: &Filtered,
) -> Option<Subscriber> {
    let routes = filtered.routes();
    let authority = request.uri().authority().map(|a| a.as_str().to_owned());
    let has_host = request.headers().contains_key(hyper::header::HOST);
    let mut headers: Vec<HeaderLine<'_>> = request
        .headers()
        .iter()
        .map(|(name, value)| HeaderLine {
            name: name.as_str(),
            value: value.as_bytes(),
        })
        .collect();
    if let (Some(authority), false) = (&authority, has_host) {
        headers.push(HeaderLine {
            name: "host",
            value: authority.as_bytes(),
        });
    }
    let view = RequestView {
        method: request.method().as_str(),
        path_and_query,
        headers: &headers,
    };
    // As for HTTP/1: a session that just ended takes nothing more.
    routes
        .pick(&view)
        .filter(|subscriber| !subscriber.token.is_cancelled())
        .cloned()
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

/// Send a taken request to the client and answer the peer with its response.
async fn steal(
    request: Request<Incoming>,
    uri: String,
    peer: SocketAddr,
    port: RemotePort,
    subscriber: &Subscriber,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let mut headers: Vec<(String, Bytes)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
        .collect();
    if let Some(authority) = parts.uri.authority()
        && !parts.headers.contains_key(hyper::header::HOST)
    {
        headers.push((
            "host".to_owned(),
            Bytes::copy_from_slice(authority.as_str().as_bytes()),
        ));
    }
    let head = HttpRequestHead {
        method: parts.method.as_str().to_owned(),
        uri,
        version: HttpVersion::Http2,
        headers,
    };
    let Some(mut taken) = Taken::announce(subscriber, port, peer, head).await else {
        return bad_gateway();
    };
    taken.pending.body = Some(AbortOnDropHandle::new(tokio::spawn(send_body(
        body,
        taken.body_sender(),
    ))));
    let Ok(head) = taken.head().await else {
        return bad_gateway();
    };
    let status = match StatusCode::from_u16(head.status) {
        Ok(status) if !status.is_informational() => status,
        _ => {
            taken.pending.done = true;
            return bad_gateway();
        }
    };
    let id = taken.id();
    // Ends after the last chunk; fails (resetting the stream) when the
    // client fails or goes mid-body.
    let frames = futures::stream::unfold(Some(taken), |taken| async move {
        let mut taken = taken?;
        match taken.next_body().await {
            Ok(Some((chunk, last))) => {
                let next = (!last).then_some(taken);
                Some((Ok::<_, BoxError>(Frame::data(chunk)), next))
            }
            Ok(None) => None,
            Err(reason) => Some((Err(reason.into()), None)),
        }
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    *response.status_mut() = status;
    append_headers(response.headers_mut(), id, head.headers);
    response
}

/// Headers HTTP/2 does not carry (RFC 9113 8.2.2).
fn connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

/// The client's response headers; invalid and connection-specific ones
/// are dropped.
fn append_headers(headers: &mut HeaderMap, id: HttpRequestId, from: Vec<(String, Bytes)>) {
    for (name, value) in from {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value),
        ) {
            (Ok(name), Ok(value)) if !connection_specific(&name) => {
                headers.append(name, value);
            }
            _ => tracing::debug!(request = %id, %name, "response header dropped"),
        }
    }
}

/// The body of a taken request to the client, `last` once at the end.
async fn send_body(body: Incoming, sender: super::BodySender) {
    let mut frames = body.into_data_stream();
    while let Some(data) = frames.next().await {
        // An error means the peer went; the request is then cancelled.
        let Ok(data) = data else { return };
        for chunk in chunks(data) {
            if !sender.send(chunk, false).await {
                return;
            }
        }
    }
    sender.send(Bytes::new(), true).await;
}

/// A stream not taken: to the original destination over this connection's
/// upstream HTTP/2 connection, the response streamed back.
async fn forward(
    request: Request<Incoming>,
    local: SocketAddr,
    filtered: &Filtered,
    upstream: &Upstream,
) -> Response<Body> {
    let mut sender = {
        let mut slot = upstream.lock().await;
        match slot.as_ref() {
            Some(send) if !send.is_closed() => send.clone(),
            _ => {
                *slot = None;
                let Ok(stream) = filtered.connect(local).await else {
                    return plain(
                        StatusCode::BAD_GATEWAY,
                        "remora: cannot reach the original destination\n",
                    );
                };
                let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(stream));
                match handshake.await {
                    Ok((send, connection)) => {
                        tokio::spawn(async move {
                            if let Err(e) = connection.await {
                                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                            }
                        });
                        slot.insert(send).clone()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "upstream HTTP/2 handshake failed");
                        return bad_gateway();
                    }
                }
            }
        }
    };
    if sender.ready().await.is_err() {
        *upstream.lock().await = None;
        return bad_gateway();
    }
    match sender.send_request(request).await {
        Ok(response) => response.map(|body| body.map_err(BoxError::from).boxed()),
        Err(e) => {
            tracing::debug!(error = %e, "forwarded request failed");
            bad_gateway()
        }
    }
}
