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
//!
//! [`PortForwardStream`] is the same WebSocket as a byte stream
//! (`AsyncRead` + `AsyncWrite`) for a client that speaks to the pod's port
//! itself: the intproxy carries its framed remora protocol in the
//! WebSocket's payloads that way, with no local socket and relay between it
//! and the WebSocket. [`PortForward::relay`] remains for clients that need a
//! local address (the operator link of short commands, the `Platform` seam).

use bytes::{Buf, Bytes};
use futures::{Sink, SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
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
pub type Upgraded = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

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

    /// The forward as a byte stream to the pod's port.
    pub fn into_stream(self) -> PortForwardStream<Upgraded> {
        PortForwardStream::new(self.socket, self.pod, self.port)
    }
}

/// What one message from the server is, once its channel byte is read.
enum Frame {
    /// Bytes from the pod's port.
    Data(Bytes),
    /// Nothing for the reader (a channel's port announcement, a text or
    /// ping message).
    Skip,
    /// The pod's side of the port ended.
    End,
}

/// The reading half of the channel protocol: which channels announced
/// their port yet.
#[derive(Debug, Default)]
struct Channels {
    opened: [bool; 2],
}

impl Channels {
    /// Classify `data`, one binary message from the server.
    fn frame(&mut self, data: Bytes, port: u16) -> Result<Frame, Ended> {
        let Some(&channel) = data.first() else {
            return Ok(Frame::Skip);
        };
        if channel == CLOSE {
            // v5 (no Kubernetes server picks it for port-forward: see
            // docs/kubernetes.md): the server closed a channel.
            return Ok(if data.get(1) == Some(&DATA) {
                Frame::End
            } else {
                Frame::Skip
            });
        }
        let Some(seen) = self.opened.get_mut(usize::from(channel)) else {
            return Err(Ended::Broken(format!("a message on channel {channel}")));
        };
        let payload = data.slice(1..);
        if !*seen {
            let announced = <[u8; 2]>::try_from(&payload[..])
                .ok()
                .map(u16::from_le_bytes);
            if announced != Some(port) {
                return Err(Ended::Broken(format!(
                    "channel {channel} opened for port {announced:?}, not {port}"
                )));
            }
            *seen = true;
            return Ok(Frame::Skip);
        }
        if channel == ERROR {
            return Err(Ended::Refused(
                String::from_utf8_lossy(&payload).into_owned(),
            ));
        }
        Ok(Frame::Data(payload))
    }
}

/// A port-forward WebSocket to one port of a pod as a byte stream: reads
/// give the data channel's payloads (an error-channel message is a
/// `ConnectionRefused` error: nothing listens on the port), each write is
/// one data message, and shutting down closes the WebSocket (v4 has no
/// half-close). Polled from one task (it is not split), so no lock sits
/// between the two directions.
pub struct PortForwardStream<S> {
    socket: WebSocketStream<S>,
    pod: String,
    port: u16,
    channels: Channels,
    /// The rest of the last data message, not yet read.
    pending: Bytes,
    /// The server closed the data channel or the WebSocket.
    ended: bool,
}

impl<S> std::fmt::Debug for PortForwardStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForwardStream")
            .field("pod", &self.pod)
            .field("port", &self.port)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<S> PortForwardStream<S> {
    /// Over `socket`, a port-forward WebSocket to `port` of `pod` that
    /// negotiated the binary channel protocol.
    pub fn new(socket: WebSocketStream<S>, pod: String, port: u16) -> Self {
        PortForwardStream {
            socket,
            pod,
            port,
            channels: Channels::default(),
            pending: Bytes::new(),
            ended: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PortForwardStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let data = match ready!(this.socket.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(data))) => data,
                Some(Ok(Message::Close(_))) | None => {
                    this.ended = true;
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Poll::Ready(Err(std::io::Error::other(format!(
                        "port-forward to pod {} port {}: {e}",
                        this.pod, this.port
                    ))));
                }
            };
            match this.channels.frame(data, this.port) {
                Ok(Frame::Data(payload)) => this.pending = payload,
                Ok(Frame::Skip) => {}
                Ok(Frame::End) => this.ended = true,
                Err(Ended::Refused(message)) => {
                    this.ended = true;
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        format!("pod {} port {}: {message}", this.pod, this.port),
                    )));
                }
                Err(Ended::Broken(reason)) => {
                    this.ended = true;
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "port-forward to pod {} port {}: {reason}",
                            this.pod, this.port
                        ),
                    )));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PortForwardStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        ready!(Pin::new(&mut this.socket).poll_ready(cx)).map_err(ws_error)?;
        let n = buf.len().min(CHUNK);
        let mut message = Vec::with_capacity(1 + n);
        message.push(DATA);
        message.extend_from_slice(&buf[..n]);
        Pin::new(&mut this.socket)
            .start_send(Message::Binary(message.into()))
            .map_err(ws_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_flush(cx)
            .map_err(ws_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_close(cx)
            .map_err(ws_error)
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> std::io::Error {
    match e {
        tokio_tungstenite::tungstenite::Error::Io(e) => e,
        other => std::io::Error::other(other),
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
    let mut channels = Channels::default();
    while let Some(message) = stream.next().await {
        let data = match message {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => return Err(Ended::Broken(format!("reading the WebSocket: {e}"))),
        };
        let payload = match channels.frame(data, port)? {
            Frame::Data(payload) => payload,
            Frame::Skip => continue,
            Frame::End => break,
        };
        if let Err(e) = to_local.write_all(&payload).await {
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
