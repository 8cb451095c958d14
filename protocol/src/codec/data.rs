//! Stream-data messages framed without copying their payload.
//!
//! A data message of the agent link (`Outgoing(Data)` and `Incoming(Data)`,
//! either direction) encodes as bincode varints of its outer variant, its
//! inner variant, its connection id and its payload's length, followed by
//! the payload: the payload is the tail of the encoding. So a writer can
//! send it as its own buffer behind the encoded prefix ([`FrameQueue`], a
//! vectored write instead of a copy), and a reader can hand it on as a
//! slice of the frame it arrived in ([`split_data`]). Both give and take
//! exactly the bytes of [`super::encode`] and [`super::decode`]; the
//! property tests compare them for every message.

use super::{CodecError, HEADER_LEN, MAX_FRAME_LEN, config, encode_frame_into};
use crate::incoming::{IncomingClient, IncomingServer};
use crate::outgoing::{MAX_CHUNK, OutgoingClient, OutgoingServer};
use crate::{ClientMessage, ConnectionId, ServerMessage};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::IoSlice;

/// Payloads from this size on travel as their own buffer. A smaller one is
/// copied: cheaper than a buffer of its own, and a small slice must not
/// keep a big read buffer alive (the same bound as the agent's chunks).
pub const SHARED_MIN: usize = MAX_CHUNK / 2;

/// The chunk just read into `buf`, leaving `buf` empty: a chunk of at least
/// [`SHARED_MIN`] keeps the buffer it was read into (no copy; the
/// allocation is reused once the chunk is dropped), a smaller one is copied
/// out, so that the memory a stream's queued chunks hold stays within twice
/// the bytes its credit allows. For readers of at most [`MAX_CHUNK`] per
/// read (the agent's pump, the intproxy's outgoing streams).
pub fn take_chunk(buf: &mut BytesMut) -> Bytes {
    if buf.len() >= SHARED_MIN {
        buf.split().freeze()
    } else {
        let chunk = Bytes::copy_from_slice(buf);
        buf.clear();
        chunk
    }
}

/// The variant indices (outer, inner) of a data message.
pub type DataTags = (u32, u32);

/// Longest prefix of a data message: two `u32` and two `u64` varints.
const MAX_PREFIX: usize = 5 + 5 + 9 + 9;

/// A message type of the agent link, whose stream-data messages can be
/// framed around their payload.
pub trait DataMessage: Serialize + serde::de::DeserializeOwned {
    /// The tags, connection and payload of a data message; `None` for
    /// every other message.
    fn data_parts(&self) -> Option<(DataTags, ConnectionId, &Bytes)>;
    /// The data message with these tags, if there is one.
    fn from_data_parts(tags: DataTags, conn: ConnectionId, data: Bytes) -> Option<Self>;
}

/// `Outgoing(Data)`: the second variant of both the link's enum and the
/// outgoing one.
const OUTGOING_DATA: DataTags = (1, 1);
/// `Incoming(Data)`: the third variant of both.
const INCOMING_DATA: DataTags = (2, 2);

impl DataMessage for ServerMessage {
    fn data_parts(&self) -> Option<(DataTags, ConnectionId, &Bytes)> {
        match self {
            ServerMessage::Outgoing(OutgoingServer::Data { conn, data }) => {
                Some((OUTGOING_DATA, *conn, data))
            }
            ServerMessage::Incoming(IncomingServer::Data { conn, data }) => {
                Some((INCOMING_DATA, *conn, data))
            }
            _ => None,
        }
    }

    fn from_data_parts(tags: DataTags, conn: ConnectionId, data: Bytes) -> Option<Self> {
        match tags {
            OUTGOING_DATA => Some(ServerMessage::Outgoing(OutgoingServer::Data { conn, data })),
            INCOMING_DATA => Some(ServerMessage::Incoming(IncomingServer::Data { conn, data })),
            _ => None,
        }
    }
}

impl DataMessage for ClientMessage {
    fn data_parts(&self) -> Option<(DataTags, ConnectionId, &Bytes)> {
        match self {
            ClientMessage::Outgoing(OutgoingClient::Data { conn, data }) => {
                Some((OUTGOING_DATA, *conn, data))
            }
            ClientMessage::Incoming(IncomingClient::Data { conn, data }) => {
                Some((INCOMING_DATA, *conn, data))
            }
            _ => None,
        }
    }

    fn from_data_parts(tags: DataTags, conn: ConnectionId, data: Bytes) -> Option<Self> {
        match tags {
            OUTGOING_DATA => Some(ClientMessage::Outgoing(OutgoingClient::Data { conn, data })),
            INCOMING_DATA => Some(ClientMessage::Incoming(IncomingClient::Data { conn, data })),
            _ => None,
        }
    }
}

/// Where the payload of a data message starts in its encoding `payload`
/// (a frame without header), when it is a data message of `T` whose data
/// is at least [`SHARED_MIN`] bytes and runs exactly to the end. `None`
/// for anything else, which [`super::decode`] then decodes (or refuses).
pub fn split_data<T: DataMessage>(payload: &[u8]) -> Option<(DataTags, ConnectionId, usize)> {
    if payload.len() < SHARED_MIN {
        return None;
    }
    let head = &payload[..MAX_PREFIX];
    let ((outer, inner, conn, len), used): ((u32, u32, ConnectionId, u64), usize) =
        bincode::serde::decode_from_slice(head, config()).ok()?;
    let tags = (outer, inner);
    // Only the tags of `T`'s data messages; `len` must cover the rest.
    T::from_data_parts(tags, conn, Bytes::new())?;
    let len = usize::try_from(len).ok()?;
    (len >= SHARED_MIN && payload.len().checked_sub(used)? == len).then_some((tags, conn, used))
}

/// Decode a frame's `payload`: a large data message's data is a slice of
/// `payload` (no copy), anything else is [`super::decode`]d.
pub fn decode_shared<T: DataMessage>(payload: Bytes) -> Result<T, CodecError> {
    match split_data::<T>(&payload) {
        Some((tags, conn, start)) => T::from_data_parts(tags, conn, payload.slice(start..))
            .ok_or_else(|| CodecError::Decode("not a data message".into())),
        None => super::decode(&payload),
    }
}

/// Frames queued for a socket, as a [`Buf`] whose chunks are the encoded
/// bytes and, between them, the payloads of large data messages as they
/// are (so `chunks_vectored` gives one vectored write for a batch, and no
/// payload is copied). Small messages are encoded into one buffer.
#[derive(Debug, Default)]
pub struct FrameQueue {
    /// Chunks in write order; the front one may be partly written.
    chunks: VecDeque<Bytes>,
    /// Encoded bytes after the last chunk.
    tail: BytesMut,
    /// Bytes in `chunks`.
    in_chunks: usize,
}

impl FrameQueue {
    /// Queue the frame of `msg`.
    ///
    /// # Errors
    /// [`CodecError::Encode`] or [`CodecError::FrameTooLarge`]; nothing of
    /// `msg` is queued then.
    pub fn push<T: DataMessage>(&mut self, msg: &T) -> Result<(), CodecError> {
        if let Some((tags, conn, data)) = msg.data_parts()
            && data.len() >= SHARED_MIN
        {
            let mut prefix = [0u8; MAX_PREFIX];
            let used = bincode::serde::encode_into_slice(
                (tags.0, tags.1, conn, data.len() as u64),
                &mut prefix,
                config(),
            )
            .map_err(|e| CodecError::Encode(e.to_string()))?;
            let len = used + data.len();
            if len > MAX_FRAME_LEN {
                return Err(CodecError::FrameTooLarge {
                    len,
                    max: MAX_FRAME_LEN,
                });
            }
            self.tail.reserve(HEADER_LEN + used);
            // Cannot truncate: `len` is at most MAX_FRAME_LEN < u32::MAX.
            self.tail.put_u32(len as u32);
            self.tail.put_slice(&prefix[..used]);
            let encoded = self.tail.split().freeze();
            self.in_chunks += encoded.len() + data.len();
            self.chunks.push_back(encoded);
            self.chunks.push_back(data.clone());
            return Ok(());
        }
        encode_frame_into(msg, &mut self.tail)
    }
}

impl Buf for FrameQueue {
    fn remaining(&self) -> usize {
        self.in_chunks + self.tail.len()
    }

    fn chunk(&self) -> &[u8] {
        match self.chunks.front() {
            Some(front) => front,
            None => &self.tail,
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        let chunks = self.chunks.iter().map(|c| &c[..]);
        for chunk in chunks.chain(std::iter::once(&self.tail[..])) {
            if filled == dst.len() {
                break;
            }
            if !chunk.is_empty() {
                dst[filled] = IoSlice::new(chunk);
                filled += 1;
            }
        }
        filled
    }

    fn advance(&mut self, mut cnt: usize) {
        while let Some(front) = self.chunks.front_mut() {
            if cnt < front.len() {
                front.advance(cnt);
                self.in_chunks -= cnt;
                return;
            }
            cnt -= front.len();
            self.in_chunks -= front.len();
            self.chunks.pop_front();
        }
        assert!(cnt <= self.tail.len(), "advanced past the queued frames");
        self.tail.advance(cnt);
    }
}

#[cfg(test)]
mod tests;
