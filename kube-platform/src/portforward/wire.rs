//! The client side of a port-forward WebSocket's framing (RFC 6455) and of
//! the `v4.channel.k8s.io` channel protocol on top, decoded in place from
//! the connection's read buffer.
//!
//! The download direction is remora's bulk path through a port-forward, so
//! it does not go through tungstenite: there every message was read into a
//! read buffer zeroed before each read, copied into the message's own `Vec`
//! and then copied again by the reader. Here a data frame's payload is
//! handed out as a slice of the read buffer ([`Event::Data`]), and the
//! reader copies it once, into its own buffer.
//!
//! What the decoder checks, as RFC 6455 asks of a client: no reserved bits
//! (no extension is negotiated), known opcodes only, control frames whole
//! and at most 125 bytes, continuation frames only inside a fragmented
//! message, and no masked frame from the server. Frames the client sends
//! are masked with a fresh random key each ([`encode`]).

use bytes::{Buf, BufMut, BytesMut};

/// Opcodes (RFC 6455 section 5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
pub(super) const BINARY: u8 = 0x2;
pub(super) const CLOSE_FRAME: u8 = 0x8;
const PING: u8 = 0x9;
pub(super) const PONG: u8 = 0xA;

/// The largest payload of a control frame.
const MAX_CONTROL: usize = 125;

/// The largest message collected whole (a port announcement, an error
/// channel's `Status`, a v5 close): anything longer is a broken server.
const MAX_COLLECTED: usize = 64 * 1024;

/// The data channel of the one forwarded port.
pub(super) const DATA: u8 = 0;
/// Its error channel.
pub(super) const ERROR: u8 = 1;
/// `v5.channel.k8s.io`'s close signal (kube-rs offers v5 first): a message
/// on it names the channel that was closed.
pub(super) const CLOSE_CHANNEL: u8 = 255;

/// One frame header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
}

/// Parse the header at the front of `buf`: `None` when `buf` does not hold
/// all of it yet, else the header and its length in bytes.
fn parse_header(buf: &[u8]) -> Result<Option<(Header, usize)>, String> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err("a frame with reserved bits set (no extension was negotiated)".into());
    }
    if second & 0x80 != 0 {
        return Err("a masked frame from the server".into());
    }
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0F;
    let (len, header_len) = match second & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err("a frame length with its top bit set".into());
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    match opcode {
        CONTINUATION | TEXT | BINARY => {}
        CLOSE_FRAME | PING | PONG => {
            if !fin || len > MAX_CONTROL as u64 {
                return Err(format!(
                    "a control frame (opcode {opcode:#x}) fragmented or over {MAX_CONTROL} bytes"
                ));
            }
        }
        other => return Err(format!("a frame with the unknown opcode {other:#x}")),
    }
    Ok(Some((Header { fin, opcode, len }, header_len)))
}

/// What the decoder found at the front of the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// The first `n` bytes of the buffer (`n > 0`) are the pod's: copy out
    /// as many as wanted and hand their count to [`Decoder::consume`].
    Data(usize),
    /// The server pinged: answer with a pong of this payload.
    Ping(Vec<u8>),
    /// The server closed the WebSocket (its close frame's payload).
    Close(Vec<u8>),
    /// The pod's side of the port ended (v5's close of the data channel).
    End,
    /// Nothing whole yet: read more into the buffer.
    NeedMore,
}

/// Why decoding stopped for good.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// The server wrote on the error channel (nothing listens on the port).
    Refused(String),
    /// The server broke the framing or the channel protocol.
    Broken(String),
}

/// Where the decoder is in the message being read.
#[derive(Debug)]
enum Message {
    /// Between messages.
    Idle,
    /// A binary message whose channel byte is still to come.
    Channel,
    /// The data channel's bytes, handed out as they come.
    Data,
    /// A short message collected whole, evaluated at its end: a port
    /// announcement, an error, a v5 close.
    Collect(u8, Vec<u8>),
    /// A message for nobody (text), passed over.
    Skip,
}

/// The incremental decoder of the server's frames: fed the connection's
/// read buffer, it says what is at its front and consumes what it passed.
#[derive(Debug)]
pub(super) struct Decoder {
    port: u16,
    /// Payload bytes left in the current data frame and whether it ends its
    /// message; `None` between frames.
    frame: Option<(u64, bool)>,
    message: Message,
    /// Which channels announced their port yet (data, error).
    opened: [bool; 2],
}

impl Decoder {
    /// A decoder for a forward of `port` (each channel's first message must
    /// announce it).
    pub(super) fn new(port: u16) -> Self {
        Decoder {
            port,
            frame: None,
            message: Message::Idle,
            opened: [false; 2],
        }
    }

    /// The next event at the front of `buf`, consuming the framing before it.
    pub(super) fn next(&mut self, buf: &mut BytesMut) -> Result<Event, Failure> {
        loop {
            let Some((left, fin)) = self.frame else {
                let Some((header, header_len)) = parse_header(buf).map_err(Failure::Broken)? else {
                    return Ok(Event::NeedMore);
                };
                if header.opcode & 0x8 != 0 {
                    // A control frame, possibly between a message's fragments.
                    // The header check bounded `len` by `MAX_CONTROL`.
                    let len = header.len as usize;
                    if buf.len() < header_len + len {
                        return Ok(Event::NeedMore);
                    }
                    buf.advance(header_len);
                    let payload = buf.split_to(len).to_vec();
                    match header.opcode {
                        PING => return Ok(Event::Ping(payload)),
                        CLOSE_FRAME => return Ok(Event::Close(payload)),
                        _ => continue,
                    }
                }
                let idle = matches!(self.message, Message::Idle);
                self.message = match (header.opcode, idle) {
                    (CONTINUATION, true) => {
                        return Err(Failure::Broken(
                            "a continuation frame outside a message".into(),
                        ));
                    }
                    (CONTINUATION, false) => std::mem::replace(&mut self.message, Message::Idle),
                    (BINARY, true) => Message::Channel,
                    (_, true) => Message::Skip,
                    _ => {
                        return Err(Failure::Broken(
                            "a new message inside a fragmented one".into(),
                        ));
                    }
                };
                buf.advance(header_len);
                self.frame = Some((header.len, header.fin));
                continue;
            };
            if left == 0 {
                self.frame = None;
                if fin {
                    match self.end_of_message()? {
                        Some(event) => return Ok(event),
                        None => continue,
                    }
                }
                continue;
            }
            if buf.is_empty() {
                return Ok(Event::NeedMore);
            }
            // Fits: bounded by `buf.len()`.
            let available = left.min(buf.len() as u64) as usize;
            match &mut self.message {
                Message::Channel => {
                    let channel = buf[0];
                    buf.advance(1);
                    self.frame = Some((left - 1, fin));
                    self.message = match channel {
                        DATA if self.opened[0] => Message::Data,
                        DATA | ERROR | CLOSE_CHANNEL => Message::Collect(channel, Vec::new()),
                        other => {
                            return Err(Failure::Broken(format!("a message on channel {other}")));
                        }
                    };
                }
                Message::Data => return Ok(Event::Data(available)),
                Message::Collect(_, collected) => {
                    if collected.len() + available > MAX_COLLECTED {
                        return Err(Failure::Broken(format!(
                            "a control-channel message over {MAX_COLLECTED} bytes"
                        )));
                    }
                    collected.extend_from_slice(&buf[..available]);
                    buf.advance(available);
                    self.frame = Some((left - available as u64, fin));
                }
                Message::Skip | Message::Idle => {
                    buf.advance(available);
                    self.frame = Some((left - available as u64, fin));
                }
            }
        }
    }

    /// Between messages: the connection may end here cleanly.
    pub(super) fn idle(&self) -> bool {
        self.frame.is_none() && matches!(self.message, Message::Idle)
    }

    /// `n` bytes of an [`Event::Data`] were copied out of `buf`.
    pub(super) fn consume(&mut self, buf: &mut BytesMut, n: usize) {
        if let Some((left, fin)) = self.frame {
            let n = n
                .min(buf.len())
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            buf.advance(n);
            self.frame = Some((left - n as u64, fin));
        }
    }

    /// The current message ended: what it meant, if anything for the reader.
    fn end_of_message(&mut self) -> Result<Option<Event>, Failure> {
        let (channel, collected) = match std::mem::replace(&mut self.message, Message::Idle) {
            Message::Collect(channel, collected) => (channel, collected),
            // An empty binary message, the end of a data message or of a
            // skipped one.
            _ => return Ok(None),
        };
        if channel == CLOSE_CHANNEL {
            // v5 (no Kubernetes server picks it for port-forward: see
            // docs/kubernetes.md): the server closed a channel.
            return Ok((collected.first() == Some(&DATA)).then_some(Event::End));
        }
        let seen = &mut self.opened[usize::from(channel)];
        if !*seen {
            let announced = <[u8; 2]>::try_from(&collected[..])
                .ok()
                .map(u16::from_le_bytes);
            if announced != Some(self.port) {
                return Err(Failure::Broken(format!(
                    "channel {channel} opened for port {announced:?}, not {}",
                    self.port
                )));
            }
            *seen = true;
            return Ok(None);
        }
        // Only the error channel is collected once open.
        Err(Failure::Refused(
            String::from_utf8_lossy(&collected).into_owned(),
        ))
    }
}

/// Append one masked, unfragmented client frame to `out`: `opcode`, and as
/// payload `channel` (when given) followed by `payload`.
pub(super) fn encode(
    out: &mut BytesMut,
    opcode: u8,
    channel: Option<u8>,
    payload: &[u8],
    mask: [u8; 4],
) {
    let len = payload.len() + usize::from(channel.is_some());
    out.reserve(14 + len);
    out.put_u8(0x80 | opcode);
    if len < 126 {
        // Fits: below 126.
        out.put_u8(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.put_u8(0x80 | 126);
        out.put_u16(short);
    } else {
        out.put_u8(0x80 | 127);
        out.put_u64(len as u64);
    }
    out.put_slice(&mask);
    let start = out.len();
    if let Some(channel) = channel {
        out.put_u8(channel);
    }
    out.put_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XOR `buf` with the repeated `mask` (RFC 6455 section 5.3), eight bytes
/// at a time.
pub(super) fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the mask starts over.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests;
