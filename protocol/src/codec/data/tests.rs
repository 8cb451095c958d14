//! The split framing of data messages gives and takes exactly the bytes of
//! the plain codec, for every message and every way of writing it out.

use super::*;
use crate::codec::{self, encode_frame};
use bytes::Buf;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Payloads on both sides of [`SHARED_MIN`], up to past [`MAX_CHUNK`].
fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![(0..SHARED_MIN + 2), (SHARED_MIN - 2..MAX_CHUNK + 300),]
        .prop_flat_map(|len| (Just(len), any::<u8>()))
        .prop_map(|(len, seed)| {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect()
        })
}

/// Connection ids of every varint width.
fn conn() -> impl Strategy<Value = ConnectionId> {
    prop_oneof![
        0..251u64,
        251..65_536u64,
        65_536..u64::from(u32::MAX) + 2,
        any::<u64>()
    ]
    .prop_map(ConnectionId)
}

fn server_data() -> impl Strategy<Value = ServerMessage> {
    (conn(), payload(), any::<bool>()).prop_map(|(conn, data, outgoing)| {
        if outgoing {
            ServerMessage::Outgoing(OutgoingServer::Data { conn, data })
        } else {
            ServerMessage::Incoming(IncomingServer::Data { conn, data })
        }
    })
}

fn client_data() -> impl Strategy<Value = ClientMessage> {
    (conn(), payload(), any::<bool>()).prop_map(|(conn, data, outgoing)| {
        if outgoing {
            ClientMessage::Outgoing(OutgoingClient::Data { conn, data })
        } else {
            ClientMessage::Incoming(IncomingClient::Data { conn, data })
        }
    })
}

/// Every kind of message, data messages with large payloads more often.
fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![any::<ServerMessage>(), server_data()]
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![any::<ClientMessage>(), client_data()]
}

fn frame_of<T: DataMessage>(msg: &T) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_frame(msg, &mut frame).expect("encodes");
    frame
}

/// Everything `queue` holds, written out `step` bytes at most at a time
/// through vectored slices of at most `slices` entries (a socket taking
/// part of a vectored write).
fn drain(queue: &mut FrameQueue, step: usize, slices: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while queue.has_remaining() {
        let mut dst = vec![IoSlice::new(&[]); slices];
        let filled = queue.chunks_vectored(&mut dst);
        assert!(filled > 0, "a queue with bytes left offers a slice");
        let mut taken = 0;
        for slice in &dst[..filled] {
            let n = slice.len().min(step - taken);
            out.extend_from_slice(&slice[..n]);
            taken += n;
            if taken == step {
                break;
            }
        }
        let before = queue.remaining();
        queue.advance(taken);
        assert_eq!(queue.remaining(), before - taken);
    }
    out
}

/// What a message gives both ways: the queue's bytes are the codec's, and
/// the shared decode of the frame is the codec's decode.
fn check<T: DataMessage + PartialEq + std::fmt::Debug + Clone>(msg: &T) {
    let frame = frame_of(msg);
    let mut queue = FrameQueue::default();
    queue.push(msg).expect("queues");
    assert_eq!(queue.remaining(), frame.len());
    assert_eq!(drain(&mut queue, usize::MAX, 64), frame);

    let payload = Bytes::copy_from_slice(&frame[HEADER_LEN..]);
    let plain: T = codec::decode(&payload).expect("decodes");
    let shared: T = decode_shared(payload.clone()).expect("decodes shared");
    assert_eq!(&plain, msg);
    assert_eq!(&shared, msg);
    // A large data message's bytes are the frame's own, not a copy.
    if let Some((_, _, data)) = shared.data_parts()
        && data.len() >= SHARED_MIN
    {
        let range = payload.as_ptr_range();
        assert!(
            range.contains(&data.as_ptr()),
            "the data is a slice of the frame"
        );
        assert!(split_data::<T>(&payload).is_some());
    } else {
        assert!(split_data::<T>(&payload).is_none());
    }
}

/// Run `test` on `cases` values of the strategy `make` builds, on a big
/// stack (the derived message strategies overflow a test thread's).
fn property<S, F>(cases: u32, make: fn() -> S, test: F)
where
    S: Strategy + 'static,
    F: Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
{
    crate::tests::big_stack(move || {
        let config = ProptestConfig {
            cases,
            ..ProptestConfig::default()
        };
        proptest::test_runner::TestRunner::new(config)
            .run(&make(), test)
            .unwrap();
    });
}

#[test]
fn server_messages_frame_and_decode_like_the_codec() {
    property(256, server_message, |msg| {
        check(&msg);
        Ok(())
    });
}

#[test]
fn client_messages_frame_and_decode_like_the_codec() {
    property(256, client_message, |msg| {
        check(&msg);
        Ok(())
    });
}

/// Several frames, written in pieces of any size through any number of
/// slices, come out whole and in order.
#[test]
fn partial_vectored_writes_keep_the_frames_in_order() {
    fn cases() -> impl Strategy<Value = (Vec<ServerMessage>, usize, usize)> {
        (
            proptest::collection::vec(server_message(), 1..8),
            1..70_000usize,
            1..5usize,
        )
    }
    property(128, cases, |(msgs, step, slices)| {
        let mut queue = FrameQueue::default();
        let mut expected = Vec::new();
        for msg in &msgs {
            queue.push(msg).expect("queues");
            expected.extend_from_slice(&frame_of(msg));
        }
        prop_assert_eq!(drain(&mut queue, step, slices), expected);
        prop_assert!(!queue.has_remaining());
        Ok(())
    });
}

/// Whatever the bytes, the shared decode agrees with the codec's: the same
/// message, or an error from both.
#[test]
fn hostile_payloads_decode_like_the_codec() {
    fn cases() -> impl Strategy<Value = (Vec<u8>, usize)> {
        (
            proptest::collection::vec(any::<u8>(), 0..12),
            0..SHARED_MIN * 2,
        )
    }
    property(256, cases, |(prefix, tail_len)| {
        let mut payload = prefix;
        payload.resize(payload.len() + tail_len, 7);
        let payload = Bytes::from(payload);
        let plain = codec::decode::<ServerMessage>(&payload);
        let shared = decode_shared::<ServerMessage>(payload);
        match (plain, shared) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "codec: {a:?}, shared: {b:?}"),
        }
        Ok(())
    });
}

/// A data message whose length prefix claims less or more than the frame
/// holds is not taken apart (the codec refuses it).
#[test]
fn a_data_frame_with_a_wrong_length_is_the_codecs_to_refuse() {
    let msg = ServerMessage::Outgoing(OutgoingServer::Data {
        conn: ConnectionId(3),
        data: Bytes::from(vec![1; SHARED_MIN]),
    });
    let frame = frame_of(&msg);
    let mut longer = frame[HEADER_LEN..].to_vec();
    longer.push(0);
    assert!(split_data::<ServerMessage>(&longer).is_none());
    assert!(matches!(
        decode_shared::<ServerMessage>(Bytes::from(longer)),
        Err(CodecError::TrailingBytes(1))
    ));
    let shorter = &frame[HEADER_LEN..frame.len() - 1];
    assert!(split_data::<ServerMessage>(shorter).is_none());
    assert!(decode_shared::<ServerMessage>(Bytes::copy_from_slice(shorter)).is_err());
}

/// A payload too large for a frame is refused and leaves the queue as it was.
#[test]
fn an_oversized_data_message_is_refused_whole() {
    let mut queue = FrameQueue::default();
    let small = ServerMessage::Closing { reason: "x".into() };
    queue.push(&small).expect("queues");
    let huge = ServerMessage::Outgoing(OutgoingServer::Data {
        conn: ConnectionId(1),
        data: Bytes::from(vec![0; MAX_FRAME_LEN]),
    });
    assert!(matches!(
        queue.push(&huge),
        Err(CodecError::FrameTooLarge { .. })
    ));
    assert_eq!(drain(&mut queue, usize::MAX, 64), frame_of(&small));
}

/// The agent link's decoder gives the plain decoder's messages, whatever
/// pieces the stream arrives in, and a large data message's bytes stay in
/// the buffer they were read into.
#[cfg(feature = "tokio-codec")]
mod link_codec {
    use super::*;
    use crate::codec::{FrameCodec, LinkCodec};
    use tokio_util::codec::Decoder;

    /// Decode `stream` read in pieces of `sizes` (cycled) with `codec`.
    fn decode_in_pieces<D>(mut codec: D, stream: &[u8], sizes: &[usize]) -> Vec<ServerMessage>
    where
        D: Decoder<Item = ServerMessage, Error = CodecError>,
    {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at == stream.len() {
                break;
            }
            let end = (at + size).min(stream.len());
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            while let Some(msg) = codec.decode(&mut buf).expect("decodes") {
                out.push(msg);
            }
        }
        assert!(buf.is_empty(), "no bytes left over");
        out
    }

    #[test]
    fn a_split_stream_decodes_like_the_frame_codec() {
        fn cases() -> impl Strategy<Value = (Vec<ServerMessage>, Vec<usize>)> {
            (
                proptest::collection::vec(server_message(), 1..8),
                proptest::collection::vec(1..100_000usize, 1..6),
            )
        }
        property(64, cases, |(msgs, sizes)| {
            let mut stream = Vec::new();
            for msg in &msgs {
                stream.extend_from_slice(&frame_of(msg));
            }
            let plain = FrameCodec::<ServerMessage, ()>::default();
            let linked = LinkCodec::<ServerMessage, ()>::default();
            prop_assert_eq!(&decode_in_pieces(plain, &stream, &sizes), &msgs);
            prop_assert_eq!(&decode_in_pieces(linked, &stream, &sizes), &msgs);
            Ok(())
        });
    }

    #[test]
    fn a_large_data_payload_is_not_copied_out_of_the_read_buffer() {
        let msg = ServerMessage::Outgoing(OutgoingServer::Data {
            conn: ConnectionId(9),
            data: Bytes::from(vec![5; MAX_CHUNK]),
        });
        let mut buf = BytesMut::from(&frame_of(&msg)[..]);
        let range = buf.as_ptr_range();
        let decoded = LinkCodec::<ServerMessage, ()>::default()
            .decode(&mut buf)
            .expect("decodes")
            .expect("whole");
        let Some((_, _, data)) = decoded.data_parts() else {
            panic!("not a data message: {decoded:?}");
        };
        assert!(range.contains(&data.as_ptr()));
        assert_eq!(decoded, msg);
    }
}
