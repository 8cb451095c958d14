//! A scripted agent: speaks the real agent protocol to an in-process intproxy,
//! answers requests from the test's script, plays the "target network" for
//! outgoing streams, and records every message it received.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use remora_protocol::codec::FrameCodec;
use remora_protocol::dns::LookupRequest;
use remora_protocol::fs::FsRequest;
use remora_protocol::incoming::{IncomingClient, IncomingServer};
use remora_protocol::net::Transport;
use remora_protocol::outgoing::{Connected, MAX_CHUNK, OutgoingClient, OutgoingServer};
use remora_protocol::{
    Capabilities, ClientMessage, ConnectionId, ErrorCode, Hello, HelloReply, PROTOCOL_VERSION,
    RemoteAddr, RemoteError, RemoteResult, Request, Response, ServerMessage, SessionId,
};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

/// A lookup of this name is held: the fake agent answers it only once a
/// lookup of another name arrived after it on the same connection. Tests use
/// it to show that one slow remote call does not hold up the others.
pub const HELD_NAME: &str = "held.staging.internal";

/// Whether `request` is a lookup of [`HELD_NAME`].
fn is_held(request: &Request) -> bool {
    matches!(request, Request::Lookup(l) if l.name.trim_end_matches('.') == HELD_NAME)
}

/// What the fake target says is the local address of every stream it opens
/// (what `getsockname` on a redirected socket must report).
pub const POD_LOCAL_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 40000);
/// Frames queued from stream tasks to the connection writer.
const OUT_CAPACITY: usize = 256;
/// How long the fake target network may take to reach a local server.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`FakeAgent::wait_for`] waits for the client to say something.
const WAIT_FOR_TIMEOUT: Duration = Duration::from_secs(20);

/// test --injected frames--> the newest connection's writer
type InjectSlot = Arc<Mutex<Option<mpsc::Sender<ServerMessage>>>>;

/// Answers a [`Request`] the way the target would.
pub type RequestScript = dyn Fn(&Request) -> RemoteResult<Response> + Send + Sync;
/// Decides what happens to an outgoing stream to a remote address (given
/// [`canonical`]: IPv4-mapped addresses as IPv4).
pub type ConnectScript = dyn Fn(&RemoteAddr) -> ConnectPlan + Send + Sync;

/// What the fake target network does with one `Connect`.
#[derive(Debug, Clone)]
pub enum ConnectPlan {
    /// Connect to this **loopback** address instead and pump bytes (TCP) or
    /// datagrams (UDP) both ways (the only real traffic these tests make is
    /// on loopback).
    Forward(SocketAddr),
    /// Send these bytes, then end the stream.
    Canned(Bytes),
    /// Fail the connect with this code.
    Refuse(ErrorCode),
}

/// The behaviour of a [`FakeAgent`].
#[derive(Clone)]
pub struct Script {
    requests: Arc<RequestScript>,
    connects: Arc<ConnectScript>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Script(..)")
    }
}

impl Script {
    pub fn new(
        requests: impl Fn(&Request) -> RemoteResult<Response> + Send + Sync + 'static,
        connects: impl Fn(&RemoteAddr) -> ConnectPlan + Send + Sync + 'static,
    ) -> Script {
        Script {
            requests: Arc::new(requests),
            connects: Arc::new(connects),
        }
    }
}

/// A running scripted agent on 127.0.0.1. Dropping it stops it.
#[derive(Debug)]
pub struct FakeAgent {
    addr: SocketAddr,
    hellos: Arc<Mutex<Vec<Hello>>>,
    seen: Arc<Mutex<Vec<ClientMessage>>>,
    live: Arc<AtomicUsize>,
    inject: InjectSlot,
    /// test --"drop every connection now"--> connection tasks
    drop_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FakeAgent {
    /// Listen on an ephemeral loopback port and serve `script`.
    pub async fn start(script: Script) -> FakeAgent {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binding the fake agent on 127.0.0.1");
        let addr = listener.local_addr().expect("fake agent address");
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let live = Arc::new(AtomicUsize::new(0));
        let inject = InjectSlot::default();
        let (drop_tx, drop_rx) = watch::channel(false);
        let shared = Shared {
            script,
            hellos: hellos.clone(),
            seen: seen.clone(),
            live: live.clone(),
            inject: inject.clone(),
        };
        let task = tokio::spawn(accept_loop(listener, shared, drop_rx));
        FakeAgent {
            addr,
            hellos,
            seen,
            live,
            inject,
            drop_tx,
            task,
        }
    }

    /// Send an incoming-traffic message to the intproxy, as the agent would
    /// (on the newest connection).
    ///
    /// # Panics
    /// When no intproxy is connected.
    pub async fn inject(&self, msg: IncomingServer) {
        let tx = self
            .inject
            .lock()
            .unwrap()
            .clone()
            .expect("no intproxy is connected to the fake agent");
        tx.send(ServerMessage::Incoming(msg))
            .await
            .expect("the fake agent's connection is gone");
    }

    /// Every incoming-traffic message received, in order.
    pub fn incoming(&self) -> Vec<IncomingClient> {
        self.seen()
            .into_iter()
            .filter_map(|m| match m {
                ClientMessage::Incoming(msg) => Some(msg),
                _ => None,
            })
            .collect()
    }

    /// Poll what the client sent until `found` returns something.
    ///
    /// # Panics
    /// After 20 s, naming `what` and listing what was received.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        mut found: impl FnMut(&[IncomingClient]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + WAIT_FOR_TIMEOUT;
        loop {
            let incoming = self.incoming();
            if let Some(t) = found(&incoming) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fake agent did not receive {what} within {} s; incoming messages: {incoming:#?}",
                WAIT_FOR_TIMEOUT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Where the intproxy connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every handshake received.
    pub fn hellos(&self) -> Vec<Hello> {
        self.hellos.lock().unwrap().clone()
    }

    /// Every message received after the handshakes, in order.
    pub fn seen(&self) -> Vec<ClientMessage> {
        self.seen.lock().unwrap().clone()
    }

    /// Every request received.
    pub fn requests(&self) -> Vec<Request> {
        self.seen()
            .into_iter()
            .filter_map(|m| match m {
                ClientMessage::Request { request, .. } => Some(request),
                _ => None,
            })
            .collect()
    }

    /// Names of every DNS lookup received.
    pub fn lookups(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter_map(|r| match r {
                Request::Lookup(LookupRequest { name, .. }) => Some(name),
                _ => None,
            })
            .collect()
    }

    /// Every file request received.
    pub fn fs_requests(&self) -> Vec<FsRequest> {
        self.requests()
            .into_iter()
            .filter_map(|r| match r {
                Request::Fs(fs) => Some(fs),
                _ => None,
            })
            .collect()
    }

    /// Every path named by a file request.
    pub fn fs_paths(&self) -> Vec<String> {
        self.fs_requests().iter().filter_map(fs_path).collect()
    }

    /// Remote addresses of every outgoing `Connect` received.
    pub fn connects(&self) -> Vec<RemoteAddr> {
        self.seen()
            .into_iter()
            .filter_map(|m| match m {
                ClientMessage::Outgoing(OutgoingClient::Connect { remote, .. }) => Some(remote),
                _ => None,
            })
            .collect()
    }

    /// Bytes the client sent on outgoing streams, all streams concatenated.
    pub fn outgoing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for m in self.seen() {
            if let ClientMessage::Outgoing(OutgoingClient::Data { data, .. }) = m {
                out.extend_from_slice(&data);
            }
        }
        out
    }

    /// Cut every connection (as if the agent died) and accept no new one;
    /// returns once the connections are closed.
    pub async fn drop_connections(&self) {
        self.drop_tx.send_replace(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.live.load(Ordering::SeqCst) != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fake agent's connections did not close within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.drop_tx.send_replace(true);
        self.task.abort();
    }
}

/// The address the target network really reaches: an IPv4-mapped IPv6
/// address (what dual-stack sockets connect to) is the IPv4 address.
pub fn canonical(remote: RemoteAddr) -> RemoteAddr {
    match remote {
        RemoteAddr::Ip(addr) => {
            RemoteAddr::Ip(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
        }
        unix => unix,
    }
}

/// The path a file request names, if it names one.
pub fn fs_path(request: &FsRequest) -> Option<String> {
    request.paths().first().map(|p| (*p).to_owned())
}

struct Shared {
    script: Script,
    hellos: Arc<Mutex<Vec<Hello>>>,
    seen: Arc<Mutex<Vec<ClientMessage>>>,
    live: Arc<AtomicUsize>,
    inject: InjectSlot,
}

/// Resolves once the test asked to drop every connection.
async fn dropped(drop_rx: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send: release it at once.
    let _ = drop_rx.wait_for(|dropped| *dropped).await;
}

/// Decrements the live-connection count however a connection task ends.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, shared: Shared, mut drop_rx: watch::Receiver<bool>) {
    let shared = Arc::new(shared);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                shared.live.fetch_add(1, Ordering::SeqCst);
                let guard = LiveGuard(shared.live.clone());
                let shared = shared.clone();
                let drop_rx = drop_rx.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    serve_connection(stream, &shared, drop_rx).await;
                });
            }
            _ = dropped(&mut drop_rx) => return,
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: &Shared, mut drop_rx: watch::Receiver<bool>) {
    stream.set_nodelay(true).ok();
    let mut hs = Framed::new(stream, FrameCodec::<Hello, HelloReply>::default());
    let Some(Ok(hello)) = hs.next().await else {
        return;
    };
    shared.hellos.lock().unwrap().push(hello);
    // The scripted agent grants no credit: it speaks the link without
    // per-stream or HTTP body flow control, as a v2 agent does.
    let no_credit = Capabilities::FLOW_CONTROL.0 | Capabilities::HTTP_FLOW_CONTROL.0;
    let accepted = HelloReply::Accepted {
        version: PROTOCOL_VERSION,
        capabilities: Capabilities(Capabilities::ALL.0 & !no_credit),
        session: SessionId(1),
        server_version: "fake-agent".into(),
    };
    if hs.send(accepted).await.is_err() {
        return;
    }
    let mut framed = hs.map_codec(|_| FrameCodec::<ClientMessage, ServerMessage>::default());
    // stream tasks --frames--> this connection's writer
    let (out_tx, mut out_rx) = mpsc::channel::<ServerMessage>(OUT_CAPACITY);
    *shared.inject.lock().unwrap() = Some(out_tx.clone());
    // Unbounded on purpose: the connection loop must never wait on a stream
    // task that itself waits on the connection loop (a test double may buffer).
    let mut streams: HashMap<ConnectionId, mpsc::UnboundedSender<OutgoingClient>> = HashMap::new();
    // Lookups of HELD_NAME waiting for another lookup to come after them.
    let mut held: Vec<(remora_protocol::RequestId, Request)> = Vec::new();
    loop {
        tokio::select! {
            _ = dropped(&mut drop_rx) => return,
            out = out_rx.recv() => {
                // Cannot be None: this loop holds a sender.
                let Some(out) = out else { return };
                if framed.send(out).await.is_err() {
                    return;
                }
            }
            msg = framed.next() => {
                let Some(Ok(msg)) = msg else { return };
                shared.seen.lock().unwrap().push(msg.clone());
                match msg {
                    ClientMessage::Request { id, request } if is_held(&request) => {
                        held.push((id, request));
                    }
                    ClientMessage::Request { id, request } => {
                        let releases = matches!(request, Request::Lookup(_));
                        let result = (shared.script.requests)(&request);
                        if framed.send(ServerMessage::Response { id, result }).await.is_err() {
                            return;
                        }
                        if releases {
                            for (id, request) in held.drain(..) {
                                let result = (shared.script.requests)(&request);
                                if framed.send(ServerMessage::Response { id, result }).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    ClientMessage::Outgoing(OutgoingClient::Connect { conn, transport, remote }) => {
                        let plan = (shared.script.connects)(&canonical(remote.clone()));
                        let (tx, rx) = mpsc::unbounded_channel();
                        streams.insert(conn, tx);
                        tokio::spawn(stream_task(conn, transport, remote, plan, rx, out_tx.clone()));
                    }
                    ClientMessage::Outgoing(other) => {
                        let conn = match &other {
                            OutgoingClient::Data { conn, .. }
                            | OutgoingClient::ShutdownWrite { conn }
                            | OutgoingClient::Close { conn }
                            | OutgoingClient::Credit { conn, .. } => *conn,
                            OutgoingClient::Connect { .. } => unreachable!("matched above"),
                        };
                        let close = matches!(other, OutgoingClient::Close { .. });
                        if let Some(tx) = streams.get(&conn) {
                            let _ = tx.send(other);
                        }
                        if close {
                            streams.remove(&conn);
                        }
                    }
                    ClientMessage::Incoming(_)
                    | ClientMessage::SubscribeOverride { .. }
                    | ClientMessage::SessionPolicy(_) => {}
                    ClientMessage::Bye => return,
                }
            }
        }
    }
}

fn outgoing(msg: OutgoingServer) -> ServerMessage {
    ServerMessage::Outgoing(msg)
}

/// One outgoing stream of the fake target network.
async fn stream_task(
    conn: ConnectionId,
    transport: Transport,
    remote: RemoteAddr,
    plan: ConnectPlan,
    mut client_rx: mpsc::UnboundedReceiver<OutgoingClient>,
    out_tx: mpsc::Sender<ServerMessage>,
) {
    let refuse = |code: ErrorCode, why: String| {
        outgoing(OutgoingServer::Connected {
            conn,
            result: Err(RemoteError::new(code, why)),
        })
    };
    let connected = outgoing(OutgoingServer::Connected {
        conn,
        result: Ok(Connected {
            local: Some(POD_LOCAL_ADDR),
            remote: remote.clone(),
        }),
    });
    if transport == Transport::Udp {
        match plan {
            ConnectPlan::Forward(local) => {
                assert_loopback(local, &remote);
                let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                    .await
                    .expect("binding a UDP socket on 127.0.0.1");
                socket
                    .connect(local)
                    .await
                    .expect("addressing a loopback UDP peer");
                if out_tx.send(connected).await.is_ok() {
                    forward_datagrams(conn, socket, &mut client_rx, &out_tx).await;
                }
            }
            ConnectPlan::Refuse(code) => {
                let why = format!("sending to {remote}: refused (scripted)");
                let _ = out_tx.send(refuse(code, why)).await;
            }
            ConnectPlan::Canned(_) => {
                let why = format!("fake agent: canned UDP to {remote} is not supported");
                let _ = out_tx.send(refuse(ErrorCode::Unsupported, why)).await;
            }
        }
        return;
    }
    match plan {
        ConnectPlan::Refuse(code) => {
            let why = format!("connecting to {remote}: refused (scripted)");
            let _ = out_tx.send(refuse(code, why)).await;
        }
        ConnectPlan::Canned(bytes) => {
            for msg in [
                connected,
                outgoing(OutgoingServer::Data { conn, data: bytes }),
                outgoing(OutgoingServer::ShutdownWrite { conn }),
            ] {
                if out_tx.send(msg).await.is_err() {
                    return;
                }
            }
            // Swallow what the client sends until it is done.
            while let Some(msg) = client_rx.recv().await {
                match msg {
                    OutgoingClient::ShutdownWrite { .. } => {
                        let closed = OutgoingServer::Closed { conn, error: None };
                        let _ = out_tx.send(outgoing(closed)).await;
                        return;
                    }
                    OutgoingClient::Close { .. } => return,
                    _ => {}
                }
            }
        }
        ConnectPlan::Forward(local) => {
            assert_loopback(local, &remote);
            let socket = match tokio::time::timeout(
                FORWARD_CONNECT_TIMEOUT,
                TcpStream::connect(local),
            )
            .await
            {
                Ok(Ok(socket)) => socket,
                Ok(Err(e)) => {
                    let err = RemoteError::from_io(format!("connecting to {remote}"), &e);
                    let msg = outgoing(OutgoingServer::Connected {
                        conn,
                        result: Err(err),
                    });
                    let _ = out_tx.send(msg).await;
                    return;
                }
                Err(_) => {
                    let why = format!("connecting to {remote}: timed out");
                    let _ = out_tx.send(refuse(ErrorCode::TimedOut, why)).await;
                    return;
                }
            };
            if out_tx.send(connected).await.is_err() {
                return;
            }
            forward(conn, socket, &mut client_rx, &out_tx).await;
        }
    }
}

/// The only real traffic these tests make is on loopback.
fn assert_loopback(local: SocketAddr, remote: &RemoteAddr) {
    assert!(
        local.ip().is_loopback(),
        "the fake agent only forwards to loopback, not {local} (scripted for {remote})"
    );
}

/// Relay datagrams between the client's UDP association and a local peer.
async fn forward_datagrams(
    conn: ConnectionId,
    socket: UdpSocket,
    client_rx: &mut mpsc::UnboundedReceiver<OutgoingClient>,
    out_tx: &mpsc::Sender<ServerMessage>,
) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        tokio::select! {
            got = socket.recv(&mut buf) => {
                let Ok(n) = got else { return };
                let data = Bytes::copy_from_slice(&buf[..n]);
                if out_tx.send(outgoing(OutgoingServer::Data { conn, data })).await.is_err() {
                    return;
                }
            }
            msg = client_rx.recv() => match msg {
                Some(OutgoingClient::Data { data, .. }) => {
                    let _ = socket.send(&data).await;
                }
                Some(OutgoingClient::Close { .. }) | None => return,
                Some(_) => {}
            },
        }
    }
}

/// Pump bytes between the client's stream and a real local socket.
async fn forward(
    conn: ConnectionId,
    socket: TcpStream,
    client_rx: &mut mpsc::UnboundedReceiver<OutgoingClient>,
    out_tx: &mpsc::Sender<ServerMessage>,
) {
    let (mut rd, mut wr) = socket.into_split();
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut from_server_done = false;
    let mut from_client_done = false;
    while !(from_server_done && from_client_done) {
        tokio::select! {
            n = rd.read(&mut buf), if !from_server_done => {
                let msg = match n {
                    Ok(0) | Err(_) => {
                        from_server_done = true;
                        OutgoingServer::ShutdownWrite { conn }
                    }
                    Ok(n) => OutgoingServer::Data {
                        conn,
                        data: Bytes::copy_from_slice(&buf[..n]),
                    },
                };
                if out_tx.send(outgoing(msg)).await.is_err() {
                    return;
                }
            }
            msg = client_rx.recv(), if !from_client_done => match msg {
                Some(OutgoingClient::Data { data, .. }) => {
                    if wr.write_all(&data).await.is_err() {
                        from_client_done = true;
                    }
                }
                Some(OutgoingClient::ShutdownWrite { .. }) => {
                    from_client_done = true;
                    let _ = wr.shutdown().await;
                }
                Some(OutgoingClient::Close { .. }) | None => return,
                Some(OutgoingClient::Connect { .. } | OutgoingClient::Credit { .. }) => {}
            },
        }
    }
    let _ = out_tx
        .send(outgoing(OutgoingServer::Closed { conn, error: None }))
        .await;
}
