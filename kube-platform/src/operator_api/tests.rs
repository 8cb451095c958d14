use super::*;

#[test]
fn targets_route_to_their_namespace_and_a_path_segment() {
    assert_eq!(
        route(Some("namespace/shop/deployment/web"), "default"),
        ("shop".to_owned(), "deployment.web".to_owned())
    );
    assert_eq!(
        route(Some("pod/web-1/container/app"), "default"),
        ("default".to_owned(), "pod.web-1.container.app".to_owned())
    );
    assert_eq!(route(None, "team"), ("team".to_owned(), CONTROL.to_owned()));
    assert_eq!(
        connect_path("shop", "deployment.web"),
        "/apis/operator.remora.dev/v1alpha1/namespaces/shop/targets/deployment.web/connect"
    );
}

#[tokio::test]
async fn bytes_cross_the_bridge_both_ways_and_an_end_ends_it() {
    use tokio_tungstenite::tungstenite::protocol::Role;
    let (ws_client_io, ws_server_io) = tokio::io::duplex(1024);
    let (local, bridged) = tokio::io::duplex(1024);
    let server = WebSocketStream::from_raw_socket(ws_server_io, Role::Server, None).await;
    let bridging = tokio::spawn(bridge(server, bridged));
    let mut client = WebSocketStream::from_raw_socket(ws_client_io, Role::Client, None).await;
    let (mut local_rd, mut local_wr) = tokio::io::split(local);

    client
        .send(Message::Binary(Bytes::from_static(b"hello")))
        .await
        .unwrap();
    client.send(Message::Ping(Bytes::new())).await.unwrap();
    let mut got = [0u8; 5];
    local_rd.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");

    local_wr.write_all(b"back").await.unwrap();
    let back = loop {
        match client.next().await.unwrap().unwrap() {
            Message::Binary(data) => break data,
            _ => continue,
        }
    };
    assert_eq!(&back[..], b"back");

    client.send(Message::Close(None)).await.unwrap();
    bridging.await.unwrap();
    let mut rest = Vec::new();
    local_rd.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn the_first_frame_is_read_whole_and_kept_as_sent() {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        capabilities: remora_protocol::Capabilities(0),
        token: remora_protocol::SessionToken(String::new()),
        client: remora_protocol::ClientIdentity {
            user: "carol".into(),
            hostname: "laptop".into(),
            pid: 1,
            program: "true".into(),
            remora_version: "0".into(),
        },
        target: Some("namespace/default/deployment/web".into()),
    };
    let mut frame = Vec::new();
    codec::encode_frame(&hello, &mut frame).unwrap();
    let mut input = frame.clone();
    input.extend_from_slice(b"next");
    let mut reader = &input[..];
    let (bytes, read) = read_hello(&mut reader).await.unwrap();
    assert_eq!(bytes, frame);
    assert_eq!(read, hello);
    assert_eq!(reader, b"next");
}
