//! HTTP/1.x connections of a filtered port.
//!
//! A request head is read and parsed (`httparse`), the port's routes pick a
//! subscriber or none, then:
//! * **not taken**: the head's original bytes, then the body as it arrives,
//!   go to the original destination over this connection's one upstream
//!   connection (made on the first such request, reused while both sides
//!   keep it alive); the response is relayed unchanged, interim `1xx`
//!   answers included (so `Expect: 100-continue` works), its end found from
//!   its framing. A `101` turns the connection into a raw tunnel.
//! * **taken**: the head goes to the subscriber, the body (chunk coding
//!   removed) follows as `RequestBody` chunks, and the subscriber's answer
//!   is written back with `content-length` or chunked coding. `Expect:
//!   100-continue` is answered `100 Continue` at once.
//!
//! Requests are served one at a time, in order: pipelined requests wait in
//! the read buffer, so answers can never be reordered (pipelining-safe).
//!
//! Between requests, the peer's connection ends when the service closes the
//! idle upstream connection (its keep-alive timeout then applies to the peer
//! as it would without remora), or after [`IDLE_TIMEOUT`] without a request.
//!
//! A request not taken allocates nothing: its head is parsed into header
//! ranges kept in one `Vec` per direction for the connection's life, and
//! its head and the body bytes read with it leave in one `writev`.
//!
//! This is a hand-written proxy rather than hyper's server and client: a
//! request not taken must cost as little as possible and must reach the
//! service as the peer sent it. hyper would parse into a header map, then
//! re-serialise through a second connection task per request.

use super::framing::{self, Body, Head, HeadError, HeaderRanges, READ_SIZE};
use super::{Filtered, Prefixed, Taken, chunks};
use crate::incoming::Subscriber;
use crate::incoming::conn;
use crate::incoming::filter::{HeaderLine, RequestView};
use bytes::{Buf, BytesMut};
use remora_protocol::incoming::{HttpRequestHead, HttpResponseHead, HttpVersion, RemotePort};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::{Instant, Sleep};

/// How long a peer's connection may stay without a complete request head
/// before the agent closes it (the service's own idle timeout usually ends
/// it first: see `read_head`).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The connection to the original destination of one peer connection.
struct Upstream {
    stream: TcpStream,
    /// Bytes read from it not relayed yet.
    buf: BytesMut,
    /// The allocation of the last response head's header ranges.
    spare: HeaderRanges,
    /// It already carried a request (it may have been closed by the
    /// service since).
    reused: bool,
}

/// What happens to the peer's connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// What the request head says about the exchange.
#[derive(Debug, Clone, Copy)]
struct RequestInfo {
    body: Body,
    /// It has a `content-length` or `transfer-encoding` header (even one
    /// saying there is no body): the client then waits for the body's end.
    declares_body: bool,
    keep_alive: bool,
    head_method: bool,
    upgrade: bool,
    expect_continue: bool,
    minor: u8,
}

impl RequestInfo {
    fn new(head: &Head, buf: &[u8]) -> Result<RequestInfo, HeadError> {
        Ok(RequestInfo {
            body: head.body(buf, true, false)?,
            declares_body: head.values(buf, "content-length").next().is_some()
                || head.values(buf, "transfer-encoding").next().is_some(),
            keep_alive: head.keep_alive(buf),
            head_method: &buf[head.method.clone()] == b"HEAD",
            upgrade: head.values(buf, "upgrade").next().is_some(),
            expect_continue: head.has_token(buf, "expect", "100-continue"),
            minor: head.minor,
        })
    }
}

/// Serve the HTTP/1 connection `down` (whose first bytes are in `buf`).
pub(super) async fn serve(
    mut down: TcpStream,
    mut buf: BytesMut,
    peer: SocketAddr,
    local: SocketAddr,
    port: RemotePort,
    filtered: &Filtered,
) {
    let mut upstream: Option<Upstream> = None;
    // The allocation of the last request head's header ranges: a request
    // passed through allocates nothing.
    let mut spare = HeaderRanges::new();
    // One timer for the connection's life, pushed back only when it fires
    // early: arming a timer per request would cost more than routing it.
    let mut idle = pin!(tokio::time::sleep(IDLE_TIMEOUT));
    loop {
        let head = match read_head(&mut down, &mut buf, &mut spare, &upstream, idle.as_mut()).await
        {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(HeadError::TooLarge) => {
                let _ = reply(&mut down, 431, "remora: request head too large\n").await;
                return;
            }
            Err(HeadError::Invalid(reason)) => {
                tracing::debug!(%peer, %reason, "bad request");
                let _ = reply(&mut down, 400, "remora: malformed request\n").await;
                return;
            }
            Err(HeadError::Io(_)) => return,
        };
        let info = match RequestInfo::new(&head, &buf) {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad request");
                let _ = reply(&mut down, 400, "remora: malformed request\n").await;
                return;
            }
        };
        let taken_by = pick(&head, &buf, filtered);
        let next = match taken_by {
            None => {
                forward(
                    &mut down,
                    &mut buf,
                    &head,
                    info,
                    &mut upstream,
                    local,
                    filtered,
                )
                .await
            }
            Some(subscriber) => {
                match steal(&mut down, &mut buf, &head, info, &subscriber, peer, port).await {
                    Stolen::Next(next) => next,
                    Stolen::Upgraded(taken) => {
                        let request = taken.id();
                        drop(taken);
                        let conn = filtered.next_conn_id();
                        let stream = Prefixed::new(buf.freeze(), down);
                        conn::steal_upgraded(request, conn, stream, subscriber).await;
                        return;
                    }
                }
            }
        };
        head.recycle(&mut spare);
        if next == Next::Close {
            return;
        }
    }
}

/// The subscriber whose filter takes the request, if any.
fn pick(head: &Head, buf: &[u8], filtered: &Filtered) -> Option<Subscriber> {
    let routes = filtered.routes();
    let text = |range: &std::ops::Range<usize>| std::str::from_utf8(&buf[range.clone()]).ok();
    let lines = head.headers.iter().filter_map(|(name, value)| {
        Some(HeaderLine {
            name: text(name)?,
            value: &buf[value.clone()],
        })
    });
    // On the stack when they fit: every request builds them.
    let empty = HeaderLine {
        name: "",
        value: &[],
    };
    let mut stack = [empty; 32];
    let heap: Vec<HeaderLine<'_>>;
    let headers: &[HeaderLine<'_>] = if head.headers.len() <= stack.len() {
        let mut n = 0;
        for line in lines {
            stack[n] = line;
            n += 1;
        }
        &stack[..n]
    } else {
        heap = lines.collect();
        &heap
    };
    let view = RequestView {
        method: text(&head.method).unwrap_or_default(),
        path_and_query: text(&head.target).unwrap_or_default(),
        headers,
    };
    // A session that just ended is still in the routes until the incoming
    // task rebuilds them: its requests go to the target meanwhile.
    routes
        .pick(&view)
        .filter(|subscriber| !subscriber.token.is_cancelled())
        .cloned()
}

/// The next request head; `Ok(None)` when the connection should end between
/// requests: the peer closed it, the service closed this connection's idle
/// upstream connection (the peer's connection ends too, as it would without
/// remora), or it stayed idle for [`IDLE_TIMEOUT`].
async fn read_head(
    down: &mut TcpStream,
    buf: &mut BytesMut,
    spare: &mut HeaderRanges,
    upstream: &Option<Upstream>,
    mut idle: Pin<&mut Sleep>,
) -> Result<Option<Head>, HeadError> {
    let idle_until = Instant::now() + IDLE_TIMEOUT;
    loop {
        if !buf.is_empty()
            && let Some(head) = Head::request_reusing(buf, spare)?
        {
            return Ok(Some(head));
        }
        buf.reserve(READ_SIZE);
        let idle_now = buf.is_empty();
        tokio::select! {
            biased;
            read = down.read_buf(buf) => {
                if read? == 0 {
                    return if buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(HeadError::Invalid("closed in the middle of a head".into()))
                    };
                }
            }
            () = closed(upstream), if idle_now => return Ok(None),
            () = idle.as_mut() => {
                if Instant::now() < idle_until {
                    idle.as_mut().reset(idle_until);
                    continue;
                }
                return if idle_now {
                    Ok(None)
                } else {
                    Err(HeadError::Invalid("head not complete in time".into()))
                };
            }
        }
    }
}

/// Resolves when the idle upstream connection is closed by the service (or
/// sends something it should not); never when there is none.
async fn closed(upstream: &Option<Upstream>) {
    let Some(up) = upstream else {
        return std::future::pending().await;
    };
    loop {
        if up.stream.readable().await.is_err() || !idle_and_open(up) {
            return;
        }
    }
}

/// A short answer of remora's own, closing the connection.
async fn reply<W: AsyncWrite + Unpin>(
    down: &mut W,
    status: u16,
    text: &str,
) -> std::io::Result<()> {
    let reason = reason(status);
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{text}",
        text.len()
    );
    down.write_all(answer.as_bytes()).await
}

fn reason(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// How a relayed exchange went wrong.
#[derive(Debug)]
enum Failure {
    /// Nothing reached the peer yet. `stale`: the service closed the
    /// connection without reading a byte (an idle keep-alive connection it
    /// had closed), so the request can be retried on a new one.
    NoResponse { stale: bool },
    /// Part of an answer was relayed, or the peer went: only closing is left.
    Broken,
}

/// How a relayed response ended.
#[derive(Debug, Clone, Copy)]
struct Relayed {
    /// Both sides may carry another request.
    keep_alive: bool,
    upgraded: bool,
}

/// A request not taken: to the original destination, the answer back.
async fn forward(
    down: &mut TcpStream,
    buf: &mut BytesMut,
    head: &Head,
    info: RequestInfo,
    slot: &mut Option<Upstream>,
    local: SocketAddr,
    filtered: &Filtered,
) -> Next {
    let head_bytes = buf.split_to(head.len).freeze();
    // A request with a body cannot be retried once sent: make sure first
    // that the service did not close the idle connection meanwhile.
    if info.body != Body::Empty
        && let Some(up) = slot
        && !idle_and_open(up)
    {
        *slot = None;
    }
    loop {
        let up = match slot {
            Some(up) => up,
            None => match filtered.connect(local).await {
                Ok(stream) => slot.insert(Upstream {
                    stream,
                    buf: BytesMut::with_capacity(READ_SIZE),
                    spare: HeaderRanges::new(),
                    reused: false,
                }),
                Err(_) => {
                    let text = "remora: cannot reach the original destination\n";
                    let _ = reply(down, 502, text).await;
                    return Next::Close;
                }
            },
        };
        let reused = std::mem::replace(&mut up.reused, true);
        match exchange(down, buf, &head_bytes, info, up).await {
            Ok(relayed) if relayed.upgraded => {
                if let Some(up) = slot.take() {
                    tunnel(down, buf, up).await;
                }
                return Next::Close;
            }
            Ok(relayed) if relayed.keep_alive && info.keep_alive => return Next::KeepAlive,
            Ok(_) => {
                *slot = None;
                return Next::Close;
            }
            Err(Failure::NoResponse { stale: true }) if reused && info.body == Body::Empty => {
                tracing::debug!(destination = %local, "upstream connection closed while idle; retrying");
                *slot = None;
            }
            Err(Failure::NoResponse { .. }) => {
                *slot = None;
                let text = "remora: the original destination did not answer\n";
                let _ = reply(down, 502, text).await;
                return Next::Close;
            }
            Err(Failure::Broken) => {
                *slot = None;
                return Next::Close;
            }
        }
    }
}

/// Whether an idle upstream connection is still open and silent (a closed
/// one reads end of stream; one with unexpected bytes is out of step).
fn idle_and_open(up: &Upstream) -> bool {
    let mut probe = [0u8; 1];
    matches!(up.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// `first` then `second`, in one `writev` when the socket takes both (no
/// copy into a buffer of their own).
async fn write_both(stream: &mut TcpStream, first: &[u8], second: &[u8]) -> std::io::Result<()> {
    let (mut first, mut second) = (first, second);
    while !first.is_empty() || !second.is_empty() {
        let slices = [std::io::IoSlice::new(first), std::io::IoSlice::new(second)];
        let n = stream.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_first = n.min(first.len());
        first = &first[from_first..];
        second = &second[n - from_first..];
    }
    Ok(())
}

/// One request and its answer over `up`.
async fn exchange(
    down: &mut TcpStream,
    buf: &mut BytesMut,
    head_bytes: &[u8],
    info: RequestInfo,
    up: &mut Upstream,
) -> Result<Relayed, Failure> {
    // The head and the part of the body already read go in one write.
    let mut progress = framing::Progress::new(info.body);
    let Ok((read, done)) = progress.take(buf) else {
        return Err(Failure::Broken);
    };
    if write_both(&mut up.stream, head_bytes, &buf[..read])
        .await
        .is_err()
    {
        return Err(Failure::NoResponse { stale: true });
    }
    buf.advance(read);
    let (mut dr, mut dw) = down.split();
    let (mut ur, mut uw) = up.stream.split();
    let mut response = pin!(relay_response(
        &mut up.buf,
        &mut up.spare,
        &mut ur,
        &mut dw,
        info.head_method
    ));
    if done {
        return response.await;
    }
    let body = framing::copy_rest(progress, buf, &mut dr, &mut uw);
    tokio::select! {
        biased;
        copied = body => {
            if copied.is_err() {
                // The peer went, or the service stopped reading: nothing
                // more can be relayed on either connection.
                return Err(Failure::Broken);
            }
            response.await
        }
        relayed = &mut response => {
            // The service answered before the whole body arrived: the
            // rest of it cannot be told from a next request; close.
            relayed.map(|r| Relayed { keep_alive: false, ..r })
        }
    }
}

/// Relay the response (after any interim `1xx`) from the service to the peer.
async fn relay_response(
    ubuf: &mut BytesMut,
    spare: &mut HeaderRanges,
    ur: &mut ReadHalf<'_>,
    dw: &mut WriteHalf<'_>,
    head_method: bool,
) -> Result<Relayed, Failure> {
    let mut relayed_any = false;
    let broken = |relayed_any: bool, stale: bool| {
        if relayed_any {
            Failure::Broken
        } else {
            Failure::NoResponse { stale }
        }
    };
    loop {
        let head = loop {
            match Head::response_reusing(ubuf, spare) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "bad response from the original destination");
                    return Err(broken(relayed_any, false));
                }
            }
            ubuf.reserve(READ_SIZE);
            match ur.read_buf(ubuf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(broken(relayed_any, ubuf.is_empty())),
            }
        };
        let body = match head.body(ubuf, false, head_method) {
            Ok(body) => body,
            Err(e) => {
                tracing::debug!(error = %e, "bad response from the original destination");
                return Err(broken(relayed_any, false));
            }
        };
        let keep_alive = head.keep_alive(ubuf) && body != Body::UntilClose;
        let (status, head_len) = (head.status, head.len);
        head.recycle(spare);
        // The head and the part of the body already read go in one write:
        // a small answer read whole reaches the peer in one segment.
        let mut progress = framing::Progress::new(body);
        let Ok((read, done)) = progress.take(&ubuf[head_len..]) else {
            tracing::debug!("bad chunked body from the original destination");
            return Err(broken(relayed_any, false));
        };
        if dw.write_all(&ubuf.split_to(head_len + read)).await.is_err() {
            return Err(Failure::Broken);
        }
        relayed_any = true;
        if status == 101 {
            return Ok(Relayed {
                keep_alive: false,
                upgraded: true,
            });
        }
        if (100..200).contains(&status) {
            continue;
        }
        if !done && framing::copy_rest(progress, ubuf, ur, dw).await.is_err() {
            return Err(Failure::Broken);
        }
        return Ok(Relayed {
            keep_alive,
            upgraded: false,
        });
    }
}

/// After a `101` from the service: bytes flow raw both ways until either
/// side closes.
async fn tunnel(down: &mut TcpStream, buf: &mut BytesMut, mut up: Upstream) {
    if !buf.is_empty() && up.stream.write_all(&buf.split()).await.is_err() {
        return;
    }
    if !up.buf.is_empty() && down.write_all(&up.buf.split()).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(down, &mut up.stream).await;
}

/// How a taken request ended.
enum Stolen {
    Next(Next),
    /// The client answered `101`: the connection is now a stolen one.
    Upgraded(Taken),
}

/// A taken request: to the subscriber, its answer back to the peer.
async fn steal(
    down: &mut TcpStream,
    buf: &mut BytesMut,
    head: &Head,
    info: RequestInfo,
    subscriber: &Subscriber,
    peer: SocketAddr,
    port: RemotePort,
) -> Stolen {
    let continue_now = info.expect_continue && info.minor >= 1 && info.body != Body::Empty;
    let text = |range: &std::ops::Range<usize>| String::from_utf8_lossy(&buf[range.clone()]);
    let wire_head = HttpRequestHead {
        method: text(&head.method).into_owned(),
        uri: text(&head.target).into_owned(),
        version: if info.minor == 0 {
            HttpVersion::Http10
        } else {
            HttpVersion::Http11
        },
        headers: head
            .headers
            .iter()
            .filter(|(name, _)| {
                !(continue_now && buf[name.clone()].eq_ignore_ascii_case(b"expect"))
            })
            .map(|(name, value)| {
                (
                    text(name).into_owned(),
                    bytes::Bytes::copy_from_slice(&buf[value.clone()]),
                )
            })
            .collect(),
    };
    buf.advance(head.len);
    let Some(mut taken) = Taken::announce(subscriber, port, peer, wire_head).await else {
        let _ = reply(down, 502, "remora: the local application is gone\n").await;
        return Stolen::Next(Next::Close);
    };
    if continue_now
        && down
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return Stolen::Next(Next::Close);
    }
    let sender = taken.body_sender();
    let answered = {
        let (mut dr, mut dw) = down.split();
        let mut response = pin!(respond(&mut dw, &mut taken, info));
        // The body goes to the client while its answer may already come back.
        let early = {
            let sender = &sender;
            let body = framing::read_body(info.body, buf, &mut dr, move |data| async move {
                for chunk in chunks(data) {
                    if !sender.send(chunk, false).await {
                        return false;
                    }
                }
                true
            });
            // A request that declares no body needs no end of it: the
            // client does not wait for one (one frame less per request).
            let end = info.declares_body;
            tokio::select! {
                biased;
                sent = body => match sent {
                    Ok(true) if !end || sender.send(bytes::Bytes::new(), true).await => None,
                    // The peer went mid-body (dropping the request cancels
                    // it), or the client did.
                    _ => return Stolen::Next(Next::Close),
                },
                answered = &mut response => Some(answered),
            }
        };
        match early {
            // Answered before the whole body arrived: the rest of the body
            // cannot be told from a next request; close.
            Some(_) if info.body != Body::Empty => return Stolen::Next(Next::Close),
            // No body: only its end was not announced yet (it needs none).
            Some(answered) => answered,
            None => loop {
                // Meanwhile, notice the peer leaving (it cancels the request);
                // pipelined requests wait in `buf`.
                tokio::select! {
                    answered = &mut response => break answered,
                    read = dr.read_buf(buf), if buf.len() < framing::MAX_HEAD => match read {
                        Ok(n) if n > 0 => {}
                        _ => return Stolen::Next(Next::Close),
                    },
                }
            },
        }
    };
    match answered {
        Answered::Done { keep_alive } if keep_alive && info.keep_alive => {
            Stolen::Next(Next::KeepAlive)
        }
        Answered::Done { .. } | Answered::Failed => Stolen::Next(Next::Close),
        Answered::Upgraded => Stolen::Upgraded(taken),
    }
}

/// How the answer to a taken request went.
#[derive(Debug, Clone, Copy)]
enum Answered {
    Done { keep_alive: bool },
    Upgraded,
    Failed,
}

/// How the answer's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    None,
    Raw,
    Chunked,
    UntilClose,
}

/// Write the client's answer to the peer.
async fn respond(dw: &mut WriteHalf<'_>, taken: &mut Taken, info: RequestInfo) -> Answered {
    let Ok(head) = taken.head().await else {
        let _ = reply(
            dw,
            502,
            "remora: the local application did not answer this request\n",
        )
        .await;
        return Answered::Failed;
    };
    if !(100..1000).contains(&head.status) || (head.status == 101 && !info.upgrade) {
        taken.pending.done = true;
        let _ = reply(dw, 502, "remora: the local application answered nonsense\n").await;
        return Answered::Failed;
    }
    let status = head.status;
    let has = |name: &str| {
        head.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let content_length = head
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
    let coding = if status == 101
        || info.head_method
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        Coding::None
    } else if content_length.is_some() {
        Coding::Raw
    } else if info.minor >= 1 {
        Coding::Chunked
    } else {
        Coding::UntilClose
    };
    let closing = coding == Coding::UntilClose || !info.keep_alive;
    let mut out = encode_head(&head, info.minor, coding, closing && !has("connection"));
    if status == 101 {
        taken.pending.done = true;
        return if dw.write_all(&out).await.is_ok() {
            Answered::Upgraded
        } else {
            Answered::Failed
        };
    }
    let server_closes = head
        .headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case(b"close"));
    loop {
        let (chunk, last) = match taken.next_body().await {
            Ok(Some(part)) => part,
            Ok(None) => (bytes::Bytes::new(), true),
            Err(reason) => {
                tracing::debug!(request = %taken.id(), %reason, "answer broken off");
                // Whatever was written, the peer must see the answer end
                // abnormally: close without the final chunk.
                let _ = dw.write_all(&out).await;
                return Answered::Failed;
            }
        };
        match coding {
            Coding::None => {}
            Coding::Raw | Coding::UntilClose => out.extend_from_slice(&chunk),
            Coding::Chunked if chunk.is_empty() => {}
            Coding::Chunked => {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(&chunk);
                out.extend_from_slice(b"\r\n");
            }
        }
        if last && coding == Coding::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        if !out.is_empty() {
            if dw.write_all(&out).await.is_err() {
                return Answered::Failed;
            }
            out.clear();
        }
        if last {
            return Answered::Done {
                keep_alive: !closing && !server_closes,
            };
        }
    }
}

/// The status line and headers of the client's answer, framed by `coding`.
fn encode_head(head: &HttpResponseHead, minor: u8, coding: Coding, add_close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        format!("HTTP/1.{minor} {} {}\r\n", head.status, reason(head.status)).as_bytes(),
    );
    for (name, value) in &head.headers {
        let framing_header = name.eq_ignore_ascii_case("transfer-encoding")
            || (coding != Coding::Raw
                && coding != Coding::None
                && name.eq_ignore_ascii_case("content-length"));
        if framing_header {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if coding == Coding::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if add_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}
