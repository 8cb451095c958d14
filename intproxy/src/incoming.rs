//! Incoming traffic: the application listens locally, the intproxy subscribes
//! the target's port through the agent and, for every stolen or mirrored
//! connection, dials the application's real listener, so its own `accept`
//! loop works unchanged. The layer asks [`Incoming::peer_of`] to report the
//! real remote peer instead of the intproxy's dialing socket.

use crate::agent_link::{AgentApi, IncomingEvent};
use bytes::Bytes;
use remora_protocol::incoming::{HttpFilter, IncomingClient, IncomingMode, RemotePort};
use remora_protocol::outgoing::MAX_CHUNK;
use remora_protocol::{ConnectionId, RemoteResult};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;

/// Events buffered per incoming connection.
const CONN_INPUT_CAPACITY: usize = 64;

/// What the agent sends for one incoming connection.
#[derive(Debug)]
enum Input {
    Data(Bytes),
    Eof,
    Closed,
}

/// The run's incoming traffic: dialer address → (real peer, target address).
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    peers: Arc<Mutex<HashMap<SocketAddr, (SocketAddr, SocketAddr)>>>,
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
    pub fn peer_of(&self, dialer: SocketAddr) -> Option<(SocketAddr, SocketAddr)> {
        self.peers.lock().ok()?.get(&dialer).copied()
    }
}

async fn port_task(
    agent: AgentApi,
    peers: Arc<Mutex<HashMap<SocketAddr, (SocketAddr, SocketAddr)>>>,
    app: SocketAddr,
    mut events: mpsc::Receiver<IncomingEvent>,
) {
    // port task --input of one connection--> its connection task
    let mut conns: HashMap<ConnectionId, mpsc::Sender<Input>> = HashMap::new();
    while let Some(event) = events.recv().await {
        let (conn, input) = match event {
            IncomingEvent::NewConnection { conn, peer, local } => {
                let (input_tx, input_rx) = mpsc::channel(CONN_INPUT_CAPACITY);
                conns.insert(conn, input_tx);
                let task = ConnTask {
                    agent: agent.clone(),
                    peers: peers.clone(),
                    app,
                    conn,
                };
                tokio::spawn(task.run(peer, local, input_rx));
                continue;
            }
            IncomingEvent::Data { conn, data } => (conn, Input::Data(data)),
            IncomingEvent::ShutdownWrite { conn } => (conn, Input::Eof),
            IncomingEvent::Closed { conn } => (conn, Input::Closed),
        };
        let closing = matches!(input, Input::Closed);
        if let Some(tx) = conns.get(&conn) {
            if tx.send(input).await.is_err() || closing {
                conns.remove(&conn);
            }
        }
    }
}

/// One incoming connection, dialed to the application's listener.
struct ConnTask {
    agent: AgentApi,
    peers: Arc<Mutex<HashMap<SocketAddr, (SocketAddr, SocketAddr)>>>,
    app: SocketAddr,
    conn: ConnectionId,
}

impl ConnTask {
    async fn run(self, peer: SocketAddr, local: SocketAddr, mut input: mpsc::Receiver<Input>) {
        let dialer = self.dial(peer, local).await;
        if let Some((stream, dialer)) = dialer {
            self.pump(stream, &mut input).await;
            if let Ok(mut peers) = self.peers.lock() {
                peers.remove(&dialer);
            }
        }
        let _ = self
            .agent
            .send_incoming(IncomingClient::Close { conn: self.conn })
            .await;
    }

    /// Connect to the app, registering the dialing address *before* the
    /// connection exists so the app's `accept` always finds its real peer.
    async fn dial(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<(tokio::net::TcpStream, SocketAddr)> {
        let socket = if self.app.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let socket = socket.ok()?;
        let bind_to = SocketAddr::new(self.app.ip(), 0);
        socket.bind(bind_to).ok()?;
        let dialer = socket.local_addr().ok()?;
        if let Ok(mut peers) = self.peers.lock() {
            peers.insert(dialer, (peer, local));
        }
        match socket.connect(self.app).await {
            Ok(stream) => {
                stream.set_nodelay(true).ok();
                Some((stream, dialer))
            }
            Err(e) => {
                eprintln!(
                    "remora: an incoming connection from {peer} could not reach the local \
                     listener {}: {e}",
                    self.app
                );
                if let Ok(mut peers) = self.peers.lock() {
                    peers.remove(&dialer);
                }
                None
            }
        }
    }

    async fn pump(&self, stream: tokio::net::TcpStream, input: &mut mpsc::Receiver<Input>) {
        let conn = self.conn;
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = vec![0u8; MAX_CHUNK];
        let (mut app_done, mut peer_done) = (false, false);
        while !(app_done && peer_done) {
            tokio::select! {
                n = rd.read(&mut buf), if !app_done => match n {
                    Ok(0) | Err(_) => {
                        app_done = true;
                        let msg = IncomingClient::ShutdownWrite { conn };
                        if self.agent.send_incoming(msg).await.is_err() {
                            return;
                        }
                    }
                    Ok(n) => {
                        let data = Bytes::copy_from_slice(&buf[..n]);
                        if self.agent.send_incoming(IncomingClient::Data { conn, data }).await.is_err() {
                            return;
                        }
                    }
                },
                event = input.recv(), if !peer_done => match event {
                    Some(Input::Data(data)) => {
                        if wr.write_all(&data).await.is_err() {
                            return;
                        }
                    }
                    Some(Input::Eof) => {
                        peer_done = true;
                        let _ = wr.shutdown().await;
                    }
                    Some(Input::Closed) | None => return,
                },
            }
        }
    }
}
