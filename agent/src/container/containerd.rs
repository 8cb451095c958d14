//! A container's main process from containerd's API: one gRPC call,
//! `containerd.services.tasks.v1.Tasks/Get` in namespace `k8s.io` (the CRI
//! plugin's), over the node's socket (`/run/containerd/containerd.sock`).
//! HTTP/2 from hyper and the two small protobuf messages encoded by hand, so
//! the agent needs no gRPC stack or code generator.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::Path;
use std::time::Duration;

/// containerd's socket on a Kubernetes node.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// The namespace the CRI plugin keeps Kubernetes containers in.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// How long the whole call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The method called.
const TASKS_GET: &str = "/containerd.services.tasks.v1.Tasks/Get";

/// `GetRequest { string container_id = 1; }` in protobuf.
fn get_request(container_id: &str) -> Bytes {
    let mut msg = BytesMut::new();
    msg.put_u8(0x0a); // field 1, length-delimited
    put_varint(&mut msg, container_id.len() as u64);
    msg.put_slice(container_id.as_bytes());
    // gRPC framing: not compressed, big-endian length.
    let mut framed = BytesMut::with_capacity(5 + msg.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
    framed.put_slice(&msg);
    framed.freeze()
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
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
type Value<'a> = Result<u64, &'a [u8]>;

/// The fields of a protobuf message: (number, value).
fn fields(mut buf: &[u8]) -> Option<Vec<(u64, Value<'_>)>> {
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

/// The pid in a gRPC-framed `GetResponse { Process process = 1; }`, where
/// `Process { string container_id = 1; string id = 2; uint32 pid = 3; ... }`.
pub fn pid_of_response(body: &[u8]) -> Option<u32> {
    let msg = body.get(5..)?;
    let process = fields(msg)?
        .into_iter()
        .find_map(|(n, v)| (n == 1).then_some(v).and_then(Result::err))?;
    fields(process)?
        .into_iter()
        .find_map(|(n, v)| (n == 3).then_some(v).and_then(Result::ok))
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|pid| *pid > 0)
}

/// Ask containerd at `socket` for the pid of the task of `container_id` in `namespace`.
///
/// # Errors
/// Why it could not: the socket, the call, containerd's gRPC status, or an
/// answer without a pid.
pub async fn task_pid(socket: &Path, namespace: &str, container_id: &str) -> Result<u32, String> {
    tokio::time::timeout(CALL_TIMEOUT, call(socket, namespace, container_id))
        .await
        .map_err(|_| format!("no answer within {}s", CALL_TIMEOUT.as_secs()))?
}

async fn call(socket: &Path, namespace: &str, container_id: &str) -> Result<u32, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::post(format!("http://containerd{TASKS_GET}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("containerd-namespace", namespace)
        .body(Full::new(get_request(container_id)))
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("calling Tasks/Get: {e}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
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
                "Tasks/Get answered HTTP {status}, grpc-status {code}: {}",
                grpc("grpc-message").unwrap_or_default()
            ));
        }
        pid_of_response(&collected.to_bytes())
            .ok_or_else(|| "Tasks/Get answered without a pid".to_owned())
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests;
