//! Fuzzes the frame decoder with every top-level message type: any input must
//! give a message, "need more bytes" or a typed error, never a panic, a hang or
//! an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora_protocol::codec;
use remora_protocol::{ClientMessage, LayerMessage, ProxyMessage, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode_frame::<ClientMessage>(data);
    let _ = codec::decode_frame::<ServerMessage>(data);
    let _ = codec::decode_frame::<LayerMessage>(data);
    let _ = codec::decode_frame::<ProxyMessage>(data);
    let _ = codec::read_frame::<_, ServerMessage>(&mut &data[..]);
    // Whatever decodes must re-encode and decode to the same value.
    if let Ok(Some((msg, _))) = codec::decode_frame::<ClientMessage>(data) {
        let mut again = Vec::new();
        codec::encode_frame(&msg, &mut again).expect("a decoded message re-encodes");
        let (back, _) = codec::decode_frame::<ClientMessage>(&again).unwrap().unwrap();
        assert_eq!(back, msg);
    }
});
