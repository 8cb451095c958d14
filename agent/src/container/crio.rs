//! A container's main process from CRI-O: the CRI call
//! `runtime.v1.RuntimeService/ContainerStatus` with `verbose: true` over
//! CRI-O's socket (`/run/crio/crio.sock`; `/var/run` is a link to `/run`),
//! through [`super::grpc`]. CRI-O puts a JSON document under the key `info`
//! of the answer's `info` map, whose `pid` is the container's init on the
//! node (`crictl inspect` prints the same document).

use super::grpc::{fields, put_bytes_field, put_varint_field, unary};
use bytes::BytesMut;
use std::path::Path;

/// CRI-O's socket on a Kubernetes node.
pub const DEFAULT_SOCKET: &str = "/run/crio/crio.sock";
/// The method called.
pub const CONTAINER_STATUS: &str = "/runtime.v1.RuntimeService/ContainerStatus";
/// The key of the answer's `info` map holding CRI-O's JSON.
const INFO_KEY: &str = "info";

/// `ContainerStatusRequest { string container_id = 1; bool verbose = 2; }`.
pub fn status_request(container_id: &str) -> BytesMut {
    let mut msg = BytesMut::new();
    put_bytes_field(&mut msg, 1, container_id.as_bytes());
    put_varint_field(&mut msg, 2, 1);
    msg
}

/// The `info` entry of `ContainerStatusResponse { ContainerStatus status = 1;
/// map<string, string> info = 2; }` (a map entry is a message
/// `{ string key = 1; string value = 2; }`).
fn info_json(msg: &[u8]) -> Option<&[u8]> {
    fields(msg)?.into_iter().find_map(|(n, v)| {
        let entry = (n == 2).then_some(v)?.err()?;
        let entry = fields(entry)?;
        let field = |number| {
            entry
                .iter()
                .find_map(|(n, v)| (*n == number).then_some(*v)?.err())
        };
        (field(1)? == INFO_KEY.as_bytes()).then(|| field(2).unwrap_or_default())
    })
}

/// The pid in a `ContainerStatusResponse` message.
///
/// # Errors
/// What the answer lacked.
pub fn pid_of_response(msg: &[u8]) -> Result<u32, String> {
    let info =
        info_json(msg).ok_or("ContainerStatus answered without the verbose \"info\" entry")?;
    let info: serde_json::Value = serde_json::from_slice(info)
        .map_err(|e| format!("ContainerStatus's \"info\" is not JSON: {e}"))?;
    match info.get("pid").and_then(serde_json::Value::as_u64) {
        Some(0) => Err("ContainerStatus says pid 0: the container is not running".to_owned()),
        Some(pid) => u32::try_from(pid).map_err(|_| format!("pid {pid} out of range")),
        None => Err("ContainerStatus's \"info\" has no \"pid\"".to_owned()),
    }
}

/// Ask CRI-O at `socket` for the pid of `container_id`.
///
/// # Errors
/// Why it could not: the socket, the call, CRI-O's gRPC status (NotFound
/// for an unknown container), or an answer without a pid.
pub async fn container_pid(socket: &Path, container_id: &str) -> Result<u32, String> {
    let answer = unary(socket, CONTAINER_STATUS, &[], &status_request(container_id)).await?;
    pid_of_response(&answer)
}
