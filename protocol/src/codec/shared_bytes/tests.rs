use super::*;
use crate::ConnectionId;
use crate::outgoing::OutgoingServer;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Plain {
    data: Bytes,
}

#[derive(Serialize, Deserialize)]
struct Shared {
    #[serde(with = "super")]
    data: Bytes,
}

fn data_of(msg: OutgoingServer) -> Bytes {
    match msg {
        OutgoingServer::Data { data, .. } => data,
        other => panic!("decoded as {other:?}"),
    }
}

fn lies_in(part: &Bytes, frame: &Bytes) -> bool {
    within(frame, part)
}

#[test]
fn the_wire_format_is_bytes_own() {
    for len in [0, 1, 127, 128, SHARE_MIN, 70_000] {
        let data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
        let plain = crate::codec::encode(&Plain { data: data.clone() }).unwrap();
        let shared = crate::codec::encode(&Shared { data: data.clone() }).unwrap();
        assert_eq!(plain, shared, "{len} bytes");
        let back: Shared = crate::codec::decode(&plain).unwrap();
        assert_eq!(back.data, data);
    }
}

#[test]
fn a_large_chunk_is_a_slice_of_its_frame_and_a_small_one_a_copy() {
    let conn = ConnectionId(7);
    let big = Bytes::from(vec![0xAB; SHARE_MIN + 1]);
    let frame = Bytes::from(
        crate::codec::encode(&OutgoingServer::Data {
            conn,
            data: big.clone(),
        })
        .unwrap(),
    );
    let data = data_of(decode_shared(frame.clone()).unwrap());
    assert_eq!(data, big);
    assert!(lies_in(&data, &frame), "the large chunk was copied");

    let small = Bytes::from_static(b"a few bytes");
    let frame = Bytes::from(
        crate::codec::encode(&OutgoingServer::Data {
            conn,
            data: small.clone(),
        })
        .unwrap(),
    );
    let data = data_of(decode_shared(frame.clone()).unwrap());
    assert_eq!(data, small);
    assert!(!lies_in(&data, &frame), "a small chunk holds its frame");
}

#[test]
fn trailing_bytes_and_garbage_are_errors_and_leave_no_frame_behind() {
    let conn = ConnectionId(1);
    let mut payload = crate::codec::encode(&OutgoingServer::ShutdownWrite { conn }).unwrap();
    payload.push(0);
    assert!(matches!(
        decode_shared::<OutgoingServer>(Bytes::from(payload)),
        Err(CodecError::TrailingBytes(1))
    ));
    assert!(decode_shared::<OutgoingServer>(Bytes::from_static(&[0xFF; 3])).is_err());
    assert!(FRAME.with(|frame| frame.borrow().is_none()));
}
