//! One unary gRPC call over a unix socket, for the runtimes' APIs
//! (containerd's `Tasks/Get`, CRI-O's CRI `ContainerStatus`): HTTP/2 from
//! hyper and the few protobuf fields read and written by hand, so the agent
//! needs no gRPC stack or code generator.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::Path;
use std::time::Duration;

/// How long a whole call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Append a protobuf varint.
pub fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Append a length-delimited field (string, bytes or message) `number`.
pub fn put_bytes_field(buf: &mut BytesMut, number: u64, bytes: &[u8]) {
    put_varint(buf, number << 3 | 2);
    put_varint(buf, bytes.len() as u64);
    buf.put_slice(bytes);
}

/// Append a varint field (integer, bool, enum) `number`.
pub fn put_varint_field(buf: &mut BytesMut, number: u64, value: u64) {
    put_varint(buf, number << 3);
    put_varint(buf, value);
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A protobuf field's value: a number (varint or fixed) or bytes.
pub type Value<'a> = Result<u64, &'a [u8]>;

/// The fields of a protobuf message: (number, value); `None` if malformed.
pub fn fields(mut buf: &[u8]) -> Option<Vec<(u64, Value<'_>)>> {
    let mut out = Vec::new();
    while buf.has_remaining() {
        let key = varint(&mut buf)?;
        let value = match key & 7 {
            0 => Ok(varint(&mut buf)?),
            1 => {
                if buf.remaining() < 8 {
                    return None;
                }
                Ok(buf.get_u64_le())
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                if buf.remaining() < len {
                    return None;
                }
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                Err(bytes)
            }
            5 => {
                if buf.remaining() < 4 {
                    return None;
                }
                Ok(u64::from(buf.get_u32_le()))
            }
            _ => return None,
        };
        out.push((key >> 3, value));
    }
    Some(out)
}

/// gRPC's length-prefixed framing of one message: not compressed, big-endian length.
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(message);
    framed.freeze()
}

/// The message of a gRPC-framed body holding exactly one uncompressed message.
pub fn unframe(body: &[u8]) -> Option<&[u8]> {
    let (&flag, rest) = body.split_first()?;
    let len = usize::try_from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)).ok()?;
    (flag == 0).then_some(())?;
    rest.get(4..4 + len)
}

/// Call `method` (`/package.Service/Method`) on the server at `socket` with
/// the encoded `message` and the extra `headers`; the answer's message.
///
/// # Errors
/// Why not: the socket, HTTP/2, a non-OK gRPC status (with its message), a
/// malformed answer, or no answer within [`CALL_TIMEOUT`].
pub async fn unary(
    socket: &Path,
    method: &str,
    headers: &[(&str, &str)],
    message: &[u8],
) -> Result<Bytes, String> {
    tokio::time::timeout(CALL_TIMEOUT, call(socket, method, headers, message))
        .await
        .map_err(|_| format!("no answer within {}s", CALL_TIMEOUT.as_secs()))?
}

async fn call(
    socket: &Path,
    method: &str,
    headers: &[(&str, &str)],
    message: &[u8],
) -> Result<Bytes, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::post(format!("http://localhost{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(frame(message)))
        .map_err(|e| e.to_string())?;
    let short = method.rsplit('.').next().unwrap_or(method);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("calling {short}: {e}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer of {short}: {e}"))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        // A trailers-only answer (an error) carries the status in its headers.
        let grpc = |name: &str| {
            trailers
                .get(name)
                .or_else(|| headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let code = grpc("grpc-status").unwrap_or_default();
        if !status.is_success() || code != "0" {
            return Err(format!(
                "{short} answered HTTP {status}, grpc-status {code}: {}",
                grpc("grpc-message").unwrap_or_default()
            ));
        }
        let body = collected.to_bytes();
        let message =
            unframe(&body).ok_or_else(|| format!("{short} answered a malformed gRPC frame"))?;
        Ok(Bytes::copy_from_slice(message))
    }
    .await;
    driver.abort();
    result
}
