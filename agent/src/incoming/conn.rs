//! One incoming connection: a **stolen** one pumped between its peer and the
//! subscribed client, or a **mirrored** one proxied to its original
//! destination while the client gets a copy of what the peer sent.
//!
//! # Flow control
//! Per-stream credit as for outgoing streams ([`crate::outgoing`],
//! [`crate::flow`]):
//! * stolen, peer → client: at most [`MAX_CHUNK`] read at a time, sent once
//!   the client has credit for it, so a slow local app slows its own peer only.
//! * stolen, client → peer: a queue holding at most one window, credited back
//!   as it is written; a peer that stops reading is never closed for it.
//! * mirrored: the real traffic never waits for the client. The copy goes
//!   through a queue of [`MIRROR_COPY_CAPACITY`] chunks (sent as credit
//!   allows); when it is full the copy is dropped (the client is told with a
//!   warning and `Closed`). What the client sends back is dropped and
//!   credited at once.

use super::Subscriber;
use crate::net::NetApi;
use bytes::Bytes;
use remora_protocol::incoming::{IncomingServer, RemotePort};
use remora_protocol::outgoing::MAX_CHUNK;
use remora_protocol::session::LogLevel;
use remora_protocol::{ConnectionId, HttpRequestId, ServerMessage};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

/// Chunks of a mirrored connection queued for the client before its copy is
/// dropped.
pub const MIRROR_COPY_CAPACITY: usize = 64;

use crate::flow::{Inbound, SendWindow};
pub(super) use crate::pump::Upstream;
use crate::pump::{Flow, pump, send};

/// A stolen connection's handle and the flow its pump follows.
fn stolen_handle(
    subscriber: &Subscriber,
    close: CancellationToken,
) -> (ConnHandle, mpsc::Receiver<Upstream>, Flow) {
    let inbound = Inbound::new(subscriber.flow_control);
    let (up_tx, up_rx) = mpsc::channel(inbound.queue_capacity());
    let window = SendWindow::new(subscriber.flow_control);
    let flow = Flow {
        window: window.clone(),
        returner: inbound.returner(),
        credit: |conn, bytes| incoming(IncomingServer::Credit { conn, bytes }),
    };
    let handle = ConnHandle {
        up_tx: Some(up_tx),
        close,
        window,
        inbound,
    };
    (handle, up_rx, flow)
}

/// The client's handle on one of its incoming connections.
#[derive(Debug, Clone)]
pub(super) struct ConnHandle {
    /// client --bytes for the peer--> connection writer; `None` for a
    /// mirrored connection, whose client replies are discarded.
    pub up_tx: Option<mpsc::Sender<Upstream>>,
    /// Cancelled to end the connection (stolen) or its copy (mirrored).
    pub close: CancellationToken,
    /// Credit for the peer's bytes (or their copy) to the client.
    pub window: SendWindow,
    /// The client's bytes held for the peer.
    pub inbound: Inbound,
}

/// A client's incoming connections by id. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnTable {
    inner: Arc<Mutex<HashMap<ConnectionId, ConnHandle>>>,
}

impl ConnTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<ConnectionId, ConnHandle>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register `conn` until the returned entry is dropped.
    fn insert(&self, conn: ConnectionId, handle: ConnHandle) -> TableEntry {
        self.lock().insert(conn, handle);
        TableEntry {
            table: self.clone(),
            conn,
        }
    }

    pub(super) fn get(&self, conn: ConnectionId) -> Option<ConnHandle> {
        self.lock().get(&conn).cloned()
    }

    /// End `conn` (the client asked); `false` when it is not open.
    pub(super) fn close(&self, conn: ConnectionId) -> bool {
        let handle = self.lock().remove(&conn);
        handle.map(|h| h.close.cancel()).is_some()
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Removes a connection from its table when the connection task ends.
struct TableEntry {
    table: ConnTable,
    conn: ConnectionId,
}

impl Drop for TableEntry {
    fn drop(&mut self) {
        self.table.lock().remove(&self.conn);
    }
}

/// A connection the listener accepted.
pub(super) struct Accepted {
    pub conn: ConnectionId,
    pub port: RemotePort,
    /// The real remote peer.
    pub peer: SocketAddr,
    /// Where the peer meant to connect.
    pub local: SocketAddr,
    pub stream: TcpStream,
    /// Counts against the port's connection limit while the task runs.
    pub permit: OwnedSemaphorePermit,
}

impl Accepted {
    fn announcement(&self) -> ServerMessage {
        ServerMessage::Incoming(IncomingServer::NewConnection {
            conn: self.conn,
            port: self.port,
            peer: self.peer,
            local: self.local,
        })
    }
}

/// Send `message` unless `close` is cancelled first; whether it was sent.
fn incoming(message: IncomingServer) -> ServerMessage {
    ServerMessage::Incoming(message)
}

/// The peer's bytes (or half close) of a stolen connection, for the client.
fn stolen_message(conn: ConnectionId, data: Option<Bytes>) -> ServerMessage {
    incoming(match data {
        Some(data) => IncomingServer::Data { conn, data },
        None => IncomingServer::ShutdownWrite { conn },
    })
}

/// A stolen connection: only the client talks to the peer.
pub(super) async fn steal(accepted: Accepted, subscriber: Subscriber) {
    let close = subscriber.token.child_token();
    let conn = accepted.conn;
    let (handle, up_rx, flow) = stolen_handle(&subscriber, close.clone());
    let _entry = subscriber.conns.insert(conn, handle);
    let out_tx = &subscriber.out_tx;
    if !send(&close, out_tx, accepted.announcement()).await {
        return;
    }
    let Accepted { stream, permit, .. } = accepted;
    if let Err(e) = pump(stream, up_rx, &close, out_tx, conn, stolen_message, flow).await {
        tracing::debug!(%conn, error = %e, "stolen connection failed");
    }
    drop(permit);
    if !subscriber.token.is_cancelled() {
        let _ = out_tx.send(incoming(IncomingServer::Closed { conn })).await;
    }
}

/// An upgraded HTTP request (WebSocket etc.) of a filtered steal, from now
/// on a raw stolen connection `conn`: the client is told `Upgraded`, then
/// it is pumped as [`steal`] does.
pub(super) async fn steal_upgraded<S>(
    request: HttpRequestId,
    conn: ConnectionId,
    stream: S,
    subscriber: Subscriber,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let close = subscriber.token.child_token();
    let (handle, up_rx, flow) = stolen_handle(&subscriber, close.clone());
    let _entry = subscriber.conns.insert(conn, handle);
    let out_tx = &subscriber.out_tx;
    let announcement = incoming(IncomingServer::Upgraded { request, conn });
    if !send(&close, out_tx, announcement).await {
        return;
    }
    if let Err(e) = pump(stream, up_rx, &close, out_tx, conn, stolen_message, flow).await {
        tracing::debug!(%conn, error = %e, "upgraded connection failed");
    }
    if !subscriber.token.is_cancelled() {
        let _ = out_tx.send(incoming(IncomingServer::Closed { conn })).await;
    }
}

/// A mirrored connection: proxied to its original destination (from the
/// target, with the pass-through mark), the client getting a copy.
pub(super) async fn mirror(
    accepted: Accepted,
    subscriber: Subscriber,
    net: NetApi,
    mark: Option<u32>,
    shutdown: CancellationToken,
) {
    let conn = accepted.conn;
    let service = tokio::select! {
        _ = shutdown.cancelled() => return,
        service = net.connect_tcp_marked(accepted.local, mark) => service,
    };
    let service = match service {
        Ok(service) => service,
        Err(e) => {
            // Dropping the peer's socket tells it, as the target would have.
            tracing::warn!(
                %conn,
                destination = %accepted.local,
                error = %e,
                "cannot reach the original destination of a mirrored connection"
            );
            return;
        }
    };
    let _ = service.set_nodelay(true);
    let copy = MirrorCopy::start(&accepted, subscriber);
    let Accepted { stream, permit, .. } = accepted;
    tokio::select! {
        _ = shutdown.cancelled() => {}
        result = proxy(stream, service, copy) => {
            if let Err(e) = result {
                tracing::debug!(%conn, error = %e, "mirrored connection failed");
            }
        }
    }
    drop(permit);
}

/// Proxy `peer` ⇄ `service` until both directions are done, teeing what the
/// peer sends into `copy`.
async fn proxy(peer: TcpStream, service: TcpStream, mut copy: MirrorCopy) -> io::Result<()> {
    let (mut peer_r, mut peer_w) = peer.into_split();
    let (mut service_r, mut service_w) = service.into_split();
    let upstream = async {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            let n = peer_r.read(&mut buf).await?;
            if n == 0 {
                copy.push(Copied::ShutdownWrite);
                return service_w.shutdown().await;
            }
            service_w.write_all(&buf[..n]).await?;
            copy.push(Copied::Data(Bytes::copy_from_slice(&buf[..n])));
        }
    };
    let downstream = async {
        tokio::io::copy(&mut service_r, &mut peer_w).await?;
        peer_w.shutdown().await
    };
    tokio::try_join!(upstream, downstream).map(|_| ())
}

/// What the client's copy of a mirrored connection carries.
#[derive(Debug)]
enum Copied {
    Data(Bytes),
    ShutdownWrite,
}

/// The proxy's end of a mirrored connection's copy: never waits.
struct MirrorCopy {
    /// proxy --copied bytes--> copy forwarder; `None` once the copy is over.
    copy_tx: Option<mpsc::Sender<Copied>>,
    /// Cancelled when the client fell too far behind: the copy is dropped.
    overflowed: CancellationToken,
}

impl MirrorCopy {
    /// Register the copy in the client's table and start its forwarder.
    fn start(accepted: &Accepted, subscriber: Subscriber) -> MirrorCopy {
        let (copy_tx, copy_rx) = mpsc::channel(MIRROR_COPY_CAPACITY);
        let overflowed = CancellationToken::new();
        let forwarder = CopyForwarder {
            conn: accepted.conn,
            port: accepted.port,
            peer: accepted.peer,
            announcement: accepted.announcement(),
            copy_rx,
            overflowed: overflowed.clone(),
            close: subscriber.token.child_token(),
            subscriber,
        };
        tokio::spawn(forwarder.run());
        MirrorCopy {
            copy_tx: Some(copy_tx),
            overflowed,
        }
    }

    fn push(&mut self, item: Copied) {
        let Some(copy_tx) = &self.copy_tx else {
            return;
        };
        match copy_tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.overflowed.cancel();
                self.copy_tx = None;
            }
            Err(TrySendError::Closed(_)) => self.copy_tx = None,
        }
    }
}

/// Sends the copy of one mirrored connection to the client.
struct CopyForwarder {
    conn: ConnectionId,
    port: RemotePort,
    peer: SocketAddr,
    announcement: ServerMessage,
    /// proxy --copied bytes--> this forwarder
    copy_rx: mpsc::Receiver<Copied>,
    overflowed: CancellationToken,
    /// Cancelled by the client's `Close` (and when its session ends).
    close: CancellationToken,
    subscriber: Subscriber,
}

impl CopyForwarder {
    async fn run(mut self) {
        let conn = self.conn;
        let window = SendWindow::new(self.subscriber.flow_control);
        let handle = ConnHandle {
            up_tx: None,
            close: self.close.clone(),
            window: window.clone(),
            inbound: Inbound::new(self.subscriber.flow_control),
        };
        let _entry = self.subscriber.conns.insert(conn, handle);
        let (close, out_tx) = (&self.close, &self.subscriber.out_tx);
        if !send(close, out_tx, self.announcement.clone()).await {
            return;
        }
        loop {
            let item = tokio::select! {
                _ = close.cancelled() => return,
                _ = self.overflowed.cancelled() => break,
                item = self.copy_rx.recv() => item,
            };
            let message = match item {
                Some(Copied::Data(data)) => {
                    let credited = tokio::select! {
                        _ = close.cancelled() => return,
                        _ = self.overflowed.cancelled() => break,
                        credited = window.take(data.len()) => credited,
                    };
                    if !credited {
                        return;
                    }
                    IncomingServer::Data { conn, data }
                }
                Some(Copied::ShutdownWrite) => IncomingServer::ShutdownWrite { conn },
                None => break,
            };
            if !send(close, out_tx, incoming(message)).await {
                return;
            }
        }
        if self.overflowed.is_cancelled() {
            tracing::info!(%conn, "client too slow for a mirrored connection; copy dropped");
            let warning = ServerMessage::Log {
                level: LogLevel::Warn,
                message: format!(
                    "mirrored connection {conn} (port {} from {}): the client fell {} chunks \
                     behind, so its copy was dropped; the target still serves the connection",
                    self.port.0, self.peer, MIRROR_COPY_CAPACITY
                ),
            };
            if !send(close, out_tx, warning).await {
                return;
            }
        }
        let _ = send(close, out_tx, incoming(IncomingServer::Closed { conn })).await;
    }
}
