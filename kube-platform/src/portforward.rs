//! One port of a pod reached through the API server's `pods/portforward`
//! WebSocket (`v4.channel.k8s.io`), relayed to a local TCP connection.
//!
//! Hand-rolled instead of `kube::api::Portforwarder` (it still opens the
//! socket: `kube::Client::connect`) because that one was the cost of
//! remora's data path through a port-forward: every chunk went from the
//! WebSocket through a futures channel of one message to a task that wrote it
//! into a 1 MiB in-memory pipe, which `copy_bidirectional` then read in 8 KiB
//! pieces and wrote to the local socket (two extra copies, three task
//! wake-ups and eight times as many socket writes per chunk; the other
//! direction likewise). Here each WebSocket message's payload is written to
//! the local socket as it arrives, and each read from the local socket is
//! one message. docs/benchmarks.md has the numbers.
//!
//! The framing is kube-rs' and the kubelet's: port `i` of the request uses
//! channel `2i` for data and `2i+1` for errors, each channel's first message
//! is the port number (two bytes, little endian), every later one is a
//! channel byte and a payload. v4 has no half-close: when the local side
//! finishes sending, the WebSocket is closed, as kube-rs does.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Bytes read from the local socket per WebSocket message (the kubelet and
/// the API server pass messages of any size; kube-rs sends what one read gives).
const CHUNK: usize = 64 * 1024;
/// The data channel of the one forwarded port.
const DATA: u8 = 0;
/// Its error channel.
const ERROR: u8 = 1;
/// `v5.channel.k8s.io`'s close signal (kube-rs offers v5 first): a message
/// on it names the channel that was closed.
const CLOSE: u8 = 255;

/// The socket `kube::Client::connect` opens.
type Upgraded = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// An open port-forward WebSocket to one port of a pod, not yet relaying.
pub struct PortForward {
    socket: WebSocketStream<Upgraded>,
    pod: String,
    port: u16,
}

impl std::fmt::Debug for PortForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForward")
            .field("pod", &self.pod)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl PortForward {
    /// Open the WebSocket to `port` of `pod` (in the namespace of `pods`).
    ///
    /// # Errors
    /// The client's: the API server refuses (RBAC: `create` on
    /// `pods/portforward`), or the upgrade fails.
    pub async fn open(pods: &Api<Pod>, pod: &str, port: u16) -> Result<PortForward, kube::Error> {
        let request = kube::core::Request::new(pods.resource_url())
            .portforward(pod, &[port])
            .map_err(kube::Error::BuildRequest)?;
        let socket = pods
            .clone()
            .into_client()
            .connect(request)
            .await?
            .into_stream();
        Ok(PortForward {
            socket,
            pod: pod.to_owned(),
            port,
        })
    }

    /// Relay `local` to the pod's port and back until either side ends.
    pub async fn relay(self, local: TcpStream) {
        relay(self.socket, local, &self.pod, self.port).await;
    }
}

/// Relay `local` through `socket` (a port-forward WebSocket to `port` of
/// `pod`) and back until either side ends.
async fn relay<S>(socket: WebSocketStream<S>, local: TcpStream, pod: &str, port: u16)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = local.set_nodelay(true);
    let (from_local, to_local) = local.into_split();
    let (mut sink, stream) = socket.split();
    let down = to_local_loop(stream, to_local, port);
    let up = async {
        let sent = to_pod_loop(from_local, &mut sink).await;
        // v4 cannot half-close: the end of what the local side sends is
        // the end of the forward (the server then closes its side).
        let _ = sink.send(Message::Close(None)).await;
        sent
    };
    tokio::pin!(down, up);
    // The pod's side ending ends the relay at once; the local side ending
    // leaves the pod's answer to arrive until the server closes.
    let outcome = tokio::select! {
        result = &mut down => result,
        sent = &mut up => match sent {
            Ok(()) => down.await,
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(()) => {}
        Err(Ended::Refused(message)) => {
            tracing::debug!(%pod, port, %message, "the pod's port refused the forward");
        }
        Err(Ended::Broken(reason)) => {
            tracing::debug!(%pod, port, %reason, "port-forward ended");
        }
    }
}

/// Why a relay ended other than by a clean close.
enum Ended {
    /// The server wrote on the error channel (nothing listens on the port).
    Refused(String),
    /// A socket failed or the server broke the framing.
    Broken(String),
}

/// Pod → local: each data message's payload is written to the local socket.
async fn to_local_loop<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: futures::stream::SplitStream<WebSocketStream<S>>,
    mut to_local: OwnedWriteHalf,
    port: u16,
) -> Result<(), Ended> {
    // Whether each channel's first message (the port number) was seen.
    let mut opened = [false; 2];
    while let Some(message) = stream.next().await {
        let data = match message {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => return Err(Ended::Broken(format!("reading the WebSocket: {e}"))),
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        if channel == CLOSE {
            // v5 (if a server picks it): the server closed a channel.
            if payload.first() == Some(&DATA) {
                break;
            }
            continue;
        }
        let Some(seen) = opened.get_mut(usize::from(channel)) else {
            return Err(Ended::Broken(format!("a message on channel {channel}")));
        };
        if !*seen {
            let announced = <[u8; 2]>::try_from(payload).ok().map(u16::from_le_bytes);
            if announced != Some(port) {
                return Err(Ended::Broken(format!(
                    "channel {channel} opened for port {announced:?}, not {port}"
                )));
            }
            *seen = true;
            continue;
        }
        if channel == ERROR {
            return Err(Ended::Refused(
                String::from_utf8_lossy(payload).into_owned(),
            ));
        }
        if let Err(e) = to_local.write_all(payload).await {
            return Err(Ended::Broken(format!("writing to the local socket: {e}")));
        }
    }
    let _ = to_local.shutdown().await;
    Ok(())
}

/// Local → pod: each read is one data message.
async fn to_pod_loop<S: AsyncRead + AsyncWrite + Unpin>(
    mut from_local: OwnedReadHalf,
    sink: &mut futures::stream::SplitSink<WebSocketStream<S>, Message>,
) -> Result<(), Ended> {
    let mut buf = vec![0; 1 + CHUNK];
    buf[0] = DATA;
    loop {
        let n = match from_local.read(&mut buf[1..]).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) => return Err(Ended::Broken(format!("reading the local socket: {e}"))),
        };
        let message = Bytes::copy_from_slice(&buf[..=n]);
        if let Err(e) = sink.send(Message::Binary(message)).await {
            return Err(Ended::Broken(format!("writing the WebSocket: {e}")));
        }
    }
}

#[cfg(test)]
mod tests;
