//! Outgoing streams: connections the local process makes that leave from the
//! target's network namespace, one task per connection.
//!
//! # Flow control
//! Per-stream credit ([`remora_protocol::flow`], [`crate::flow`]):
//!
//! * remote → client: each connection reads at most [`MAX_CHUNK`] at a time
//!   and sends it once the client has given credit for it, so a client that
//!   does not pass a stream's bytes on stops that stream's remote reads only.
//! * client → remote: each connection has its own writer task and a queue
//!   that holds at most one window; credit goes back as the writer writes.
//!   A remote peer that stops reading holds its own stream, never the link,
//!   and is never closed for being slow. A client that sends beyond its
//!   credit gets that connection closed with a protocol error.
//!
//! A client without flow control (v1/v2) gets the old bounded queue: a full
//! one makes the link wait.

use crate::net::NetApi;
use crate::pool::NsPool;
use bytes::Bytes;
use remora_protocol::ServerMessage;
use remora_protocol::net::{RemoteAddr, Transport};
use remora_protocol::outgoing::{Connected, MAX_CHUNK, OutgoingClient, OutgoingServer};
use remora_protocol::{Capabilities, ConnectionId, ErrorCode, RemoteError, RemoteResult};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Most simultaneous outgoing connections of one client.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a unix socket connect may wait for a full backlog.
pub const UNIX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

use crate::flow::{Inbound, SendWindow};
use crate::pump::{Flow, PumpError, Upstream, pump, queue_upstream};

/// The client task's handle on one connection.
#[derive(Debug)]
struct ConnHandle {
    /// client task --bytes for the remote peer--> connection writer
    up_tx: mpsc::Sender<Upstream>,
    /// Cancelled to end the connection, and by the connection when it ends.
    close: CancellationToken,
    /// Why the agent ended the connection, reported in its `Closed`.
    failure: Arc<Mutex<Option<RemoteError>>>,
    /// Credit for the remote peer's bytes to the client.
    window: SendWindow,
    /// The client's bytes held for the remote peer.
    inbound: Inbound,
}

impl ConnHandle {
    fn fail(&self, error: RemoteError) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        self.close.cancel();
    }

    fn is_finished(&self) -> bool {
        self.close.is_cancelled() || self.up_tx.is_closed()
    }
}

/// One client's outgoing connections.
#[derive(Debug)]
pub struct Outgoing {
    net: NetApi,
    pool: NsPool,
    target: String,
    capabilities: Capabilities,
    /// connections --server messages--> client writer
    out_tx: mpsc::Sender<ServerMessage>,
    /// Cancelled when the client goes away: every connection ends silently.
    client_token: CancellationToken,
    conns: HashMap<ConnectionId, ConnHandle>,
}

impl Outgoing {
    pub fn new(
        net: NetApi,
        pool: NsPool,
        target: String,
        capabilities: Capabilities,
        out_tx: mpsc::Sender<ServerMessage>,
        client_token: CancellationToken,
    ) -> Self {
        Outgoing {
            net,
            pool,
            target,
            capabilities,
            out_tx,
            client_token,
            conns: HashMap::new(),
        }
    }

    /// Handle one message of the client. Waits only for a client without
    /// flow control whose connection queue is full.
    pub async fn handle(&mut self, message: OutgoingClient) {
        match message {
            OutgoingClient::Connect {
                conn,
                transport,
                remote,
            } => self.connect(conn, transport, remote).await,
            OutgoingClient::Data { conn, data } => self.upstream(conn, Upstream::Data(data)).await,
            OutgoingClient::ShutdownWrite { conn } => {
                self.upstream(conn, Upstream::ShutdownWrite).await;
            }
            OutgoingClient::Close { conn } => {
                if let Some(handle) = self.conns.remove(&conn) {
                    handle.close.cancel();
                }
            }
            OutgoingClient::Credit { conn, bytes } => {
                if let Some(handle) = self.conns.get(&conn) {
                    handle.window.grant(bytes);
                }
            }
        }
    }

    /// Number of connections not finished yet.
    pub fn active(&self) -> usize {
        self.conns.values().filter(|h| !h.is_finished()).count()
    }

    async fn connect(&mut self, conn: ConnectionId, transport: Transport, remote: RemoteAddr) {
        self.conns.retain(|_, handle| !handle.is_finished());
        let refused = if let Err(e) = self.allowed(transport, &remote) {
            Some(e)
        } else if self.conns.contains_key(&conn) {
            Some(RemoteError::new(
                ErrorCode::AlreadyExists,
                format!("connection {conn} is already open"),
            ))
        } else if self.conns.len() >= MAX_CONNECTIONS {
            Some(RemoteError::new(
                ErrorCode::Other(libc::EMFILE),
                format!("this session already has {MAX_CONNECTIONS} open connections"),
            ))
        } else {
            None
        };
        if let Some(error) = refused {
            let reply = OutgoingServer::Connected {
                conn,
                result: Err(error),
            };
            let _ = self.out_tx.send(ServerMessage::Outgoing(reply)).await;
            return;
        }
        let flow_control = self.capabilities.contains(Capabilities::FLOW_CONTROL);
        let inbound = Inbound::new(flow_control);
        let (up_tx, up_rx) = mpsc::channel(inbound.queue_capacity());
        let handle = ConnHandle {
            up_tx,
            close: self.client_token.child_token(),
            failure: Arc::default(),
            window: SendWindow::new(flow_control),
            inbound,
        };
        let task = ConnTask {
            spec: ConnSpec {
                conn,
                transport,
                remote,
                target: self.target.clone(),
                net: self.net.clone(),
                pool: self.pool.clone(),
            },
            up_rx,
            flow: Flow {
                window: handle.window.clone(),
                returner: handle.inbound.returner(),
                credit: |conn, bytes| {
                    ServerMessage::Outgoing(OutgoingServer::Credit { conn, bytes })
                },
            },
            link: ConnLink {
                conn,
                close: handle.close.clone(),
                failure: handle.failure.clone(),
                out_tx: self.out_tx.clone(),
                client_token: self.client_token.clone(),
            },
        };
        self.conns.insert(conn, handle);
        tokio::spawn(task.run());
    }

    fn allowed(&self, transport: Transport, remote: &RemoteAddr) -> RemoteResult<()> {
        let needed = match (transport, remote) {
            (Transport::Tcp, RemoteAddr::Ip(_)) => Capabilities::OUTGOING_TCP,
            (Transport::Udp, RemoteAddr::Ip(_)) => Capabilities::OUTGOING_UDP,
            (Transport::Tcp, RemoteAddr::Unix(_)) => Capabilities::OUTGOING_UNIX,
            (Transport::Udp, RemoteAddr::Unix(_)) => {
                return Err(RemoteError::new(
                    ErrorCode::Unsupported,
                    "unix datagram sockets are not supported",
                ));
            }
        };
        if self.capabilities.contains(needed) {
            Ok(())
        } else {
            Err(RemoteError::new(
                ErrorCode::Unsupported,
                "this kind of outgoing connection was not negotiated for the session",
            ))
        }
    }

    async fn upstream(&mut self, conn: ConnectionId, item: Upstream) {
        let Some(handle) = self.conns.get(&conn) else {
            tracing::debug!(%conn, "data for a connection that is not open; dropped");
            return;
        };
        if !queue_upstream(&handle.up_tx, &handle.inbound, item).await {
            tracing::warn!(%conn, "the client sent beyond its credit; closing the connection");
            handle.fail(RemoteError::new(
                ErrorCode::Other(libc::EPROTO),
                format!(
                    "the client sent more than its {} byte window on connection {conn}; \
                     the agent closed it (a client bug: upgrade remora)",
                    remora_protocol::flow::STREAM_WINDOW
                ),
            ));
            self.conns.remove(&conn);
        }
    }
}

/// A connected socket of any supported kind.
enum Socket {
    Tcp(tokio::net::TcpStream),
    Udp(tokio::net::UdpSocket),
    Unix(tokio::net::UnixStream),
}

/// What to connect to, and with what.
struct ConnSpec {
    conn: ConnectionId,
    transport: Transport,
    remote: RemoteAddr,
    target: String,
    net: NetApi,
    pool: NsPool,
}

/// A connection's way back to its client.
struct ConnLink {
    conn: ConnectionId,
    close: CancellationToken,
    failure: Arc<Mutex<Option<RemoteError>>>,
    /// this connection --server messages--> client writer
    out_tx: mpsc::Sender<ServerMessage>,
    client_token: CancellationToken,
}

/// One connection: connects, then pumps both ways until done.
struct ConnTask {
    spec: ConnSpec,
    /// client task --bytes for the remote peer--> this connection's writer
    up_rx: mpsc::Receiver<Upstream>,
    flow: Flow,
    link: ConnLink,
}

impl ConnTask {
    async fn run(self) {
        let ConnTask {
            spec,
            up_rx,
            flow,
            link,
        } = self;
        // However this ends, the client task sees the connection as finished.
        let _finished = link.close.clone().drop_guard();
        let socket = tokio::select! {
            _ = link.close.cancelled() => {
                link.end(Ok(())).await;
                return;
            }
            socket = spec.connect() => socket,
        };
        let (socket, local) = match socket {
            Ok(connected) => connected,
            Err(error) => {
                tracing::debug!(conn = %spec.conn, remote = %spec.remote, %error, "connect failed");
                let reply = OutgoingServer::Connected {
                    conn: spec.conn,
                    result: Err(error),
                };
                let _ = link.out_tx.send(ServerMessage::Outgoing(reply)).await;
                return;
            }
        };
        let reply = OutgoingServer::Connected {
            conn: spec.conn,
            result: Ok(Connected {
                local,
                remote: spec.remote.clone(),
            }),
        };
        if !send_or_closed(&link.close, &link.out_tx, reply).await {
            link.end(Ok(())).await;
            return;
        }
        let (close, out_tx, conn) = (&link.close, &link.out_tx, spec.conn);
        let result = match socket {
            Socket::Tcp(stream) => pump_stream(stream, up_rx, close, out_tx, conn, flow).await,
            Socket::Unix(stream) => pump_stream(stream, up_rx, close, out_tx, conn, flow).await,
            Socket::Udp(socket) => pump_datagrams(socket, up_rx, close, out_tx, conn, flow).await,
        };
        link.end(result).await;
    }
}

impl ConnSpec {
    async fn connect(&self) -> RemoteResult<(Socket, Option<SocketAddr>)> {
        let context = format!("connecting to {} from {}", self.remote, self.target);
        let err = |e: io::Error| RemoteError::from_io(&context, &e);
        match (&self.remote, self.transport) {
            (RemoteAddr::Ip(addr), Transport::Tcp) => {
                let stream = self.net.connect_tcp(*addr).await.map_err(err)?;
                // The client's bytes arrive already coalesced by the intproxy
                // (one `Data` per read of the app's socket): hold none back,
                // as a relay does.
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().ok();
                Ok((Socket::Tcp(stream), local))
            }
            (RemoteAddr::Ip(addr), Transport::Udp) => {
                let socket = self.net.connect_udp(*addr).await.map_err(err)?;
                let local = socket.local_addr().ok();
                Ok((Socket::Udp(socket), local))
            }
            (RemoteAddr::Unix(path), _) => {
                let path = path.clone();
                let stream = self
                    .pool
                    .run(move || connect_unix(&path))
                    .await
                    .map_err(|e| RemoteError::new(ErrorCode::Unavailable, e.to_string()))?
                    .and_then(tokio::net::UnixStream::from_std)
                    .map_err(err)?;
                Ok((Socket::Unix(stream), None))
            }
        }
    }
}

impl ConnLink {
    /// Send the final `Closed` of the connection, unless its client is gone.
    async fn end(&self, result: RemoteResult<()>) {
        if self.client_token.is_cancelled() {
            return;
        }
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let error = failure.or(result.err());
        if let Some(error) = &error {
            tracing::debug!(conn = %self.conn, %error, "connection failed");
        }
        let closed = OutgoingServer::Closed {
            conn: self.conn,
            error,
        };
        let _ = self.out_tx.send(ServerMessage::Outgoing(closed)).await;
    }
}

/// Send `message` to the client unless the connection is closed first.
/// Returns whether it was sent.
/// Pump a byte stream (TCP or unix) both ways, see [`pump`].
async fn pump_stream<S>(
    stream: S,
    up_rx: mpsc::Receiver<Upstream>,
    close: &CancellationToken,
    out_tx: &mpsc::Sender<ServerMessage>,
    conn: ConnectionId,
    flow: Flow,
) -> RemoteResult<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let message = |conn, data: Option<Bytes>| {
        ServerMessage::Outgoing(match data {
            Some(data) => OutgoingServer::Data { conn, data },
            None => OutgoingServer::ShutdownWrite { conn },
        })
    };
    pump(stream, up_rx, close, out_tx, conn, message, flow)
        .await
        .map_err(|e| match e {
            PumpError::Read(e) => RemoteError::from_io("reading from the remote peer", &e),
            PumpError::Write(e) => RemoteError::from_io("writing to the remote peer", &e),
        })
}

async fn send_or_closed(
    close: &CancellationToken,
    out_tx: &mpsc::Sender<ServerMessage>,
    message: OutgoingServer,
) -> bool {
    crate::pump::send(close, out_tx, ServerMessage::Outgoing(message)).await
}

/// Pump datagrams: each client `Data` is one datagram, each received datagram
/// one `Data`. Ends only when closed or on an error.
async fn pump_datagrams(
    socket: tokio::net::UdpSocket,
    mut up_rx: mpsc::Receiver<Upstream>,
    close: &CancellationToken,
    out_tx: &mpsc::Sender<ServerMessage>,
    conn: ConnectionId,
    flow: Flow,
) -> RemoteResult<()> {
    let socket = Arc::new(socket);
    let sender = socket.clone();
    let Flow {
        window,
        mut returner,
        credit,
    } = flow;
    let (credit_tx, credit_close) = (out_tx.clone(), close.clone());
    let mut writer = AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(Upstream::Data(datagram)) = up_rx.recv().await {
            sender
                .send(&datagram)
                .await
                .map_err(|e| RemoteError::from_io("sending a datagram", &e))?;
            if let Some(bytes) = returner.written(datagram.len()) {
                if !crate::pump::send(&credit_close, &credit_tx, credit(conn, bytes)).await {
                    break;
                }
            }
        }
        Ok::<_, RemoteError>(())
    }));
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut writer_done = false;
    loop {
        tokio::select! {
            _ = close.cancelled() => return Ok(()),
            joined = &mut writer, if !writer_done => {
                joined.map_err(|e| RemoteError::new(ErrorCode::Other(libc::EIO), e.to_string()))??;
                writer_done = true;
            }
            received = socket.recv(&mut buf) => {
                let n = received.map_err(|e| RemoteError::from_io("receiving a datagram", &e))?;
                let credited = tokio::select! {
                    _ = close.cancelled() => false,
                    credited = window.take(n) => credited,
                };
                if !credited {
                    return Ok(());
                }
                let data = Bytes::copy_from_slice(&buf[..n]);
                if !send_or_closed(close, out_tx, OutgoingServer::Data { conn, data }).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Connect a unix stream socket; runs on a namespace worker so the path
/// resolves in the target's mount namespace (and an abstract name, written
/// with a leading NUL, in its network namespace).
fn connect_unix(path: &str) -> io::Result<std::os::unix::net::UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
    use nix::sys::time::TimeVal;
    use std::os::fd::AsRawFd;

    let addr = match path.strip_prefix('\0') {
        Some(name) => UnixAddr::new_abstract(name.as_bytes())?,
        None => UnixAddr::new(path)?,
    };
    let fd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // A blocking unix connect waits while the listener's backlog is full;
    // the send timeout bounds that wait.
    let timeout = TimeVal::new(UNIX_CONNECT_TIMEOUT.as_secs() as _, 0);
    nix::sys::socket::setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
    nix::sys::socket::connect(fd.as_raw_fd(), &addr)?;
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    Ok(stream)
}
