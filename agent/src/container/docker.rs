//! A container's main process from Docker (nodes whose kubelet uses
//! cri-dockerd, where container ids are `docker://<id>`): the Engine API's
//! container inspect, `GET /containers/{id}/json` over `/var/run/docker.sock`
//! (HTTP/1.1 from hyper), whose `State.Pid` is the container's init on the
//! node (0 when it is not running).

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::path::Path;

use super::grpc::CALL_TIMEOUT;

/// Docker's socket on a node.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The request's path for `container_id`.
pub fn inspect_path(container_id: &str) -> String {
    format!("/containers/{container_id}/json")
}

/// The pid in the JSON answer of a container inspect.
///
/// # Errors
/// What the answer lacked.
pub fn pid_of_response(body: &[u8]) -> Result<u32, String> {
    let inspect: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the inspect answer is not JSON: {e}"))?;
    let state = &inspect["State"];
    match state["Pid"].as_u64() {
        Some(0) => Err(format!(
            "Docker says pid 0: the container is not running (State.Status {})",
            state["Status"]
        )),
        Some(pid) => u32::try_from(pid).map_err(|_| format!("pid {pid} out of range")),
        None => Err("the inspect answer has no State.Pid".to_owned()),
    }
}

/// Ask Docker at `socket` for the pid of `container_id`.
///
/// # Errors
/// Why it could not: the socket, the call, Docker's status and message
/// (404 for an unknown container), or an answer without a pid.
pub async fn container_pid(socket: &Path, container_id: &str) -> Result<u32, String> {
    tokio::time::timeout(CALL_TIMEOUT, call(socket, container_id))
        .await
        .map_err(|_| format!("no answer within {}s", CALL_TIMEOUT.as_secs()))?
}

async fn call(socket: &Path, container_id: &str) -> Result<u32, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(inspect_path(container_id))
        .header("host", "docker")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("inspecting the container: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the inspect answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            // Errors are `{"message": "..."}`.
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(format!(
                "the container inspect answered HTTP {status}: {message}"
            ));
        }
        pid_of_response(&body)
    }
    .await;
    driver.abort();
    result
}
