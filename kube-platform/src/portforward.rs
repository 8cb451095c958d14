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
//! and the WebSocket. It frames the WebSocket itself ([`wire`]): a data
//! frame's payload is read out of the connection's read buffer in place,
//! the bulk path of `remora run` through a port-forward. [`PortForward::relay`]
//! remains for clients that need a local address (the operator link of short
//! commands, the `Platform` seam), over tungstenite.

use bytes::{Buf, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use wire::{CLOSE_CHANNEL as CLOSE, DATA, ERROR};

mod wire;

/// Bytes read from the local socket per WebSocket message (the kubelet and
/// the API server pass messages of any size; kube-rs sends what one read gives).
const CHUNK: usize = 64 * 1024;
/// Bytes [`PortForwardStream`] asks the connection for per read: several of
/// the API server's messages (32 KiB each from Go's `io.Copy`) per system call.
const READ_SIZE: usize = 256 * 1024;
/// Frames [`PortForwardStream`] holds before a write waits for the
/// connection to take them.
const WRITE_HIGH: usize = 256 * 1024;

/// The socket `kube::Client::connect` opens.
pub type Upgraded = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// An open port-forward WebSocket to one port of a pod, not yet relaying.
pub struct PortForward {
    /// The upgraded connection, before any WebSocket framing.
    socket: Upgraded,
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
            .into_stream()
            // Nothing was read yet: tungstenite holds no bytes of ours.
            .into_inner();
        Ok(PortForward {
            socket,
            pod: pod.to_owned(),
            port,
        })
    }

    /// Relay `local` to the pod's port and back until either side ends.
    pub async fn relay(self, local: TcpStream) {
        let socket = WebSocketStream::from_raw_socket(self.socket, Role::Client, None).await;
        relay(socket, local, &self.pod, self.port).await;
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
/// one data message (sent on flush, or once [`WRITE_HIGH`] bytes wait), and
/// shutting down closes the WebSocket (v4 has no half-close). Polled from
/// one task (it is not split), so no lock sits between the two directions.
///
/// `S` is the upgraded connection (TLS already undone); this type frames
/// the WebSocket over it itself ([`wire`]).
pub struct PortForwardStream<S> {
    io: S,
    pod: String,
    port: u16,
    decoder: wire::Decoder,
    /// What the server sent that was not decoded or read yet.
    read_buf: BytesMut,
    /// Encoded frames not yet written to `io`.
    write_buf: BytesMut,
    /// The server closed the data channel or the WebSocket: reads give the
    /// end of the stream.
    ended: bool,
    /// A close frame of ours is queued: nothing more may be sent.
    closed: bool,
    /// Why reading failed, returned once the data before it was read.
    failed: Option<std::io::Error>,
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
    /// Over `io`, a connection upgraded to a port-forward WebSocket to
    /// `port` of `pod` that negotiated the binary channel protocol.
    pub fn new(io: S, pod: String, port: u16) -> Self {
        PortForwardStream {
            io,
            pod,
            port,
            decoder: wire::Decoder::new(port),
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            ended: false,
            closed: false,
            failed: None,
        }
    }

    /// Queue one control or data frame (masked with a fresh key).
    fn queue(&mut self, opcode: u8, channel: Option<u8>, payload: &[u8]) {
        wire::encode(
            &mut self.write_buf,
            opcode,
            channel,
            payload,
            rand::random(),
        );
    }

    fn io_error(&self, kind: std::io::ErrorKind, what: &str) -> std::io::Error {
        std::io::Error::new(
            kind,
            format!(
                "port-forward to pod {} port {}: {what}",
                self.pod, self.port
            ),
        )
    }
}

impl<S: AsyncWrite + Unpin> PortForwardStream<S> {
    /// Write every queued frame to the connection.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.write_buf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write_buf))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.write_buf.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PortForwardStream<S> {
    /// Fills `buf` with the data frames' payloads already read (several
    /// frames per call), reading from the connection only when none is.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        loop {
            if this.ended || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if buf.filled().len() > start && this.failed.is_some() {
                // The data before the failure first; the failure next.
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.failed.take() {
                this.ended = true;
                return Poll::Ready(Err(e));
            }
            match this.decoder.next(&mut this.read_buf) {
                Ok(wire::Event::Data(n)) => {
                    let n = n.min(buf.remaining());
                    buf.put_slice(&this.read_buf[..n]);
                    this.decoder.consume(&mut this.read_buf, n);
                }
                Ok(wire::Event::Ping(payload)) => {
                    if !this.closed {
                        this.queue(wire::PONG, None, &payload);
                        // Sent now if the connection takes it, else with
                        // the next write or flush.
                        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                            this.failed = Some(e);
                        }
                    }
                }
                Ok(wire::Event::Close(payload)) => {
                    this.ended = true;
                    if !this.closed {
                        // Echo the status code (RFC 6455 section 5.5.1).
                        this.queue(wire::CLOSE_FRAME, None, payload.get(..2).unwrap_or(&[]));
                        this.closed = true;
                        let _ = this.poll_write_out(cx);
                    }
                }
                Ok(wire::Event::End) => this.ended = true,
                Ok(wire::Event::NeedMore) => {
                    if buf.filled().len() > start {
                        return Poll::Ready(Ok(()));
                    }
                    if this.read_buf.capacity() - this.read_buf.len() < READ_SIZE / 4 {
                        this.read_buf.reserve(READ_SIZE);
                    }
                    let read = ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut this.io),
                        cx,
                        &mut this.read_buf
                    ));
                    match read {
                        Ok(0) if this.read_buf.is_empty() && this.decoder.idle() => {
                            this.ended = true;
                        }
                        Ok(0) => {
                            this.failed = Some(this.io_error(
                                std::io::ErrorKind::UnexpectedEof,
                                "the connection ended inside a frame",
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            this.failed = Some(this.io_error(e.kind(), &e.to_string()));
                        }
                    }
                }
                Err(wire::Failure::Refused(message)) => {
                    this.failed = Some(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        format!("pod {} port {}: {message}", this.pod, this.port),
                    ));
                }
                Err(wire::Failure::Broken(reason)) => {
                    this.failed = Some(this.io_error(std::io::ErrorKind::InvalidData, &reason));
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
        if this.closed {
            return Poll::Ready(Err(
                this.io_error(std::io::ErrorKind::BrokenPipe, "the WebSocket is closed")
            ));
        }
        if this.write_buf.len() >= WRITE_HIGH {
            ready!(this.poll_write_out(cx))?;
        }
        let n = buf.len().min(CHUNK);
        this.queue(wire::BINARY, Some(DATA), &buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends a close frame; the server answers it and then ends the
    /// connection (RFC 6455 section 7.1.1: the server closes the TCP
    /// connection first).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            // 1000: normal closure.
            this.queue(wire::CLOSE_FRAME, None, &1000u16.to_be_bytes());
            this.closed = true;
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
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
