//! End-to-end tests of outgoing streams through the agent: TCP with data both
//! ways and half-close, refused connects, UDP datagrams and unix streams.

#[path = "support/harness.rs"]
mod harness;

use harness::*;

use remora_protocol::flow::{STREAM_WINDOW, credit_cost};
use remora_protocol::net::{RemoteAddr, Transport};
use remora_protocol::outgoing::{MAX_CHUNK, OutgoingClient, OutgoingServer};
use remora_protocol::{ClientMessage, ConnectionId, ErrorCode, Request, Response, ServerMessage};
use std::net::{IpAddr, Ipv4Addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- outgoing

#[tokio::test]
async fn outgoing_tcp_carries_data_both_ways_with_half_close() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.unwrap();
        stream.write_all(b"greeting\n").await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap(); // until the client's half-close
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&got);
        stream.write_all(&reply).await.unwrap();
        (got, peer)
    });

    let mut client = Client::connect(agent.local_addr(), "alice").await;
    client
        .connect_out(1, Transport::Tcp, RemoteAddr::Ip(server_addr))
        .await;
    let OutgoingServer::Connected { conn, result } = client.outgoing().await else {
        panic!("no connect reply");
    };
    assert_eq!(conn, ConnectionId(1));
    let connected = result.expect("connected");
    assert_eq!(connected.remote, RemoteAddr::Ip(server_addr));
    let local = connected.local.expect("local address");
    assert_eq!(local.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));

    // 300 KiB forces several chunks each way.
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    for chunk in big.chunks(MAX_CHUNK) {
        client.data(1, chunk).await;
    }
    client.shutdown_write(1).await;
    let received = client.drain_until_closed(1).await;

    let (server_got, peer) = server.await.unwrap();
    assert_eq!(peer, local, "the server saw the socket the agent reported");
    assert_eq!(server_got, big);
    let mut expected = b"greeting\necho:".to_vec();
    expected.extend_from_slice(&big);
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "data corrupted on the way back");
}

#[tokio::test]
async fn connect_to_a_closed_port_is_refused() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    client
        .connect_out(7, Transport::Tcp, RemoteAddr::Ip(closed))
        .await;
    let OutgoingServer::Connected { conn, result } = client.outgoing().await else {
        panic!("no connect reply");
    };
    assert_eq!(conn, ConnectionId(7));
    let err = result.unwrap_err();
    assert_eq!(err.code, ErrorCode::ConnectionRefused);
    assert!(err.message.contains(&closed.to_string()), "{err}");
    // The session is fine afterwards.
    assert_eq!(client.request(Request::Ping).await.unwrap(), Response::Pong);
}

#[tokio::test]
async fn outgoing_udp_and_unix_streams_work() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;

    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let udp_server = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        for _ in 0..2 {
            let (n, from) = udp.recv_from(&mut buf).await.unwrap();
            let mut reply = b"pong:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            udp.send_to(&reply, from).await.unwrap();
        }
    });
    client
        .connect_out(1, Transport::Udp, RemoteAddr::Ip(udp_addr))
        .await;
    let OutgoingServer::Connected { result, .. } = client.outgoing().await else {
        panic!("no connect reply");
    };
    assert!(result.unwrap().local.is_some());
    for word in [&b"one"[..], b"two"] {
        client.data(1, word).await;
        let OutgoingServer::Data { conn, data } = client.outgoing().await else {
            panic!("no datagram");
        };
        assert_eq!(conn, ConnectionId(1));
        assert_eq!(&data[..], [&b"pong:"[..], word].concat());
    }
    udp_server.await.unwrap();
    client
        .send(ClientMessage::Outgoing(OutgoingClient::Close {
            conn: ConnectionId(1),
        }))
        .await;
    let OutgoingServer::Closed { conn, error } = client.outgoing().await else {
        panic!("no close");
    };
    assert_eq!((conn, error), (ConnectionId(1), None));

    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("app.sock");
    let unix = tokio::net::UnixListener::bind(&socket_path).unwrap();
    let unix_server = tokio::spawn(async move {
        let (mut stream, _) = unix.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        stream
            .write_all(&[b"unix:", &got[..]].concat())
            .await
            .unwrap();
    });
    client
        .connect_out(2, Transport::Tcp, RemoteAddr::Unix(path(&socket_path)))
        .await;
    let OutgoingServer::Connected { result, .. } = client.outgoing().await else {
        panic!("no connect reply");
    };
    assert_eq!(result.unwrap().local, None);
    client.data(2, b"hi").await;
    client.shutdown_write(2).await;
    assert_eq!(client.drain_until_closed(2).await, b"unix:hi");
    unix_server.await.unwrap();

    client
        .connect_out(
            3,
            Transport::Tcp,
            RemoteAddr::Unix(path(&dir.path().join("none"))),
        )
        .await;
    let OutgoingServer::Connected { result, .. } = client.outgoing().await else {
        panic!("no connect reply");
    };
    assert_eq!(result.unwrap_err().code, ErrorCode::NotFound);
}

#[tokio::test]
async fn a_peer_that_stops_reading_holds_only_its_own_connection_and_loses_nothing() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;

    // One peer accepts and reads only when released; another echoes.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let stuck_server = tokio::spawn(async move {
        let (mut stream, _) = stuck.accept().await.unwrap();
        let _ = release_rx.await;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got
    });
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = echo.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        stream.write_all(&got).await.unwrap();
    });
    for (conn, addr) in [(1, stuck_addr), (2, echo_addr)] {
        client
            .connect_out(conn, Transport::Tcp, RemoteAddr::Ip(addr))
            .await;
        let OutgoingServer::Connected { result, .. } = client.outgoing().await else {
            panic!("no connect reply");
        };
        result.unwrap();
    }

    // A whole window on the stuck connection, without waiting for credit.
    let chunks = (STREAM_WINDOW / credit_cost(MAX_CHUNK)) as usize;
    let sent: Vec<u8> = (0..chunks * MAX_CHUNK).map(|i| (i % 249) as u8).collect();
    for chunk in sent.chunks(MAX_CHUNK) {
        client.data(1, chunk).await;
    }

    // The link and the other connection carry on, and nothing is closed.
    assert_eq!(client.request(Request::Ping).await.unwrap(), Response::Pong);
    client.data(2, b"still here").await;
    client.shutdown_write(2).await;
    assert_eq!(client.drain_until_closed(2).await, b"still here");

    // Released, the peer gets every byte in order.
    release_tx.send(()).unwrap();
    client.shutdown_write(1).await;
    assert_eq!(client.drain_until_closed(1).await, b"");
    assert_eq!(stuck_server.await.unwrap(), sent);
}

#[tokio::test]
async fn a_client_that_sends_beyond_its_window_loses_that_connection() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let _stuck_server = tokio::spawn(async move {
        let (stream, _) = stuck.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(stream);
    });
    client
        .connect_out(1, Transport::Tcp, RemoteAddr::Ip(stuck_addr))
        .await;
    let OutgoingServer::Connected { result, .. } = client.outgoing().await else {
        panic!("no connect reply");
    };
    result.unwrap();
    // The agent's writer may pass some on to the kernel and credit it, so
    // overrun by far more than the socket buffers can take.
    let chunk = vec![7u8; MAX_CHUNK];
    let closed = loop {
        client.data(1, &chunk).await;
        match tokio::time::timeout(std::time::Duration::from_millis(1), client.read()).await {
            Ok(Some(ServerMessage::Outgoing(OutgoingServer::Closed { conn, error }))) => {
                break (conn, error);
            }
            Ok(Some(ServerMessage::Outgoing(OutgoingServer::Credit { .. }))) | Err(_) => {}
            Ok(other) => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(closed.0, ConnectionId(1));
    let error = closed.1.expect("closed with an error");
    assert!(error.message.contains("window"), "{error}");
    assert_eq!(client.request(Request::Ping).await.unwrap(), Response::Pong);
}

/// Request/response exchanges on three streams at once, with requests
/// between them: every answer arrives whole, in order and on its own
/// stream.
#[tokio::test]
async fn round_trips_on_several_streams_arrive_in_order() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    stream.write_all(&buf[..n]).await.unwrap();
                }
            });
        }
    });
    for conn in 1..=3 {
        client
            .connect_out(conn, Transport::Tcp, RemoteAddr::Ip(echo_addr))
            .await;
        let OutgoingServer::Connected { result, .. } = client.outgoing().await else {
            panic!("no connect reply");
        };
        result.unwrap();
    }
    let mut received: [Vec<u8>; 3] = Default::default();
    let mut expected: [Vec<u8>; 3] = Default::default();
    for round in 0..300u32 {
        for conn in 1..=3u64 {
            // 1 to 1,500 bytes, each round's bytes distinct.
            let len = 1 + (round as usize * 37 + conn as usize * 11) % 1500;
            let message: Vec<u8> = (0..len)
                .map(|i| (round as usize + i + conn as usize) as u8)
                .collect();
            client.data(conn, &message).await;
            expected[conn as usize - 1].extend_from_slice(&message);
        }
        if round % 50 == 0 {
            assert_eq!(client.request(Request::Ping).await.unwrap(), Response::Pong);
        }
        // Each stream's echo of this round, in order.
        while (0..3).any(|i| received[i].len() < expected[i].len()) {
            match client.outgoing().await {
                OutgoingServer::Data { conn, data } => {
                    let i = conn.0 as usize - 1;
                    received[i].extend_from_slice(&data);
                    assert!(
                        received[i].len() <= expected[i].len(),
                        "more than was sent on {conn}"
                    );
                    let bytes = credit_cost(data.len());
                    client
                        .send(ClientMessage::Outgoing(OutgoingClient::Credit {
                            conn,
                            bytes,
                        }))
                        .await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(received == expected, "an answer was corrupted or reordered");
    }
    for conn in 1..=3 {
        client.shutdown_write(conn).await;
        assert_eq!(client.drain_until_closed(conn).await, b"");
    }
}
