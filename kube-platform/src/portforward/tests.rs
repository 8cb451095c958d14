use super::*;
use tokio::io::DuplexStream;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;

const PORT: u16 = 4242;

/// A relay over an in-memory WebSocket: returns the local client's socket and
/// the server's end of the WebSocket (playing the API server and kubelet).
async fn relayed() -> (TcpStream, WebSocketStream<DuplexStream>) {
    let (client_io, server_io) = tokio::io::duplex(256 * 1024);
    let socket = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (local, _) = listener.accept().await.unwrap();
    tokio::spawn(async move { relay(socket, local, "agent-pod", PORT).await });
    (app, server)
}

fn on(channel: u8, payload: &[u8]) -> Message {
    let mut v = vec![channel];
    v.extend_from_slice(payload);
    Message::Binary(v.into())
}

async fn announce(server: &mut WebSocketStream<DuplexStream>, port: u16) {
    for channel in [DATA, ERROR] {
        server.send(on(channel, &port.to_le_bytes())).await.unwrap();
    }
}

/// The next data payload the server receives, `None` at a close.
async fn next_data(server: &mut WebSocketStream<DuplexStream>) -> Option<Vec<u8>> {
    loop {
        match server.next().await? {
            Ok(Message::Binary(b)) => {
                assert_eq!(b[0], DATA, "the client writes on the data channel only");
                return Some(b[1..].to_vec());
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn bytes_go_both_ways_and_the_local_end_closes_the_forward() {
    let (mut app, mut server) = relayed().await;
    announce(&mut server, PORT).await;
    app.write_all(b"ping").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        got.extend(next_data(&mut server).await.unwrap());
    }
    assert_eq!(got, b"ping");
    server.send(on(DATA, b"pong")).await.unwrap();
    let mut answer = [0; 4];
    app.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"pong");
    // The app stops sending: the WebSocket closes (v4 has no half-close,
    // as with kube-rs), and the app's connection ends once the server
    // answers the close.
    app.shutdown().await.unwrap();
    assert_eq!(next_data(&mut server).await, None);
    // Sends the answer to the close (tungstenite queued it on reading).
    SinkExt::close(&mut server).await.unwrap();
    let mut rest = Vec::new();
    app.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

/// 4 MiB of a pattern that shows bytes out of order.
fn download() -> Vec<u8> {
    (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect()
}

fn assert_arrived_whole(got: &[u8], data: &[u8]) {
    assert!(
        got == data,
        "{} bytes of {} arrived, or out of order",
        got.len(),
        data.len()
    );
}

#[tokio::test]
async fn a_large_download_arrives_whole_and_in_order() {
    let (mut app, mut server) = relayed().await;
    announce(&mut server, PORT).await;
    let data = download();
    let sent = data.clone();
    let sender = tokio::spawn(async move {
        for chunk in sent.chunks(32 * 1024) {
            server.send(on(DATA, chunk)).await.unwrap();
        }
        let _ = server.close(None).await;
        server
    });
    let mut got = Vec::new();
    app.read_to_end(&mut got).await.unwrap();
    assert_arrived_whole(&got, &data);
    drop(sender.await.unwrap());
}

#[tokio::test]
async fn a_message_on_the_error_channel_closes_the_local_connection() {
    let (mut app, mut server) = relayed().await;
    announce(&mut server, PORT).await;
    server
        .send(on(ERROR, b"error forwarding port 4242: connection refused"))
        .await
        .unwrap();
    let mut rest = Vec::new();
    app.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_channel_opened_for_another_port_closes_the_local_connection() {
    let (mut app, mut server) = relayed().await;
    announce(&mut server, PORT + 1).await;
    server.send(on(DATA, b"not for us")).await.unwrap();
    let mut rest = Vec::new();
    app.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

/// A [`PortForwardStream`] over an in-memory WebSocket, and the server's end.
async fn streamed() -> (
    PortForwardStream<DuplexStream>,
    WebSocketStream<DuplexStream>,
) {
    let (client_io, server_io) = tokio::io::duplex(256 * 1024);
    let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
    (
        PortForwardStream::new(client_io, "agent-pod".into(), PORT),
        server,
    )
}

#[tokio::test]
async fn the_stream_carries_bytes_both_ways_in_data_messages() {
    let (mut stream, mut server) = streamed().await;
    announce(&mut server, PORT).await;
    stream.write_all(b"hello").await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(next_data(&mut server).await.unwrap(), b"hello");
    server.send(on(DATA, b"wor")).await.unwrap();
    server.send(Message::Ping(Bytes::new())).await.unwrap();
    server.send(on(DATA, b"ld")).await.unwrap();
    let mut got = [0; 5];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"world");
    // A write larger than a message is split; every byte arrives in order.
    let big: Vec<u8> = (0..3 * CHUNK as u32 + 17)
        .map(|i| (i % 253) as u8)
        .collect();
    let expected = big.clone();
    let writer = tokio::spawn(async move {
        stream.write_all(&big).await.unwrap();
        stream.flush().await.unwrap();
        stream
    });
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let payload = next_data(&mut server).await.unwrap();
        assert!(payload.len() <= CHUNK);
        received.extend(payload);
    }
    assert!(received == expected, "the upload arrived out of order");
    let mut stream = writer.await.unwrap();
    // Shutting down closes the WebSocket (v4 has no half-close).
    stream.shutdown().await.unwrap();
    assert_eq!(next_data(&mut server).await, None);
}

#[tokio::test]
async fn the_stream_ends_when_the_server_closes() {
    let (mut stream, mut server) = streamed().await;
    announce(&mut server, PORT).await;
    server.send(on(DATA, b"last words")).await.unwrap();
    server.close(None).await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"last words");
}

#[tokio::test]
async fn the_stream_ends_at_a_v5_close_signal_for_the_data_channel() {
    // No Kubernetes server picks v5 for port-forward (docs/kubernetes.md);
    // should one, its close signal for the data channel is the end.
    let (mut stream, mut server) = streamed().await;
    announce(&mut server, PORT).await;
    server.send(on(DATA, b"bye")).await.unwrap();
    server.send(on(CLOSE, &[ERROR])).await.unwrap();
    server.send(on(DATA, b" now")).await.unwrap();
    server.send(on(CLOSE, &[DATA])).await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"bye now");
}

#[tokio::test]
async fn an_error_message_is_a_refused_read() {
    let (mut stream, mut server) = streamed().await;
    announce(&mut server, PORT).await;
    server
        .send(on(ERROR, b"error forwarding port 4242: connection refused"))
        .await
        .unwrap();
    let e = stream.read(&mut [0; 16]).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(e.to_string().contains("connection refused"), "{e}");
}

#[tokio::test]
async fn a_channel_opened_for_another_port_is_invalid_data() {
    let (mut stream, mut server) = streamed().await;
    announce(&mut server, PORT + 1).await;
    let e = stream.read(&mut [0; 16]).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("not 4242"), "{e}");
}

#[tokio::test]
async fn a_download_through_the_stream_arrives_whole_and_in_order() {
    let (mut stream, mut server) = streamed().await;
    announce(&mut server, PORT).await;
    let data = download();
    let sent = data.clone();
    let sender = tokio::spawn(async move {
        // Messages of the size Go's io.Copy gives, and some odd ones.
        for (i, chunk) in sent.chunks(32 * 1024 + 7).enumerate() {
            let (a, b) = chunk.split_at(chunk.len().min(i % 300));
            server.send(on(DATA, a)).await.unwrap();
            server.send(on(DATA, b)).await.unwrap();
        }
        let _ = server.close(None).await;
        server
    });
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_arrived_whole(&got, &data);
    drop(sender.await.unwrap());
}

#[tokio::test]
async fn fragmented_messages_and_pings_between_their_fragments_are_read_whole() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let (mut stream, mut server) = streamed().await;
    // The data channel's announcement in two fragments.
    let binary = |payload: &[u8], fin| {
        Message::Frame(Frame::message(
            payload.to_vec(),
            OpCode::Data(Data::Binary),
            fin,
        ))
    };
    let more = |payload: &[u8], fin| {
        Message::Frame(Frame::message(
            payload.to_vec(),
            OpCode::Data(Data::Continue),
            fin,
        ))
    };
    server
        .send(binary(&[DATA, PORT.to_le_bytes()[0]], false))
        .await
        .unwrap();
    server
        .send(more(&[PORT.to_le_bytes()[1]], true))
        .await
        .unwrap();
    server.send(on(ERROR, &PORT.to_le_bytes())).await.unwrap();
    server
        .send(binary(&[DATA, b'a', b'b'], false))
        .await
        .unwrap();
    server
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    server.send(more(b"", false)).await.unwrap();
    server.send(more(b"cd", true)).await.unwrap();
    server
        .send(Message::Text("for nobody".into()))
        .await
        .unwrap();
    server.send(on(DATA, b"ef")).await.unwrap();
    let mut got = [0; 6];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abcdef");
    // The ping was answered with its payload.
    let answer = server.next().await.unwrap().unwrap();
    assert_eq!(answer, Message::Pong(Bytes::from_static(b"are you there")));
}

#[tokio::test]
async fn the_servers_close_is_answered_with_its_status_code() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let (mut stream, mut server) = streamed().await;
    announce(&mut server, PORT).await;
    server
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "shutting down".into(),
        }))
        .await
        .unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    match server.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected the close echoed, got {other:?}"),
    }
    // Nothing can be sent after the close.
    let e = stream.write(b"late").await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn a_masked_frame_from_the_server_is_invalid_data() {
    // A server must not mask (RFC 6455 section 5.1): played by a client-role
    // tungstenite, which masks everything it sends.
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let mut stream = PortForwardStream::new(client_io, "agent-pod".into(), PORT);
    let mut masking = WebSocketStream::from_raw_socket(server_io, Role::Client, None).await;
    masking.send(on(DATA, &PORT.to_le_bytes())).await.unwrap();
    let e = stream.read(&mut [0; 16]).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("masked"), "{e}");
}

#[tokio::test]
async fn a_connection_cut_inside_a_frame_is_an_unexpected_end() {
    let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
    let mut stream = PortForwardStream::new(client_io, "agent-pod".into(), PORT);
    // A binary frame announcing 10 bytes, of which 3 come.
    server_io.write_all(&[0x82, 10, DATA, 1, 2]).await.unwrap();
    drop(server_io);
    let e = stream.read(&mut [0; 16]).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
}
