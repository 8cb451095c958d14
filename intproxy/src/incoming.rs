//! Incoming traffic: the application listens locally, the intproxy subscribes
//! the target's port through the agent and, for every stolen or mirrored
//! connection, dials the application's real listener, so its own `accept`
//! loop works unchanged. The layer asks [`Incoming::peer_of`] to report the
//! real remote peer instead of the intproxy's dialing socket.
//!
//! With an HTTP filter the agent sends whole requests instead of connections;
//! [`http`] replays each one to the same listener (with the same peer
//! mapping) and streams the answer back.

mod http;

use crate::agent_link::{AgentApi, IncomingEvent, StreamFlow};
use crate::flow::Inbound;
use crate::outgoing::both_ways;
use bytes::Bytes;
use remora_protocol::incoming::{HttpFilter, IncomingClient, IncomingMode, RemotePort};
use remora_protocol::outgoing::MAX_CHUNK;
use remora_protocol::{ConnectionId, HttpRequestId, RemoteResult};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// An upgraded request's connection id, input and credit.
type Upgrade = (ConnectionId, mpsc::Receiver<Input>, StreamFlow);

/// What the agent sends for one incoming connection.
#[derive(Debug)]
enum Input {
    Data(Bytes),
    Eof,
    Closed,
}

/// Dialer address → (real peer, target-side address when the agent knows it).
type PeerTable = Arc<Mutex<HashMap<SocketAddr, (SocketAddr, Option<SocketAddr>)>>>;

/// The run's incoming traffic: which intproxy dialer stands for which peer.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    peers: PeerTable,
}

impl Incoming {
    /// Subscribe `remote` and deliver its connections to the app at `app`.
    pub async fn listen(
        &self,
        agent: AgentApi,
        app: SocketAddr,
        remote: RemotePort,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
    ) -> RemoteResult<()> {
        let events = agent.subscribe(remote, mode, filter).await?;
        tokio::spawn(port_task(agent, self.peers.clone(), app, events));
        Ok(())
    }

    /// Stop receiving the target's `remote` port.
    pub async fn unlisten(&self, agent: &AgentApi, remote: RemotePort) -> RemoteResult<()> {
        agent
            .send_incoming(IncomingClient::Unsubscribe { port: remote })
            .await
    }

    /// The real peer and target-side address of a connection the intproxy
    /// dialed from `dialer`.
    pub fn peer_of(&self, dialer: SocketAddr) -> Option<(SocketAddr, Option<SocketAddr>)> {
        self.peers.lock().ok()?.get(&dialer).copied()
    }
}

/// A dialer address registered in the [`PeerTable`]; dropping it forgets the
/// mapping (also when its task is aborted).
pub(crate) struct Registered {
    peers: PeerTable,
    dialer: SocketAddr,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.remove(&self.dialer);
        }
    }
}

/// Connect to the app, registering the dialing address *before* the
/// connection exists so the app's `accept` always finds its real peer.
async fn dial_app(
    peers: &PeerTable,
    app: SocketAddr,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> std::io::Result<(TcpStream, Registered)> {
    let socket = if app.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    // Explicit binds cannot share a port with a closed connection still in
    // TIME_WAIT unless allowed to; under load they would run out.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(app.ip(), 0))?;
    let dialer = socket.local_addr()?;
    if let Ok(mut table) = peers.lock() {
        table.insert(dialer, (peer, local));
    }
    let registered = Registered {
        peers: peers.clone(),
        dialer,
    };
    let stream = socket.connect(app).await?;
    stream.set_nodelay(true).ok();
    Ok((stream, registered))
}

async fn port_task(
    agent: AgentApi,
    peers: PeerTable,
    app: SocketAddr,
    mut events: mpsc::Receiver<IncomingEvent>,
) {
    // port task --input of one connection--> its connection task; with flow
    // control the queue holds a whole window, so the port task never waits.
    let mut conns: HashMap<ConnectionId, mpsc::Sender<Input>> = HashMap::new();
    let queue = Inbound::new(agent.flow_control()).queue_capacity();
    // Dropping a handle aborts its request (cancelled, or this task ended).
    let mut requests: HashMap<HttpRequestId, http::RequestHandle> = HashMap::new();
    let pool = http::AppPool::default();
    while let Some(event) = events.recv().await {
        let (conn, input) = match event {
            IncomingEvent::NewConnection {
                conn,
                peer,
                local,
                flow,
            } => {
                let (input_tx, input_rx) = mpsc::channel(queue);
                conns.insert(conn, input_tx);
                let task = ConnTask {
                    agent: agent.clone(),
                    peers: peers.clone(),
                    app,
                    conn,
                };
                tokio::spawn(task.run(peer, local, input_rx, flow));
                continue;
            }
            IncomingEvent::Data { conn, data } => (conn, Input::Data(data)),
            IncomingEvent::ShutdownWrite { conn } => (conn, Input::Eof),
            IncomingEvent::Closed { conn } => (conn, Input::Closed),
            IncomingEvent::Request {
                request,
                peer,
                head,
                flow,
            } => {
                requests.retain(|_, handle| !handle.is_finished());
                let target = http::Target {
                    agent: agent.clone(),
                    peers: peers.clone(),
                    app,
                    pool: pool.clone(),
                };
                let handle = http::spawn(target, request, peer, head, flow);
                requests.insert(request, handle);
                continue;
            }
            IncomingEvent::RequestBody {
                request,
                chunk,
                last,
            } => {
                if let Some(handle) = requests.get_mut(&request) {
                    handle.body(chunk, last).await;
                }
                continue;
            }
            IncomingEvent::RequestCancelled { request } => {
                requests.remove(&request);
                continue;
            }
            IncomingEvent::Upgraded {
                request,
                conn,
                flow,
            } => {
                let (input_tx, input_rx) = mpsc::channel(queue);
                if let Some(handle) = requests.get_mut(&request) {
                    if handle.upgraded((conn, input_rx, flow)) {
                        conns.insert(conn, input_tx);
                    }
                }
                continue;
            }
        };
        let closing = matches!(input, Input::Closed);
        if let Some(tx) = conns.get(&conn) {
            let gone = if agent.flow_control() {
                // Within the window (checked by the link): room is certain.
                tx.try_send(input).is_err()
            } else {
                tx.send(input).await.is_err()
            };
            if gone || closing {
                conns.remove(&conn);
            }
        }
    }
    for (request, handle) in requests {
        handle.orphan(&agent, request);
    }
}

/// One incoming connection, dialed to the application's listener.
struct ConnTask {
    agent: AgentApi,
    peers: PeerTable,
    app: SocketAddr,
    conn: ConnectionId,
}

impl ConnTask {
    async fn run(
        self,
        peer: SocketAddr,
        local: SocketAddr,
        mut input: mpsc::Receiver<Input>,
        flow: StreamFlow,
    ) {
        match dial_app(&self.peers, self.app, peer, Some(local)).await {
            Ok((stream, _registered)) => {
                pump_raw(&self.agent, self.conn, stream, &mut input, flow).await;
            }
            Err(e) => eprintln!(
                "remora: an incoming connection from {peer} could not reach the local \
                 listener {}: {e}",
                self.app
            ),
        }
        let _ = self
            .agent
            .send_incoming(IncomingClient::Close { conn: self.conn })
            .await;
    }
}

/// Copy a raw stream (a stolen connection, or an upgraded request) between
/// the app and the agent until both directions end or either side fails;
/// each direction on its own, following the connection's credit.
async fn pump_raw<S>(
    agent: &AgentApi,
    conn: ConnectionId,
    stream: S,
    input: &mut mpsc::Receiver<Input>,
    flow: StreamFlow,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let StreamFlow {
        window,
        mut returner,
    } = flow;
    // app → peer
    let upstream = async {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let shutdown = IncomingClient::ShutdownWrite { conn };
                    return agent.send_incoming(shutdown).await.map_err(|_| ());
                }
                Ok(n) => {
                    if !window.take(n).await {
                        return Err(());
                    }
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    let message = IncomingClient::Data { conn, data };
                    agent.send_incoming(message).await.map_err(|_| ())?;
                }
            }
        }
    };
    // peer → app
    let downstream = async {
        loop {
            match input.recv().await {
                Some(Input::Data(data)) => {
                    wr.write_all(&data).await.map_err(|_| ())?;
                    if let Some(bytes) = returner.written(data.len()) {
                        let credit = IncomingClient::Credit { conn, bytes };
                        agent.send_incoming(credit).await.map_err(|_| ())?;
                    }
                }
                Some(Input::Eof) => {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                Some(Input::Closed) | None => return Err(()),
            }
        }
    };
    both_ways(upstream, downstream).await;
}
