//! Tests of the incoming task and a client's incoming traffic, with a
//! recording [`Redirector`] double: no root, no rules. Listeners bind on the
//! loopback and connecting straight to one stands in for a redirected
//! connection.

use super::*;
use crate::namespace::CurrentNamespaces;
use bytes::Bytes;
use remora_protocol::incoming::{
    HttpRequestHead, HttpResponseHead, HttpVersion, IncomingClient, IncomingServer,
};
use remora_protocol::session::LogLevel;
use remora_protocol::{Capabilities, ConnectionId, ErrorCode, RemoteResult};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STEP: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add(u16, u16),
    Remove(u16),
    RemoveAll,
    RemoveStale,
}

/// What the double was asked, shared with the test.
#[derive(Debug, Clone, Default)]
struct Recorder {
    ops: Arc<Mutex<Vec<Op>>>,
    fail_add: Arc<AtomicBool>,
}

impl Recorder {
    fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }

    /// Wait until the double has seen exactly `expected`.
    async fn wait_for(&self, expected: &[Op]) {
        let deadline = tokio::time::Instant::now() + STEP;
        while self.ops() != expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "netfilter operations {:?}, expected {expected:?}",
                self.ops()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn listener_of(&self, port: u16) -> u16 {
        self.ops()
            .iter()
            .find_map(|op| match op {
                Op::Add(p, to) if *p == port => Some(*to),
                _ => None,
            })
            .expect("port was added")
    }
}

#[derive(Debug)]
struct FakeRedirector(Recorder);

impl Redirector for FakeRedirector {
    fn add(&mut self, port: RemotePort, to: ListenerPort) -> Result<(), RedirectError> {
        self.0.ops.lock().unwrap().push(Op::Add(port.0, to.0));
        if self.0.fail_add.load(Ordering::Relaxed) {
            return Err(RedirectError::Command {
                command: "nft add element".into(),
                output: "Error: Could not process rule: No buffer space available".into(),
            });
        }
        Ok(())
    }

    fn remove(&mut self, port: RemotePort) -> Result<(), RedirectError> {
        self.0.ops.lock().unwrap().push(Op::Remove(port.0));
        Ok(())
    }

    fn remove_all(&mut self) -> Result<(), RedirectError> {
        self.0.ops.lock().unwrap().push(Op::RemoveAll);
        Ok(())
    }

    fn remove_stale(
        &mut self,
        _is_alive: &dyn Fn(u32) -> bool,
    ) -> Result<Vec<String>, RedirectError> {
        self.0.ops.lock().unwrap().push(Op::RemoveStale);
        Ok(Vec::new())
    }
}

struct Fixture {
    api: IncomingApi,
    task: JoinHandle<()>,
    rec: Recorder,
    shutdown: CancellationToken,
}

async fn fixture() -> Fixture {
    let ns: Arc<dyn crate::namespace::TargetNamespaces> = Arc::new(CurrentNamespaces);
    let net = NetApi::start(ns.clone()).await.unwrap();
    let rec = Recorder::default();
    let double = rec.clone();
    let redirect = RedirectApi::start(
        ns,
        Box::new(move || Ok(Box::new(FakeRedirector(double)) as Box<dyn Redirector>)),
    )
    .await
    .unwrap();
    let settings = IncomingSettings {
        target: "pid/4242".into(),
        listen_ip: Some(Ipv4Addr::LOCALHOST.into()),
        // Marking needs CAP_NET_ADMIN, and without rules nothing loops.
        mark: None,
    };
    let shutdown = CancellationToken::new();
    let (api, task) = IncomingApi::start(net, redirect, settings, shutdown.clone());
    rec.wait_for(&[Op::RemoveStale]).await;
    Fixture {
        api,
        task,
        rec,
        shutdown,
    }
}

/// A client of the incoming task, as the client task would drive it.
struct TestClient {
    incoming: ClientIncoming,
    out_rx: mpsc::Receiver<ServerMessage>,
    token: CancellationToken,
}

impl Fixture {
    fn client(&self, session: u64, user: &str) -> TestClient {
        self.client_with(session, user, Capabilities::ALL, 64)
    }

    fn client_with(
        &self,
        session: u64,
        user: &str,
        capabilities: Capabilities,
        link_capacity: usize,
    ) -> TestClient {
        let (out_tx, out_rx) = mpsc::channel(link_capacity);
        let token = self.shutdown.child_token();
        TestClient {
            incoming: ClientIncoming::new(
                self.api.clone(),
                SessionId(session),
                user.into(),
                capabilities,
                out_tx,
                token.clone(),
            ),
            out_rx,
            token,
        }
    }
}

impl TestClient {
    async fn send(&mut self, message: IncomingClient) {
        self.incoming.handle(message).await;
    }

    async fn subscribe(&mut self, port: u16, mode: IncomingMode) -> RemoteResult<()> {
        self.send(IncomingClient::Subscribe {
            port: RemotePort(port),
            mode,
            filter: None,
        })
        .await;
        self.subscribed(port).await
    }

    async fn subscribed(&mut self, port: u16) -> RemoteResult<()> {
        match self.next().await {
            ServerMessage::Incoming(IncomingServer::Subscribed { port: p, result }) => {
                assert_eq!(p, RemotePort(port));
                result
            }
            other => panic!("expected Subscribed, got {other:?}"),
        }
    }

    async fn next(&mut self) -> ServerMessage {
        tokio::time::timeout(STEP, self.out_rx.recv())
            .await
            .expect("a message in time")
            .expect("link open")
    }

    async fn incoming(&mut self) -> IncomingServer {
        match self.next().await {
            ServerMessage::Incoming(message) => message,
            other => panic!("expected an incoming message, got {other:?}"),
        }
    }

    /// Data of `conn` up to its half close.
    async fn read_until_shutdown(&mut self, conn: ConnectionId) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            match self.incoming().await {
                IncomingServer::Data { conn: c, data } if c == conn => got.extend_from_slice(&data),
                IncomingServer::ShutdownWrite { conn: c } if c == conn => return got,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn localhost(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

#[tokio::test]
async fn stealing_a_port_redirects_it_and_warns_about_health_probes() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    alice.subscribe(8080, IncomingMode::Steal).await.unwrap();
    match alice.next().await {
        ServerMessage::Log { level, message } => {
            assert_eq!(level, LogLevel::Warn);
            assert_eq!(
                message,
                "stealing port 8080 without an HTTP filter also takes health-probe traffic \
                 (kubelet probes) away from the target"
            );
        }
        other => panic!("expected the probe warning, got {other:?}"),
    }
    let listener = fx.rec.listener_of(8080);
    assert_ne!(listener, 0);
    fx.rec
        .wait_for(&[Op::RemoveStale, Op::Add(8080, listener)])
        .await;
}

#[tokio::test]
async fn a_stolen_connection_reaches_the_subscriber_and_only_it_answers() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    alice.subscribe(8080, IncomingMode::Steal).await.unwrap();
    let _warning = alice.next().await;

    let mut peer = TcpStream::connect(localhost(fx.rec.listener_of(8080)))
        .await
        .unwrap();
    peer.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    peer.shutdown().await.unwrap();
    let IncomingServer::NewConnection {
        conn,
        port,
        peer: seen_peer,
        local,
    } = alice.incoming().await
    else {
        panic!("expected a new connection");
    };
    assert_eq!(port, RemotePort(8080));
    assert_eq!(seen_peer, peer.local_addr().unwrap());
    assert_eq!(local, localhost(8080), "the original destination");
    assert_eq!(
        alice.read_until_shutdown(conn).await,
        b"GET / HTTP/1.0\r\n\r\n"
    );

    let reply = Bytes::from_static(b"HTTP/1.0 200 OK\r\n\r\nfrom the laptop");
    alice.send(IncomingClient::Data { conn, data: reply }).await;
    alice.send(IncomingClient::ShutdownWrite { conn }).await;
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, peer.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"HTTP/1.0 200 OK\r\n\r\nfrom the laptop");
    assert_eq!(
        alice.incoming().await,
        IncomingServer::Closed { conn },
        "closed once both sides are done"
    );
}

#[tokio::test]
async fn a_port_has_one_subscriber_at_a_time() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    let mut bob = fx.client(2, "bob");
    alice.subscribe(8080, IncomingMode::Mirror).await.unwrap();
    let err = bob.subscribe(8080, IncomingMode::Steal).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyExists);
    assert!(
        err.message
            .contains("port 8080 of pid/4242 is already mirrored by session 1 (alice)"),
        "{err}"
    );
    // Nothing was added for bob, and alice keeps the port.
    let listener = fx.rec.listener_of(8080);
    fx.rec
        .wait_for(&[Op::RemoveStale, Op::Add(8080, listener)])
        .await;
    bob.subscribe(9090, IncomingMode::Steal).await.unwrap();
}

impl TestClient {
    async fn subscribe_filtered(
        &mut self,
        port: u16,
        mode: IncomingMode,
        filter: HttpFilter,
    ) -> RemoteResult<()> {
        self.send(IncomingClient::Subscribe {
            port: RemotePort(port),
            mode,
            filter: Some(filter),
        })
        .await;
        self.subscribed(port).await
    }
}

#[tokio::test]
async fn bad_filters_and_filtered_mirrors_are_refused_without_touching_netfilter() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    let err = alice
        .subscribe_filtered(8080, IncomingMode::Steal, HttpFilter::Header("(".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput);
    assert_eq!(err.message, "header filter \"(\": unclosed group");
    let err = alice
        .subscribe_filtered(
            8080,
            IncomingMode::Mirror,
            HttpFilter::Header("^x-user: alice$".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unsupported);
    assert!(
        err.message.starts_with("HTTP filters apply to steal"),
        "{err}"
    );
    assert_eq!(fx.rec.ops(), [Op::RemoveStale]);
}

#[tokio::test]
async fn a_filtered_steal_hands_matching_requests_to_the_subscriber() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    alice
        .subscribe_filtered(
            8080,
            IncomingMode::Steal,
            HttpFilter::Header("^x-user: alice$".into()),
        )
        .await
        .unwrap();
    let mut peer = TcpStream::connect(localhost(fx.rec.listener_of(8080)))
        .await
        .unwrap();
    peer.write_all(
        b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nX-User: Alice\r\nContent-Length: 4\r\n\r\nbody",
    )
    .await
    .unwrap();
    // No probe warning for a filtered steal: the request comes first.
    let IncomingServer::Request { request, head, .. } = alice.incoming().await else {
        panic!("expected a request");
    };
    assert_eq!(
        (head.method.as_str(), head.uri.as_str()),
        ("POST", "/x?y=1")
    );
    // Header names as the peer sent them.
    assert!(
        head.headers
            .contains(&("X-User".into(), Bytes::from_static(b"Alice")))
    );
    let mut body = Vec::new();
    loop {
        match alice.incoming().await {
            IncomingServer::RequestBody {
                request: r,
                chunk,
                last,
            } if r == request => {
                body.extend_from_slice(&chunk);
                if last {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(body, b"body");
    alice
        .send(IncomingClient::ResponseHead {
            request,
            head: HttpResponseHead {
                status: 201,
                version: HttpVersion::Http11,
                headers: vec![("content-length".into(), Bytes::from_static(b"6"))],
            },
        })
        .await;
    alice
        .send(IncomingClient::ResponseBody {
            request,
            chunk: Bytes::from_static(b"stolen"),
            last: true,
        })
        .await;
    let mut answer = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.ends_with(b"stolen") {
        let n = tokio::time::timeout(STEP, peer.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&answer[..n]);
    }
    let got = String::from_utf8(got).unwrap();
    assert!(got.starts_with("HTTP/1.1 201 Created\r\n"), "{got}");
}

#[tokio::test]
async fn an_upgraded_request_becomes_a_stolen_connection() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    alice
        .subscribe_filtered(8080, IncomingMode::Steal, HttpFilter::Path("^/ws$".into()))
        .await
        .unwrap();
    let mut peer = TcpStream::connect(localhost(fx.rec.listener_of(8080)))
        .await
        .unwrap();
    peer.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let IncomingServer::Request { request, .. } = alice.incoming().await else {
        panic!("expected a request");
    };
    let head = HttpResponseHead {
        status: 101,
        version: HttpVersion::Http11,
        headers: vec![
            ("connection".into(), Bytes::from_static(b"Upgrade")),
            ("upgrade".into(), Bytes::from_static(b"websocket")),
        ],
    };
    alice
        .send(IncomingClient::ResponseHead { request, head })
        .await;
    let mut answer = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, peer.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(n, 0);
        got.extend_from_slice(&answer[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    let conn = loop {
        match alice.incoming().await {
            IncomingServer::RequestBody { .. } => {}
            IncomingServer::Upgraded { request: r, conn } => {
                assert_eq!(r, request);
                break conn;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    peer.write_all(b"ping").await.unwrap();
    match alice.incoming().await {
        IncomingServer::Data { conn: c, data } => {
            assert_eq!((c, &data[..]), (conn, &b"ping"[..]));
        }
        other => panic!("unexpected {other:?}"),
    }
    alice
        .send(IncomingClient::Data {
            conn,
            data: Bytes::from_static(b"pong"),
        })
        .await;
    let n = tokio::time::timeout(STEP, peer.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer[..n], b"pong");
}

#[tokio::test]
async fn a_failed_answer_is_a_502_and_a_gone_peer_cancels_its_request() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    alice
        .subscribe_filtered(8080, IncomingMode::Steal, HttpFilter::Method("GET".into()))
        .await
        .unwrap();
    let listener = localhost(fx.rec.listener_of(8080));
    let mut peer = TcpStream::connect(listener).await.unwrap();
    peer.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let IncomingServer::Request { request, .. } = alice.incoming().await else {
        panic!("expected a request");
    };
    alice
        .send(IncomingClient::ResponseFailed {
            request,
            reason: "connection refused".into(),
        })
        .await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(STEP, peer.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 502 Bad Gateway\r\n"));

    let mut peer = TcpStream::connect(listener).await.unwrap();
    peer.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let request = loop {
        match alice.incoming().await {
            // The end of the first request's (empty) body.
            IncomingServer::RequestBody { .. } => {}
            IncomingServer::Request { request, .. } => break request,
            other => panic!("expected a request, got {other:?}"),
        }
    };
    drop(peer);
    loop {
        match alice.incoming().await {
            IncomingServer::RequestBody { .. } => {}
            IncomingServer::RequestCancelled { request: r } => {
                assert_eq!(r, request);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn modes_that_were_not_negotiated_are_refused() {
    let fx = fixture().await;
    let mut alice = fx.client_with(1, "alice", Capabilities::INCOMING_STEAL, 8);
    let err = alice
        .subscribe(8080, IncomingMode::Mirror)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unsupported);
    assert_eq!(fx.rec.ops(), [Op::RemoveStale]);
}

#[tokio::test]
async fn unsubscribing_removes_the_rule_and_the_last_port_takes_the_table() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    alice.subscribe(8080, IncomingMode::Mirror).await.unwrap();
    alice.subscribe(9090, IncomingMode::Mirror).await.unwrap();
    let (l1, l2) = (fx.rec.listener_of(8080), fx.rec.listener_of(9090));
    assert_ne!(l1, l2);

    alice
        .send(IncomingClient::Unsubscribe {
            port: RemotePort(8080),
        })
        .await;
    let mut expected = vec![
        Op::RemoveStale,
        Op::Add(8080, l1),
        Op::Add(9090, l2),
        Op::Remove(8080),
    ];
    fx.rec.wait_for(&expected).await;
    wait_refused(localhost(l1)).await;

    alice
        .send(IncomingClient::Unsubscribe {
            port: RemotePort(9090),
        })
        .await;
    expected.extend([Op::Remove(9090), Op::RemoveAll]);
    fx.rec.wait_for(&expected).await;
    wait_refused(localhost(l2)).await;
}

#[tokio::test]
async fn another_session_cannot_unsubscribe_a_port() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    let mut bob = fx.client(2, "bob");
    alice.subscribe(8080, IncomingMode::Mirror).await.unwrap();
    bob.send(IncomingClient::Unsubscribe {
        port: RemotePort(8080),
    })
    .await;
    // Ordered after bob's unsubscribe in the task's queue.
    bob.subscribe(9090, IncomingMode::Mirror).await.unwrap();
    let (l1, l2) = (fx.rec.listener_of(8080), fx.rec.listener_of(9090));
    assert_eq!(
        fx.rec.ops(),
        [Op::RemoveStale, Op::Add(8080, l1), Op::Add(9090, l2)]
    );
}

#[tokio::test]
async fn a_client_that_leaves_loses_its_ports_and_others_keep_theirs() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    let mut bob = fx.client(2, "bob");
    alice.subscribe(8080, IncomingMode::Mirror).await.unwrap();
    bob.subscribe(9090, IncomingMode::Mirror).await.unwrap();
    let (l1, l2) = (fx.rec.listener_of(8080), fx.rec.listener_of(9090));

    alice.token.cancel();
    drop(alice);
    fx.rec
        .wait_for(&[
            Op::RemoveStale,
            Op::Add(8080, l1),
            Op::Add(9090, l2),
            Op::Remove(8080),
        ])
        .await;
    wait_refused(localhost(l1)).await;
    TcpStream::connect(localhost(l2))
        .await
        .expect("bob's listener still runs");

    // The port is free again.
    let mut carol = fx.client(3, "carol");
    carol.subscribe(8080, IncomingMode::Mirror).await.unwrap();

    bob.token.cancel();
    carol.token.cancel();
    let l3 = fx.rec.ops()[4];
    let deadline = tokio::time::Instant::now() + STEP;
    while fx.rec.ops().last() != Some(&Op::RemoveAll) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", fx.rec.ops());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ops = fx.rec.ops();
    assert!(matches!(l3, Op::Add(8080, _)), "{ops:?}");
    assert_eq!(ops.len(), 8, "{ops:?}");
    assert!(ops[5..7].contains(&Op::Remove(8080)) && ops[5..7].contains(&Op::Remove(9090)));
}

#[tokio::test]
async fn a_failed_redirect_leaves_no_rule_and_no_listener() {
    let fx = fixture().await;
    fx.rec.fail_add.store(true, Ordering::Relaxed);
    let mut alice = fx.client(1, "alice");
    let err = alice
        .subscribe(8080, IncomingMode::Steal)
        .await
        .unwrap_err();
    assert!(
        err.message
            .starts_with("cannot redirect port 8080 of pid/4242 to the agent: `nft add element`"),
        "{err}"
    );
    let listener = fx.rec.listener_of(8080);
    fx.rec
        .wait_for(&[Op::RemoveStale, Op::Add(8080, listener), Op::RemoveAll])
        .await;
    wait_refused(localhost(listener)).await;

    // Nothing half-held: the next try may succeed.
    fx.rec.fail_add.store(false, Ordering::Relaxed);
    alice.subscribe(8080, IncomingMode::Steal).await.unwrap();
}

#[tokio::test]
async fn agent_shutdown_removes_every_rule() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    alice.subscribe(8080, IncomingMode::Mirror).await.unwrap();
    let listener = fx.rec.listener_of(8080);
    fx.shutdown.cancel();
    tokio::time::timeout(STEP, fx.task)
        .await
        .expect("the incoming task ends")
        .unwrap();
    assert_eq!(
        fx.rec.ops(),
        [Op::RemoveStale, Op::Add(8080, listener), Op::RemoveAll]
    );
}

/// A service that answers `service:<request>` after the request's half
/// close, as the target's real service would.
async fn service() -> (SocketAddr, JoinHandle<Vec<SocketAddr>>) {
    let listener = tokio::net::TcpListener::bind(localhost(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        let answer = if got.len() > 1024 {
            format!("service:{} bytes", got.len()).into_bytes()
        } else {
            [b"service:", &got[..]].concat()
        };
        stream.write_all(&answer).await.unwrap();
        vec![peer]
    });
    (addr, task)
}

#[tokio::test]
async fn a_mirrored_connection_is_answered_by_the_service_and_copied_to_the_client() {
    let fx = fixture().await;
    let (service_addr, service) = service().await;
    let mut alice = fx.client(1, "alice");
    alice
        .subscribe(service_addr.port(), IncomingMode::Mirror)
        .await
        .unwrap();

    let mut peer = TcpStream::connect(localhost(fx.rec.listener_of(service_addr.port())))
        .await
        .unwrap();
    peer.write_all(b"ping").await.unwrap();
    peer.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, peer.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"service:ping");
    assert_eq!(service.await.unwrap().len(), 1);

    let IncomingServer::NewConnection { conn, local, .. } = alice.incoming().await else {
        panic!("expected a new connection");
    };
    assert_eq!(local, service_addr);
    // What the client sends back is discarded.
    alice
        .send(IncomingClient::Data {
            conn,
            data: Bytes::from_static(b"ignored"),
        })
        .await;
    assert_eq!(alice.read_until_shutdown(conn).await, b"ping");
    assert_eq!(alice.incoming().await, IncomingServer::Closed { conn });
}

#[tokio::test]
async fn a_slow_client_loses_its_mirror_copy_and_the_traffic_goes_on() {
    let fx = fixture().await;
    let (service_addr, service) = service().await;
    // A link with room for one message that nobody reads after Subscribed.
    let mut alice = fx.client_with(1, "alice", Capabilities::ALL, 1);
    alice
        .subscribe(service_addr.port(), IncomingMode::Mirror)
        .await
        .unwrap();

    let mut peer = TcpStream::connect(localhost(fx.rec.listener_of(service_addr.port())))
        .await
        .unwrap();
    // At least 128 reads of at most 64 KiB: more than the copy queue holds.
    let request = vec![7u8; 8 * 1024 * 1024];
    let (mut peer_r, mut peer_w) = peer.split();
    let send = async {
        peer_w.write_all(&request).await.unwrap();
        peer_w.shutdown().await.unwrap();
    };
    let mut answer = Vec::new();
    let receive = peer_r.read_to_end(&mut answer);
    let ((), received) = tokio::time::timeout(STEP, async { tokio::join!(send, receive) })
        .await
        .expect("the mirrored traffic never waits for the client");
    received.unwrap();
    assert_eq!(
        answer,
        format!("service:{} bytes", request.len()).as_bytes()
    );
    service.await.unwrap();

    let IncomingServer::NewConnection { conn, .. } = alice.incoming().await else {
        panic!("expected a new connection");
    };
    let mut copied = 0;
    let warning = loop {
        match alice.next().await {
            ServerMessage::Incoming(IncomingServer::Data { data, .. }) => copied += data.len(),
            ServerMessage::Log { level, message } => {
                assert_eq!(level, LogLevel::Warn);
                break message;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(copied < request.len(), "copied {copied} bytes");
    assert!(warning.contains("its copy was dropped"), "{warning}");
    assert_eq!(alice.incoming().await, IncomingServer::Closed { conn });
}

/// Wait until nothing accepts on `addr` any more.
async fn wait_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + STEP;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An HTTP/1.1 keep-alive service answering every request `200 service`,
/// on as many connections as come.
async fn http_service() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(localhost(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nservice";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    addr
}

impl TestClient {
    /// Take the next request and answer it `200 <body>`.
    async fn answer_next(&mut self, body: &'static str) -> HttpRequestHead {
        let IncomingServer::Request { request, head, .. } = self.incoming().await else {
            panic!("expected a request");
        };
        // A body (and its end) follows only when the head declares one.
        let declares_body = head.headers.iter().any(|(name, _)| {
            name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
        });
        if declares_body {
            loop {
                match self.incoming().await {
                    IncomingServer::RequestBody { last: true, .. } => break,
                    IncomingServer::RequestBody { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        let length = Bytes::from(body.len().to_string());
        self.send(IncomingClient::ResponseHead {
            request,
            head: HttpResponseHead {
                status: 200,
                version: HttpVersion::Http11,
                headers: vec![("content-length".into(), length)],
            },
        })
        .await;
        self.send(IncomingClient::ResponseBody {
            request,
            chunk: Bytes::from_static(body.as_bytes()),
            last: true,
        })
        .await;
        head
    }
}

/// Send one GET on `peer` and read its answer's body (content-length framed).
async fn get(peer: &mut TcpStream, user: Option<&str>) -> String {
    let header = user.map_or_else(String::new, |u| format!("x-user: {u}\r\n"));
    let request = format!("GET /who HTTP/1.1\r\nhost: a\r\n{header}\r\n");
    peer.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("content-length")
                .trim()
                .parse()
                .unwrap();
            if got.len() >= end + 4 + length {
                return String::from_utf8_lossy(&got[end + 4..end + 4 + length]).into_owned();
            }
        }
        let n = tokio::time::timeout(STEP, peer.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn filtered_steals_share_a_port_and_each_request_finds_its_session() {
    let fx = fixture().await;
    let service = http_service().await;
    let port = service.port();
    let mut alice = fx.client(1, "alice");
    let mut bob = fx.client(2, "bob");
    let header = |user: &str| HttpFilter::Header(format!("^x-user: {user}$"));
    alice
        .subscribe_filtered(port, IncomingMode::Steal, header("alice"))
        .await
        .unwrap();
    bob.subscribe_filtered(port, IncomingMode::Steal, header("bob"))
        .await
        .unwrap();
    // One rule for the shared port.
    let listener = fx.rec.listener_of(port);
    assert_eq!(fx.rec.ops(), [Op::RemoveStale, Op::Add(port, listener)]);

    // One connection, requests for everyone, in turn.
    let mut peer = TcpStream::connect(localhost(listener)).await.unwrap();
    let (answered, head) = tokio::join!(get(&mut peer, Some("bob")), bob.answer_next("bob"));
    assert_eq!((answered.as_str(), head.uri.as_str()), ("bob", "/who"));
    assert_eq!(get(&mut peer, None).await, "service");
    let (answered, _) = tokio::join!(get(&mut peer, Some("alice")), alice.answer_next("alice"));
    assert_eq!(answered, "alice");
    assert_eq!(get(&mut peer, Some("carol")).await, "service");

    // Alice leaves: her requests go to the service, bob keeps his.
    alice.token.cancel();
    let mut left = false;
    for _ in 0..100 {
        if get(&mut peer, Some("alice")).await == "service" {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(left, "alice's filter still routes after she left");
    let (answered, _) = tokio::join!(get(&mut peer, Some("bob")), bob.answer_next("bob"));
    assert_eq!(answered, "bob");
    assert_eq!(fx.rec.ops(), [Op::RemoveStale, Op::Add(port, listener)]);

    // The last one leaving takes the rule, and the table once the
    // connection it redirected is closed.
    bob.send(IncomingClient::Unsubscribe {
        port: RemotePort(port),
    })
    .await;
    drop(peer);
    fx.rec
        .wait_for(&[
            Op::RemoveStale,
            Op::Add(port, listener),
            Op::Remove(port),
            Op::RemoveAll,
        ])
        .await;
}

#[tokio::test]
async fn a_shared_port_refuses_what_would_take_others_traffic() {
    let fx = fixture().await;
    let mut alice = fx.client(1, "alice");
    let mut bob = fx.client(2, "bob");
    let header = |p: &str| HttpFilter::Header(p.into());
    alice
        .subscribe_filtered(8080, IncomingMode::Steal, header("^x-user: alice$"))
        .await
        .unwrap();
    let err = bob
        .subscribe_filtered(8080, IncomingMode::Steal, header("^X-User: Alice$"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyExists);
    assert_eq!(
        err.message,
        "port 8080 of pid/4242: header filter '^x-user: alice$' is held by session 1 (alice)"
    );
    let err = bob.subscribe(8080, IncomingMode::Steal).await.unwrap_err();
    assert!(
        err.message.starts_with(
            "port 8080 of pid/4242 has HTTP filters held by session 1 (alice); stealing the \
             whole port"
        ),
        "{err}"
    );
    let err = bob.subscribe(8080, IncomingMode::Mirror).await.unwrap_err();
    assert!(err.message.contains("mirroring the whole port"), "{err}");
    let err = alice
        .subscribe_filtered(8080, IncomingMode::Steal, header("^x-user: alice2$"))
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains("already stolen by this session with header filter '^x-user: alice$'"),
        "{err}"
    );
    // A whole port is not shared with filters either.
    bob.subscribe(9090, IncomingMode::Steal).await.unwrap();
    let ServerMessage::Log { .. } = bob.next().await else {
        panic!("expected the probe warning");
    };
    let err = alice
        .subscribe_filtered(9090, IncomingMode::Steal, header("^x-user: alice$"))
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains("port 9090 of pid/4242 is already stolen by session 2 (bob)"),
        "{err}"
    );
    // Different filters share.
    bob.subscribe_filtered(8080, IncomingMode::Steal, header("^x-user: bob$"))
        .await
        .unwrap();
}

/// A service that runs `serve` on every connection it accepts.
async fn scripted_service<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(localhost(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// Read from `stream` until `got` ends with `end`.
async fn read_until(stream: &mut TcpStream, got: &mut Vec<u8>, end: &[u8]) {
    let mut buf = [0u8; 4096];
    while !got.ends_with(end) {
        let n = tokio::time::timeout(STEP, stream.read(&mut buf))
            .await
            .expect("more bytes in time")
            .unwrap();
        assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// Alice holds a filtered steal on `port`.
async fn alice_on(fx: &Fixture, port: u16) -> TestClient {
    let mut alice = fx.client(1, "alice");
    alice
        .subscribe_filtered(
            port,
            IncomingMode::Steal,
            HttpFilter::Header("^x-user: alice$".into()),
        )
        .await
        .unwrap();
    alice
}

#[tokio::test]
async fn requests_not_taken_get_the_services_bytes_unchanged() {
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nX-Odd-CASE:   spaced  \r\nTransfer-Encoding: \
                            chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n";
    let service = scripted_service(|mut stream| async move {
        let mut got = Vec::new();
        loop {
            read_until(&mut stream, &mut got, b"\r\n\r\n").await;
            got.clear();
            stream.write_all(ANSWER).await.unwrap();
        }
    })
    .await;
    let fx = fixture().await;
    let _alice = alice_on(&fx, service.port()).await;
    let mut peer = TcpStream::connect(localhost(fx.rec.listener_of(service.port())))
        .await
        .unwrap();
    // Twice on one connection: the chunked answer's end was found.
    for _ in 0..2 {
        peer.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        read_until(&mut peer, &mut got, b"Trailer: x\r\n\r\n").await;
        assert_eq!(got, ANSWER);
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_whoever_answers() {
    let fx = fixture().await;
    let service = http_service().await;
    let mut alice = alice_on(&fx, service.port()).await;
    let mut peer = TcpStream::connect(localhost(fx.rec.listener_of(service.port())))
        .await
        .unwrap();
    peer.write_all(
        b"GET /1 HTTP/1.1\r\nx-user: alice\r\n\r\n\
          POST /2 HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc\
          GET /3 HTTP/1.1\r\nx-user: alice\r\n\r\n",
    )
    .await
    .unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        read_until(&mut peer, &mut got, b"alice3").await;
        String::from_utf8(got).unwrap()
    });
    assert_eq!(alice.answer_next("alice1").await.uri, "/1");
    assert_eq!(alice.answer_next("alice3").await.uri, "/3");
    let got = reader.await.unwrap();
    let bodies: Vec<&str> = ["alice1", "service", "alice3"]
        .iter()
        .map(|b| &got[got.find(b).unwrap_or_else(|| panic!("{b} missing: {got}"))..][..b.len()])
        .collect();
    assert_eq!(bodies, ["alice1", "service", "alice3"]);
    assert!(got.find("alice1") < got.find("service") && got.find("service") < got.find("alice3"));
}

#[tokio::test]
async fn expect_100_continue_works_taken_or_not() {
    // The service says 100 Continue, then reads the body and answers.
    let service = scripted_service(|mut stream| async move {
        let mut got = Vec::new();
        read_until(&mut stream, &mut got, b"\r\n\r\n").await;
        assert!(String::from_utf8_lossy(&got).contains("expect: 100-continue"));
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        let mut body = Vec::new();
        read_until(&mut stream, &mut body, b"hello").await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ngot all")
            .await
            .unwrap();
    })
    .await;
    let fx = fixture().await;
    let mut alice = alice_on(&fx, service.port()).await;
    let listener = localhost(fx.rec.listener_of(service.port()));
    for user in ["bob", "alice"] {
        let mut peer = TcpStream::connect(listener).await.unwrap();
        let head = format!(
            "POST / HTTP/1.1\r\nx-user: {user}\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
        );
        peer.write_all(head.as_bytes()).await.unwrap();
        // The peer waits for 100 Continue before it sends the body.
        let mut got = Vec::new();
        read_until(&mut peer, &mut got, b"100 Continue\r\n\r\n").await;
        peer.write_all(b"hello").await.unwrap();
        let mut got = Vec::new();
        if user == "alice" {
            let head = alice.answer_next("got all").await;
            assert!(
                !head
                    .headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("expect")),
                "the agent answered the expectation itself"
            );
        }
        read_until(&mut peer, &mut got, b"got all").await;
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{user}");
    }
}

#[tokio::test]
async fn when_the_service_closes_an_idle_connection_the_peers_closes_too() {
    // One answer per connection, then the service closes it (as an idle
    // timeout would), without saying so in the answer.
    let service = scripted_service(|mut stream| async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        // The head, and the body of a POST.
        while !(got.ends_with(b"\r\n\r\n") && got.starts_with(b"GET") || got.ends_with(b"abc")) {
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0);
            got.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
    })
    .await;
    let fx = fixture().await;
    let _alice = alice_on(&fx, service.port()).await;
    let listener = localhost(fx.rec.listener_of(service.port()));
    // With or without a body, each on a new connection: the last one ended
    // with the service's.
    let requests: [&[u8]; 2] = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
    ];
    for request in requests {
        let mut peer = TcpStream::connect(listener).await.unwrap();
        peer.write_all(request).await.unwrap();
        let mut got = Vec::new();
        read_until(&mut peer, &mut got, b"\r\n\r\nok").await;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(STEP, peer.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "the peer's connection outlived the service's: {closed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keep_alive_connections_pass_through_without_a_failure() {
    let fx = fixture().await;
    let service = http_service().await;
    let _alice = alice_on(&fx, service.port()).await;
    let listener = localhost(fx.rec.listener_of(service.port()));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn(async move {
                let mut peer = TcpStream::connect(listener).await.unwrap();
                for _ in 0..300 {
                    assert_eq!(get(&mut peer, None).await, "service");
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
}

/// Regression: releasing a port used to stop its listener and every one of
/// its connections at once, before its rule went, and to delete the table
/// with the last port: a request a session had taken lost its answer, and a
/// connection the rule had just sent was reset. Now the rule goes first,
/// taken requests are still answered, whatever comes after goes to the
/// service, and the table waits for the connections it redirected.
#[tokio::test]
async fn a_released_port_still_answers_what_it_took_and_sends_the_rest_to_the_service() {
    let fx = fixture().await;
    let service = http_service().await;
    let port = service.port();
    let mut alice = alice_on(&fx, port).await;
    let listener = fx.rec.listener_of(port);
    let mut taken = TcpStream::connect(localhost(listener)).await.unwrap();
    taken
        .write_all(b"GET /who HTTP/1.1\r\nhost: a\r\nx-user: alice\r\n\r\n")
        .await
        .unwrap();
    let IncomingServer::Request { request, .. } = alice.incoming().await else {
        panic!("expected a request");
    };
    // Accepted before the release, its first request not sent yet.
    let mut idle = TcpStream::connect(localhost(listener)).await.unwrap();

    alice
        .send(IncomingClient::Unsubscribe {
            port: RemotePort(port),
        })
        .await;
    let released = [Op::RemoveStale, Op::Add(port, listener), Op::Remove(port)];
    fx.rec.wait_for(&released).await;
    // The taken request is answered by alice, who still holds it.
    alice
        .send(IncomingClient::ResponseHead {
            request,
            head: HttpResponseHead {
                status: 200,
                version: HttpVersion::Http11,
                headers: vec![("content-length".into(), Bytes::from_static(b"5"))],
            },
        })
        .await;
    alice
        .send(IncomingClient::ResponseBody {
            request,
            chunk: Bytes::from_static(b"alice"),
            last: true,
        })
        .await;
    let mut got = Vec::new();
    read_until(&mut taken, &mut got, b"alice").await;
    // Alice's next requests go to the service: she gave the port back.
    assert_eq!(get(&mut taken, Some("alice")).await, "service");
    assert_eq!(get(&mut idle, Some("alice")).await, "service");
    wait_refused(localhost(listener)).await;
    // The table (its NAT chains) outlives the port while connections it
    // redirected are open: without it their answers would go out
    // untranslated.
    assert_eq!(fx.rec.ops(), released);
    drop((taken, idle));
    fx.rec
        .wait_for(&[
            Op::RemoveStale,
            Op::Add(port, listener),
            Op::Remove(port),
            Op::RemoveAll,
        ])
        .await;
}

/// The agent stopping (`withdraw`): redirects first, a taken request is
/// still answered by its session, new subscriptions are refused, the drain
/// ends once the connections inside the agent are done, and the table goes
/// after them.
#[tokio::test]
async fn withdrawing_removes_the_rules_first_and_waits_for_what_is_in_flight() {
    let fx = fixture().await;
    let service = http_service().await;
    let port = service.port();
    let mut alice = alice_on(&fx, port).await;
    let listener = fx.rec.listener_of(port);
    let mut taken = TcpStream::connect(localhost(listener)).await.unwrap();
    taken
        .write_all(b"GET /who HTTP/1.1\r\nhost: a\r\nx-user: alice\r\n\r\n")
        .await
        .unwrap();
    let IncomingServer::Request { request, .. } = alice.incoming().await else {
        panic!("expected a request");
    };
    let api = fx.api.clone();
    let withdraw = tokio::spawn(async move { api.withdraw(STEP).await });
    let released = [Op::RemoveStale, Op::Add(port, listener), Op::Remove(port)];
    fx.rec.wait_for(&released).await;
    let mut bob = fx.client(2, "bob");
    let refused = bob.subscribe(9999, IncomingMode::Mirror).await.unwrap_err();
    assert_eq!(refused.message, "the agent of pid/4242 is stopping");
    assert!(!withdraw.is_finished(), "a request is still in flight");
    alice
        .send(IncomingClient::ResponseHead {
            request,
            head: HttpResponseHead {
                status: 200,
                version: HttpVersion::Http11,
                headers: vec![
                    ("content-length".into(), Bytes::from_static(b"5")),
                    ("connection".into(), Bytes::from_static(b"close")),
                ],
            },
        })
        .await;
    alice
        .send(IncomingClient::ResponseBody {
            request,
            chunk: Bytes::from_static(b"alice"),
            last: true,
        })
        .await;
    let mut got = Vec::new();
    read_until(&mut taken, &mut got, b"alice").await;
    drop(taken);
    tokio::time::timeout(STEP, withdraw)
        .await
        .expect("the drain ends once nothing is in flight")
        .unwrap();
    wait_refused(localhost(listener)).await;
    fx.rec
        .wait_for(&[
            Op::RemoveStale,
            Op::Add(port, listener),
            Op::Remove(port),
            Op::RemoveAll,
        ])
        .await;
}

#[tokio::test]
async fn requests_with_many_headers_are_routed_by_any_of_them() {
    let service = http_service().await;
    let fx = fixture().await;
    let mut alice = alice_on(&fx, service.port()).await;
    let mut peer = TcpStream::connect(localhost(fx.rec.listener_of(service.port())))
        .await
        .unwrap();
    // More header lines than the agent routes without an allocation.
    let filler: String = (0..40).map(|i| format!("x-filler-{i}: {i}\r\n")).collect();
    for (user, answer) in [("bob", "service"), ("alice", "laptop"), ("bob", "service")] {
        let request = format!("GET /who HTTP/1.1\r\nhost: a\r\n{filler}x-user: {user}\r\n\r\n");
        peer.write_all(request.as_bytes()).await.unwrap();
        if user == "alice" {
            let head = alice.answer_next("laptop").await;
            assert_eq!(head.headers.len(), 42);
        }
        let mut got = Vec::new();
        read_until(&mut peer, &mut got, answer.as_bytes()).await;
    }
}
