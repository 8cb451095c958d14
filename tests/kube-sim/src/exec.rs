//! `pods/<name>/exec` over WebSocket (`v5.channel.k8s.io`, what kubectl 1.32 and kube-rs
//! speak first; `v4.channel.k8s.io` too): the command runs through the container's init, so
//! in the container's cgroup, namespaces and mounts, with its environment. Channels: 0 stdin
//! (client → server), 1 stdout, 2 stderr, 3 the final `Status` (exit code), 255 a v5 close
//! signal (`[255, 0]`: stdin ended). No TTY: `-t` runs the command without a terminal.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::{Request, Response, body::Incoming, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use crate::{
    error::{ApiError, Result},
    http::{Body, Query},
    kubelet::{Execs, InitCommand},
    portforward::{header_str, switching},
};

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";
/// Messages queued towards the client.
const OUT_QUEUE: usize = 64;
const CHUNK: usize = 32 * 1024;

fn message(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// The `Status` a kubelet writes on the error channel when the command has exited.
fn exit_status(code: Option<i32>) -> Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        None => json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                       "message": "command terminated by a signal"}),
    }
}

/// Answers an exec upgrade request and runs the command once upgraded.
pub fn handle(execs: &Execs, pod: &Value, req: Request<Incoming>) -> Result<Response<Body>> {
    let query = Query::parse(req.uri().query());
    let argv: Vec<String> = query
        .all("command")
        .into_iter()
        .map(str::to_owned)
        .collect();
    if argv.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match query.get("container") {
        Some(c) => c.to_owned(),
        None if containers.len() == 1 => containers[0].to_owned(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: {containers:?}"
            )));
        }
    };
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let init = execs
        .lock()
        .get(&(uid, container.clone()))
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to upgrade connection: container {container} not found in pod {name} or not running"
            ))
        })?;
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| {
            ApiError::bad_request("exec needs a WebSocket upgrade (v5.channel.k8s.io)")
        })?;
    let accept = derive_accept_key(key.as_bytes());
    let offered = header_str(&req, header::SEC_WEBSOCKET_PROTOCOL);
    let protocol = [V5, V4]
        .into_iter()
        .find(|p| offered.contains(p))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "no supported subprotocol in {offered:?}: this server speaks {V5} and {V4}"
            ))
        })?;
    let with_stdin = query.flag("stdin") && query.get("stdin").is_some();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        run(ws, init, argv, with_stdin).await;
    });
    Ok(switching(&[
        (header::UPGRADE.as_str(), "websocket"),
        (header::SEC_WEBSOCKET_ACCEPT.as_str(), &accept),
        (header::SEC_WEBSOCKET_PROTOCOL.as_str(), protocol),
    ]))
}

async fn pump(mut from: impl AsyncRead + Unpin, channel: u8, out: mpsc::Sender<Message>) {
    let mut buf = vec![0; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.send(message(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn run<S>(ws: WebSocketStream<S>, init: Arc<InitCommand>, argv: Vec<String>, with_stdin: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // A normal closure: client-go reads it as the end of every stream (1005, no code,
        // would be an error).
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    });
    let spawned = init
        .exec_command(&argv)
        .stdin(if with_stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                                "message": format!("starting {argv:?}: {e}")});
            let _ = out_tx.send(message(3, status.to_string().as_bytes())).await;
            drop(out_tx);
            let _ = writer.await;
            return;
        }
    };
    let stdout = child
        .stdout
        .take()
        .map(|o| tokio::spawn(pump(o, 1, out_tx.clone())));
    let stderr = child
        .stderr
        .take()
        .map(|e| tokio::spawn(pump(e, 2, out_tx.clone())));
    let mut stdin = child.stdin.take();
    let code = loop {
        tokio::select! {
            status = child.wait() => break status.ok().and_then(|s| s.code()),
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 => {
                        if let Some(w) = stdin.as_mut()
                            && w.write_all(&b[1..]).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    // v5: the client closed one of its streams; stdin is the only one.
                    255 if b.get(1) == Some(&0) => stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = child.start_kill();
                    break child.wait().await.ok().and_then(|s| s.code());
                }
                Some(Ok(_)) => {}
            },
        }
    };
    for pump in [stdout, stderr].into_iter().flatten() {
        let _ = pump.await;
    }
    let status: Bytes = exit_status(code).to_string().into();
    let _ = out_tx.send(message(3, &status)).await;
    drop(out_tx);
    let _ = writer.await;
}
