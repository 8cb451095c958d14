//! Reaching the operator through its aggregated API, `operator.remora.dev/v1alpha1`:
//! the session is an upgrade (WebSocket) request to
//! `/apis/operator.remora.dev/v1alpha1/namespaces/NS/targets/TARGET/connect`
//! sent with the kubeconfig's own credentials, whatever they are (client
//! certificates, tokens, exec plugins). The API server authenticates the
//! user, authorises `get` on `targets/connect`, and proxies the connection to
//! the operator, vouching for the user in its front-proxy headers; the
//! framed protocol then runs over the upgraded stream as binary messages.
//!
//! Both ends share this module: the path ([`connect_path`], [`route`]) and
//! the byte pipe over WebSocket messages ([`bridge`]). [`OperatorApi::listen`]
//! is the CLI's end: a loopback listener whose connections each become one
//! upgrade request, routed by the target of the client's first frame.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use remora_protocol::codec::{self, HEADER_LEN};
use remora_protocol::{Hello, HelloReply, PROTOCOL_VERSION};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::{ClientOptions, Error, Result};

/// The aggregated API's group.
pub const GROUP: &str = "operator.remora.dev";
/// Its version.
pub const VERSION: &str = "v1alpha1";
/// The APIService registering it (`<version>.<group>`).
pub const APISERVICE: &str = "v1alpha1.operator.remora.dev";
/// The resource sessions connect to.
pub const RESOURCE: &str = "targets";
/// Its connecting subresource.
pub const SUBRESOURCE: &str = "connect";
/// The `targets` name of a connection with no target (session listing and
/// killing, database branches, queue preparation): no target name has it,
/// since every target is `KIND.NAME`.
pub const CONTROL: &str = "_control";

/// Largest WebSocket message [`bridge`] sends.
const CHUNK: usize = 64 * 1024;

/// The `targets` name of a target: `deployment/web` as `deployment.web`
/// (`/` cannot be in a path segment); none: [`CONTROL`].
pub fn target_name(target: Option<&str>) -> String {
    match target {
        Some(t) => t.replace('/', "."),
        None => CONTROL.to_owned(),
    }
}

/// The namespace and `targets` name a Hello's target connects through: a
/// `namespace/<ns>/<target>` target in `<ns>`, any other in
/// `default_namespace`.
pub fn route(target: Option<&str>, default_namespace: &str) -> (String, String) {
    match target.map(crate::namespaced::split) {
        Some((Some(ns), rest)) => (ns.to_owned(), target_name(Some(rest))),
        Some((None, rest)) => (default_namespace.to_owned(), target_name(Some(rest))),
        None => (default_namespace.to_owned(), target_name(None)),
    }
}

/// The connect path of `name` (a [`target_name`]) in `namespace`.
pub fn connect_path(namespace: &str, name: &str) -> String {
    format!("/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{RESOURCE}/{name}/{SUBRESOURCE}")
}

/// Relay `io` through `ws` as binary messages, and back, until either side
/// ends. Text, ping and pong messages carry no bytes of the stream.
pub async fn bridge<S, IO>(ws: WebSocketStream<S>, io: IO)
where
    S: AsyncRead + AsyncWrite + Unpin,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let down = async {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
            if let Message::Binary(data) = message
                && wr.write_all(&data).await.is_err()
            {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    // Either side ending ends the connection: the framed protocol has no
    // half-closed state.
    tokio::select! {
        () = down => {}
        () = up => {}
    }
}

/// The CLI's end: local connections relayed as upgrade requests through
/// the API server, with the user's own client.
#[derive(Clone)]
pub struct OperatorApi {
    client: kube::Client,
    namespace: String,
}

impl std::fmt::Debug for OperatorApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorApi")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl OperatorApi {
    /// With the user's client (`options`); targets without a namespace of
    /// their own connect in the kubeconfig's namespace.
    ///
    /// # Errors
    /// [`Error::Config`] when no kubeconfig is usable.
    pub async fn connect(options: &ClientOptions) -> Result<Self> {
        let kube = crate::KubeClient::connect(options).await?;
        Ok(OperatorApi {
            client: kube.client,
            namespace: kube.namespace,
        })
    }

    /// Listen on loopback; every connection's first frame (its Hello) picks
    /// the connect path, and the connection is relayed over that upgrade.
    /// A refused upgrade is answered as the operator would: a rejected
    /// Hello carrying the API server's message (which names the user and
    /// the missing permission).
    ///
    /// # Errors
    /// Binding the loopback listener.
    pub async fn listen(self) -> Result<(SocketAddr, JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Resolve(format!("binding the operator relay: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Resolve(e.to_string()))?;
        let relay = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let this = self.clone();
                tokio::spawn(async move { this.relay(stream).await });
            }
        });
        Ok((addr, relay))
    }

    async fn relay(&self, mut local: TcpStream) {
        let (first, hello) = match read_hello(&mut local).await {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(error = %e, "no Hello on the operator relay");
                return;
            }
        };
        let (namespace, name) = route(hello.target.as_deref(), &self.namespace);
        let path = connect_path(&namespace, &name);
        let request = match http::Request::get(&path).body(Vec::new()) {
            Ok(request) => request,
            Err(e) => return refuse(&mut local, format!("{path}: {e}")).await,
        };
        let ws = match self.client.connect(request).await {
            Ok(connection) => connection.into_stream(),
            Err(e) => {
                let reason = match &e {
                    kube::Error::Api(status) if status.code == 404 => format!(
                        "the operator's aggregated API is not served ({path}: {}): is the \
                         operator installed with its APIService {APISERVICE}? (`remora \
                         operator manifests | kubectl apply -f -`)",
                        status.message
                    ),
                    kube::Error::Api(status) => format!(
                        "the API server refused the connection to the operator: {} (your \
                         kubeconfig user needs get on {RESOURCE}/{SUBRESOURCE} in API group \
                         {GROUP}, namespace {namespace})",
                        status.message
                    ),
                    other => format!("connecting to the operator through {path}: {other}"),
                };
                return refuse(&mut local, reason).await;
            }
        };
        let mut ws = ws;
        if ws.send(Message::Binary(Bytes::from(first))).await.is_err() {
            return;
        }
        bridge(ws, local).await;
    }
}

/// Read the client's first frame, a Hello: its bytes (to send on as they
/// are) and the message.
async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(Vec<u8>, Hello)> {
    let invalid = |e: codec::CodecError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).await?;
    let len = codec::frame_len(header).map_err(invalid)?;
    let mut frame = vec![0u8; HEADER_LEN + len];
    frame[..HEADER_LEN].copy_from_slice(&header);
    r.read_exact(&mut frame[HEADER_LEN..]).await?;
    let hello = codec::decode(&frame[HEADER_LEN..]).map_err(invalid)?;
    Ok((frame, hello))
}

async fn refuse(local: &mut TcpStream, reason: String) {
    let reply = HelloReply::Rejected {
        reason,
        server_protocol: PROTOCOL_VERSION,
        server_version: String::new(),
    };
    let mut out = Vec::new();
    if codec::encode_frame(&reply, &mut out).is_ok() {
        let _ = local.write_all(&out).await;
    }
    let _ = local.shutdown().await;
}

#[cfg(test)]
mod tests;
