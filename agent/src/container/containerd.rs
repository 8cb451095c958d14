//! A container's main process from containerd's API: one gRPC call,
//! `containerd.services.tasks.v1.Tasks/Get` in namespace `k8s.io` (the CRI
//! plugin's), over the node's socket (`/run/containerd/containerd.sock`),
//! through [`super::grpc`].

use super::grpc::{fields, put_bytes_field, unary};
use bytes::BytesMut;
use std::path::Path;

/// containerd's socket on a Kubernetes node.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// The namespace the CRI plugin keeps Kubernetes containers in.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The method called.
const TASKS_GET: &str = "/containerd.services.tasks.v1.Tasks/Get";

/// `GetRequest { string container_id = 1; }` in protobuf.
fn get_request(container_id: &str) -> BytesMut {
    let mut msg = BytesMut::new();
    put_bytes_field(&mut msg, 1, container_id.as_bytes());
    msg
}

/// The pid in `GetResponse { Process process = 1; }` (the message, unframed), where
/// `Process { string container_id = 1; string id = 2; uint32 pid = 3; ... }`.
pub fn pid_of_response(msg: &[u8]) -> Option<u32> {
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
    let answer = unary(
        socket,
        TASKS_GET,
        &[("containerd-namespace", namespace)],
        &get_request(container_id),
    )
    .await?;
    pid_of_response(&answer).ok_or_else(|| "Tasks/Get answered without a pid".to_owned())
}

#[cfg(test)]
mod tests;
