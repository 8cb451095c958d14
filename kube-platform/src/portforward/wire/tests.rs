use super::*;
use proptest::prelude::*;

const PORT: u16 = 4242;

/// A server frame (unmasked) as RFC 6455 lays it out, written independently
/// of [`encode`].
fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A binary message on `channel` in fragments cut at `cuts` (offsets into
/// the payload, the channel byte included), as frames: each one's bytes.
fn fragments(channel: u8, payload: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut whole = vec![channel];
    whole.extend_from_slice(payload);
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (whole.len() + 1)).collect();
    ends.push(whole.len());
    ends.sort_unstable();
    ends.dedup();
    let mut frames = Vec::new();
    let mut start = 0;
    for end in ends {
        // The first frame opens the message, even an empty one.
        let opcode = if frames.is_empty() {
            BINARY
        } else {
            CONTINUATION
        };
        frames.push(server_frame(end == whole.len(), opcode, &whole[start..end]));
        start = end;
    }
    frames
}

fn message(channel: u8, payload: &[u8], cuts: &[usize]) -> Vec<u8> {
    fragments(channel, payload, cuts).concat()
}

fn announcements() -> Vec<u8> {
    let mut out = message(DATA, &PORT.to_le_bytes(), &[]);
    out.extend(message(ERROR, &PORT.to_le_bytes(), &[]));
    out
}

/// What the decoder gives for `wire` fed in pieces cut at `splits` (each
/// piece appended to the buffer as a read would), data copied out at most
/// `take` bytes at a time: the data, the pings, and how it ended.
type Decoded = (Vec<u8>, Vec<Vec<u8>>, Option<Result<Event, Failure>>);

fn decode_in_pieces(wire: &[u8], splits: &[usize], take: usize) -> Decoded {
    let mut ends: Vec<usize> = splits.iter().map(|s| s % (wire.len() + 1)).collect();
    ends.push(wire.len());
    ends.sort_unstable();
    let mut decoder = Decoder::new(PORT);
    let mut buf = BytesMut::new();
    let (mut data, mut pings) = (Vec::new(), Vec::new());
    let mut fed = 0;
    for end in ends {
        buf.extend_from_slice(&wire[fed..end]);
        fed = end;
        loop {
            match decoder.next(&mut buf) {
                Ok(Event::Data(n)) => {
                    assert!(n > 0 && n <= buf.len());
                    let n = n.min(take);
                    data.extend_from_slice(&buf[..n]);
                    decoder.consume(&mut buf, n);
                }
                Ok(Event::Ping(p)) => pings.push(p),
                Ok(Event::NeedMore) => break,
                other => return (data, pings, Some(other)),
            }
        }
    }
    (data, pings, None)
}

proptest! {
    /// Arbitrary data messages, fragmented anywhere, with pings between
    /// their fragments and text messages between them, read in arbitrary
    /// pieces: the same bytes in the same order, and every ping.
    #[test]
    fn arbitrary_splits_of_frames_across_reads_give_the_same_bytes(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..70_000), 0..6),
        cuts in prop::collection::vec(prop::collection::vec(any::<usize>(), 0..4), 6),
        splits in prop::collection::vec(any::<usize>(), 0..40),
        take in 1usize..100_000,
    ) {
        let mut wire = announcements();
        let mut expected = Vec::new();
        let mut expected_pings = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let mut frames = fragments(DATA, payload, &cuts[i]).into_iter();
            // Control frames may sit between a message's fragments.
            wire.extend(frames.next().expect("a message has a frame"));
            let ping = vec![i as u8; i * 20];
            wire.extend(server_frame(true, PING, &ping));
            expected_pings.push(ping);
            for frame in frames {
                wire.extend(frame);
            }
            wire.extend(server_frame(true, TEXT, b"not data"));
            expected.extend_from_slice(payload);
        }
        let (data, pings, end) = decode_in_pieces(&wire, &splits, take);
        prop_assert!(end.is_none(), "ended early: {:?}", end);
        prop_assert_eq!(data.len(), expected.len());
        prop_assert!(data == expected);
        prop_assert_eq!(pings, expected_pings);
    }

    /// Masking twice gives the bytes back, and matches the byte-by-byte rule
    /// of RFC 6455 section 5.3 at every length.
    #[test]
    fn masking_is_the_rfcs_byte_by_byte_xor(
        data in prop::collection::vec(any::<u8>(), 0..300),
        mask in any::<[u8; 4]>(),
    ) {
        let mut masked = data.clone();
        apply_mask(&mut masked, mask);
        let by_rule: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        prop_assert_eq!(&masked, &by_rule);
        apply_mask(&mut masked, mask);
        prop_assert_eq!(masked, data);
    }

    /// What the client encodes, a server unmasks to the channel byte and the
    /// payload, at every length class (7-bit, 16-bit and 64-bit lengths).
    #[test]
    fn encoded_frames_are_masked_and_carry_the_channel_and_payload(
        len in prop_oneof![0usize..130, 65_530usize..65_540, 70_000usize..70_010],
        mask in any::<[u8; 4]>(),
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut out = BytesMut::new();
        encode(&mut out, BINARY, Some(DATA), &payload, mask);
        prop_assert_eq!(out[0], 0x80 | BINARY);
        prop_assert!(out[1] & 0x80 != 0, "client frames are masked");
        let (len_field, header_len) = match out[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([out[2], out[3]])), 4),
            127 => {
                let mut be = [0; 8];
                be.copy_from_slice(&out[2..10]);
                (u64::from_be_bytes(be), 10)
            }
            n => (u64::from(n), 2),
        };
        prop_assert_eq!(len_field as usize, len + 1);
        prop_assert_eq!(&out[header_len..header_len + 4], &mask[..]);
        let mut body = out[header_len + 4..].to_vec();
        apply_mask(&mut body, mask);
        prop_assert_eq!(body[0], DATA);
        prop_assert!(body[1..] == payload[..]);
    }
}

fn decode_all(wire: &[u8]) -> Result<Event, Failure> {
    let mut decoder = Decoder::new(PORT);
    let mut buf = BytesMut::from(wire);
    loop {
        match decoder.next(&mut buf)? {
            Event::Data(n) => decoder.consume(&mut buf, n),
            Event::Ping(_) => {}
            other => return Ok(other),
        }
    }
}

fn broken(wire: &[u8]) -> String {
    match decode_all(wire) {
        Err(Failure::Broken(reason)) => reason,
        other => panic!("expected a broken framing, got {other:?}"),
    }
}

#[test]
fn frames_a_client_must_refuse_are_broken() {
    // Masked (a server must not mask).
    assert!(broken(&[0x82, 0x80 | 1, 0, 0, 0, 0, DATA]).contains("masked"));
    // A reserved bit without an extension.
    assert!(broken(&[0xC2, 1, DATA]).contains("reserved"));
    // An unknown opcode.
    assert!(broken(&[0x83, 0]).contains("opcode"));
    // A fragmented or oversized control frame.
    assert!(broken(&[0x09, 0]).contains("control"));
    let mut big_ping = vec![0x89, 126, 0, 126];
    big_ping.extend([0; 126]);
    assert!(broken(&big_ping).contains("control"));
    // A continuation with no message, a message inside a message.
    assert!(broken(&[0x80, 1, 0]).contains("continuation"));
    assert!(broken(&[0x02, 1, DATA, 0x82, 1, DATA]).contains("inside"));
    // A channel the forward of one port does not have.
    assert!(broken(&[0x82, 1, 7]).contains("channel 7"));
    // A 64-bit length with its top bit set.
    assert!(broken(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]).contains("top bit"));
}

#[test]
fn the_port_announcements_must_name_the_forwarded_port() {
    let wire = message(DATA, &(PORT + 1).to_le_bytes(), &[]);
    assert!(broken(&wire).contains("not 4242"));
    let wire = message(DATA, &[1, 2, 3], &[]);
    assert!(broken(&wire).contains("None"));
}

#[test]
fn an_error_channel_message_is_refused_and_a_v5_close_of_data_ends() {
    let mut wire = announcements();
    wire.extend(message(ERROR, b"connection refused", &[5]));
    assert_eq!(
        decode_all(&wire),
        Err(Failure::Refused("connection refused".into()))
    );
    let mut wire = announcements();
    wire.extend(message(CLOSE_CHANNEL, &[ERROR], &[]));
    wire.extend(message(CLOSE_CHANNEL, &[DATA], &[]));
    assert_eq!(decode_all(&wire), Ok(Event::End));
}

#[test]
fn a_close_frame_is_reported_with_its_payload_and_data_before_it_is_not_lost() {
    let mut wire = announcements();
    wire.extend(message(DATA, b"last", &[]));
    wire.extend(server_frame(true, CLOSE_FRAME, &1001u16.to_be_bytes()));
    let (data, _, end) = decode_in_pieces(&wire, &[3, 9], 2);
    assert_eq!(data, b"last");
    assert_eq!(end, Some(Ok(Event::Close(1001u16.to_be_bytes().to_vec()))));
}
