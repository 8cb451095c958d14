//! Property tests: every message round-trips; hostile input never panics.

use crate::codec::{self, CodecError, MAX_FRAME_LEN};
use crate::incoming::HttpFilter;
use crate::messages::*;
use crate::{Capabilities, Hello, HelloReply};
use bytes::Bytes;
use proptest::prelude::*;

pub(crate) fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from)
}

pub(crate) fn opt_bytes() -> impl Strategy<Value = Option<Bytes>> {
    proptest::option::of(bytes())
}

pub(crate) fn headers() -> impl Strategy<Value = Vec<(String, Bytes)>> {
    proptest::collection::vec((".{0,16}", bytes()), 0..4)
}

impl Arbitrary for HttpFilter {
    type Parameters = ();
    type Strategy = BoxedStrategy<HttpFilter>;

    fn arbitrary_with(_: ()) -> Self::Strategy {
        let leaf = prop_oneof![
            ".{0,12}".prop_map(HttpFilter::Header),
            ".{0,12}".prop_map(HttpFilter::Path),
            "[A-Z]{0,7}".prop_map(HttpFilter::Method),
        ];
        leaf.prop_recursive(3, 12, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(HttpFilter::AllOf),
                proptest::collection::vec(inner, 0..4).prop_map(HttpFilter::AnyOf),
            ]
        })
        .boxed()
    }
}

fn roundtrip<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut frame = Vec::new();
    codec::encode_frame(msg, &mut frame).expect("encodes");
    let (back, used): (T, usize) = codec::decode_frame(&frame)
        .expect("decodes")
        .expect("whole");
    assert_eq!(used, frame.len());
    assert_eq!(&back, msg);
    // The blocking reader agrees with the slice decoder.
    let back2: T = codec::read_frame(&mut &frame[..]).expect("reads");
    assert_eq!(&back2, msg);
    // The async encoder writes the same bytes after whatever is queued.
    #[cfg(feature = "tokio-codec")]
    {
        use tokio_util::codec::Encoder;
        let mut queued = bytes::BytesMut::from(&b"queued"[..]);
        codec::FrameCodec::<T, &T>::default()
            .encode(msg, &mut queued)
            .expect("encodes");
        assert_eq!(&queued[..6], b"queued");
        assert_eq!(&queued[6..], &frame[..]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn handshakes_roundtrip(
        hello in any::<Hello>(),
        reply in any::<HelloReply>(),
        lh in any::<LayerHello>(),
        lr in any::<LayerHelloReply>(),
    ) {
        roundtrip(&hello);
        roundtrip(&reply);
        roundtrip(&lh);
        roundtrip(&lr);
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = codec::decode_frame::<ClientMessage>(&data);
        let _ = codec::decode_frame::<ServerMessage>(&data);
        let _ = codec::decode_frame::<LayerMessage>(&data);
        let _ = codec::decode_frame::<ProxyMessage>(&data);
        let _ = codec::read_frame::<_, ServerMessage>(&mut &data[..]);
    }

}

/// Runs a round-trip property on a thread with a big stack: the generated
/// strategies for the deeply nested message enums overflow the default 2 MiB
/// test-thread stack in debug builds.
fn roundtrip_all<T>()
where
    T: Arbitrary + serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    big_stack(|| {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 256,
            ..ProptestConfig::default()
        });
        runner
            .run(&any::<T>(), |msg| {
                roundtrip(&msg);
                Ok(())
            })
            .unwrap();
    });
}

pub(crate) fn big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn truncated_frames_are_incomplete_or_errors() {
    big_stack(|| {
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&(any::<ServerMessage>(), 0usize..4096), |(msg, cut)| {
                let mut frame = Vec::new();
                codec::encode_frame(&msg, &mut frame).unwrap();
                let part = &frame[..cut % frame.len()];
                // The incremental decoder waits for more bytes...
                prop_assert!(matches!(
                    codec::decode_frame::<ServerMessage>(part),
                    Ok(None)
                ));
                // ...and the blocking reader reports a typed error at end of stream.
                let err = codec::read_frame::<_, ServerMessage>(&mut &part[..]).unwrap_err();
                prop_assert!(
                    matches!(err, CodecError::Closed | CodecError::Truncated { .. }),
                    "{err:?}"
                );
                Ok(())
            })
            .unwrap();
    });
}

#[test]
fn client_messages_roundtrip() {
    roundtrip_all::<ClientMessage>();
}

#[test]
fn server_messages_roundtrip() {
    roundtrip_all::<ServerMessage>();
}

#[test]
fn layer_messages_roundtrip() {
    roundtrip_all::<LayerMessage>();
}

#[test]
fn proxy_messages_roundtrip() {
    roundtrip_all::<ProxyMessage>();
}

#[test]
fn oversized_frame_is_refused_before_allocating() {
    let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    let err = codec::decode_frame::<ClientMessage>(&header).unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { .. }), "{err:?}");
    let err = codec::read_frame::<_, ClientMessage>(&mut &header[..]).unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { .. }), "{err:?}");
}

#[test]
fn oversized_message_is_refused_at_encode() {
    let msg = ClientMessage::Outgoing(crate::outgoing::OutgoingClient::Data {
        conn: crate::ConnectionId(1),
        data: Bytes::from(vec![0u8; MAX_FRAME_LEN + 10]),
    });
    let err = codec::encode(&msg).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::FrameTooLarge { .. } | CodecError::Encode(_)
        ),
        "{err:?}"
    );
}

/// An oversized message is refused by the async encoder too, and leaves
/// what was queued before it untouched.
#[cfg(feature = "tokio-codec")]
#[test]
fn oversized_message_is_refused_by_the_async_encoder() {
    use tokio_util::codec::Encoder;
    let msg = ClientMessage::Outgoing(crate::outgoing::OutgoingClient::Data {
        conn: crate::ConnectionId(1),
        data: Bytes::from(vec![0u8; MAX_FRAME_LEN + 10]),
    });
    let mut queued = bytes::BytesMut::from(&b"queued"[..]);
    let err = codec::FrameCodec::<ServerMessage, ClientMessage>::default()
        .encode(msg, &mut queued)
        .unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { .. }), "{err:?}");
    assert_eq!(&queued[..], b"queued");
}

#[test]
fn huge_inner_length_prefix_is_a_decode_error_not_an_allocation() {
    // A Data variant claiming a 2^60-byte payload inside a small frame.
    let mut payload = vec![1u8, 1, 1]; // ClientMessage::Outgoing, OutgoingClient::Data, conn=1
    payload.push(255); // bincode varint marker for u64
    payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    assert!(codec::decode_frame::<ClientMessage>(&frame).is_err());
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut payload = codec::encode(&ClientMessage::Bye).unwrap();
    payload.push(0);
    assert!(matches!(
        codec::decode::<ClientMessage>(&payload),
        Err(CodecError::TrailingBytes(1))
    ));
}

#[test]
fn version_negotiation_explains_mismatch() {
    use crate::handshake::{ProtocolVersion, negotiate};
    assert_eq!(
        negotiate(crate::PROTOCOL_VERSION),
        Ok(crate::PROTOCOL_VERSION)
    );
    assert_eq!(negotiate(ProtocolVersion(99)), Ok(crate::PROTOCOL_VERSION));
    let err = negotiate(ProtocolVersion(0)).unwrap_err();
    assert!(
        err.contains("v0")
            && err.contains(&crate::PROTOCOL_VERSION.to_string())
            && err.contains("upgrade"),
        "{err}"
    );
}

#[test]
fn version_two_keeps_v1_peers_and_gates_the_newer_messages() {
    use crate::handshake::{MIN_PROTOCOL_VERSION, ProtocolVersion, negotiate};
    assert_eq!(crate::PROTOCOL_VERSION, ProtocolVersion(4));
    assert_eq!(MIN_PROTOCOL_VERSION, ProtocolVersion(1));
    assert_eq!(negotiate(ProtocolVersion(1)), Ok(ProtocolVersion(1)));
    let gated = [
        (Capabilities::SUBSCRIBE_OVERRIDE, 1 << 24),
        (Capabilities::SESSION_POLICY, 1 << 25),
        (Capabilities::STREAM_WRITES, 1 << 26),
        (Capabilities::INCOMING_PEER, 1 << 27),
        (Capabilities::FLOW_CONTROL, 1 << 18),
        (Capabilities::STREAM_SYNC, 1 << 29),
        (Capabilities::HTTP_FLOW_CONTROL, 1 << 19),
        (Capabilities::DNS_QUERY, 1 << 30),
        (Capabilities::QUEUE_SPLITS, 1 << 31),
    ];
    for (bit, value) in gated {
        assert_eq!(bit.0, value);
        assert!(Capabilities::ALL.contains(bit));
    }
    let v1 = Capabilities::implied_by(ProtocolVersion(1));
    assert!(!v1.contains(Capabilities::STREAM_WRITES));
    assert!(!v1.contains(Capabilities::INCOMING_PEER));
    let v2 = Capabilities::implied_by(ProtocolVersion(2));
    assert!(v2.contains(Capabilities::STREAM_WRITES | Capabilities::INCOMING_PEER));
    // StreamSync is a v4 variant: a v3 intproxy could not decode it.
    assert!(!Capabilities::implied_by(ProtocolVersion(3)).contains(Capabilities::STREAM_SYNC));
    assert!(Capabilities::implied_by(ProtocolVersion(4)).contains(Capabilities::STREAM_SYNC));
}

#[test]
fn a_client_names_both_versions_when_the_server_is_older_or_newer() {
    use crate::handshake::{ProtocolVersion, check_accepted, explain_rejection};
    assert!(check_accepted(crate::PROTOCOL_VERSION, "the agent").is_ok());
    assert!(check_accepted(ProtocolVersion(1), "the agent").is_ok());
    let newer = check_accepted(ProtocolVersion(7), "the operator").unwrap_err();
    assert!(
        newer.contains("v7")
            && newer.contains(&crate::PROTOCOL_VERSION.to_string())
            && newer.contains("upgrade this remora"),
        "{newer}"
    );
    let older = check_accepted(ProtocolVersion(0), "the agent").unwrap_err();
    assert!(
        older.contains("v0")
            && older.contains(&crate::PROTOCOL_VERSION.to_string())
            && older.contains("upgrade the agent"),
        "{older}"
    );
    let rejected = explain_rejection("invalid token", ProtocolVersion(9), "the agent");
    assert!(
        rejected.contains("v9") && rejected.contains(&crate::PROTOCOL_VERSION.to_string()),
        "{rejected}"
    );
    assert_eq!(
        explain_rejection("invalid token", crate::PROTOCOL_VERSION, "the agent"),
        "invalid token"
    );
}

#[test]
fn a_v1_hello_still_decodes_and_its_encoding_is_frozen() {
    use crate::handshake::ProtocolVersion;
    let hello = Hello {
        version: ProtocolVersion(1),
        capabilities: Capabilities::FILES,
        token: crate::SessionToken("t".into()),
        client: crate::ClientIdentity {
            user: "u".into(),
            hostname: "h".into(),
            pid: 1,
            program: "p".into(),
            remora_version: "0.1.0".into(),
        },
        target: None,
    };
    let bytes = codec::encode(&hello).unwrap();
    // The version is the first field (a varint): a peer of any version reads it.
    assert_eq!(bytes[0], 1);
    assert_eq!(codec::decode::<Hello>(&bytes).unwrap(), hello);
}

#[test]
fn errno_mapping_roundtrips_for_known_codes() {
    use crate::ErrorCode;
    for errno in [
        1, 2, 9, 13, 17, 20, 21, 22, 39, 95, 98, 99, 101, 104, 110, 111, 113, 77,
    ] {
        assert_eq!(ErrorCode::from_linux_errno(errno).to_linux_errno(), errno);
    }
}

#[test]
fn file_requests_name_their_paths() {
    use crate::fs::FsRequest;
    let rename = FsRequest::Rename {
        from: "/a".into(),
        to: "/b".into(),
    };
    assert_eq!(rename.paths(), ["/a", "/b"]);
    let rmdir = FsRequest::RmDir { path: "/d".into() };
    assert_eq!(rmdir.paths(), ["/d"]);
    let close = FsRequest::Close {
        fd: crate::RemoteFd(3),
    };
    assert!(close.paths().is_empty());
}
