//! The wire format: bincode payloads in length-prefixed frames.
//!
//! A frame is a big-endian `u32` payload length followed by the payload. A
//! length above [`MAX_FRAME_LEN`] is refused before anything is allocated, and
//! bincode decoding is bounded by the same limit, so hostile or corrupt input
//! produces a [`CodecError`], never a panic or an unbounded allocation.
//!
//! bincode is only ever named in this module and [`data`]: swapping the
//! format means changing [`encode`], [`decode`] and [`data`]'s prefixes.

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{Read, Write};

pub mod data;

pub use data::{DataMessage, FrameQueue};

/// Hard upper bound of one frame's payload. Data streams are chunked far below
/// it ([`crate::outgoing::MAX_CHUNK`]).
pub const MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be read, written, encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame truncated: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("frame has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("unencodable message: {0}")]
    Encode(String),
    #[error("connection closed")]
    Closed,
    #[error("i/o error on the connection")]
    Io(#[source] std::io::Error),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encode a message payload (without frame header).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let payload = bincode::serde::encode_to_vec(msg, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge {
            len: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    Ok(payload)
}

/// Decode a whole payload; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::TrailingBytes(payload.len() - used));
    }
    Ok(msg)
}

/// Append a complete frame (header + payload) to `out`.
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let payload = encode(msg)?;
    // Cannot truncate: encode() refused payloads above MAX_FRAME_LEN < u32::MAX.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Append a complete frame (header + payload) to `dst`, encoding straight
/// into it behind a header written last: no intermediate buffer. On an
/// error `dst` is left as it was.
pub fn encode_frame_into<T: Serialize>(msg: &T, dst: &mut BytesMut) -> Result<(), CodecError> {
    let start = dst.len();
    dst.put_bytes(0, HEADER_LEN);
    let mut writer = dst.writer();
    let written = bincode::serde::encode_into_std_write(msg, &mut writer, config());
    let dst = writer.into_inner();
    let len = match written {
        Ok(len) if len <= MAX_FRAME_LEN => len,
        Ok(len) => {
            dst.truncate(start);
            return Err(CodecError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        Err(e) => {
            dst.truncate(start);
            return Err(CodecError::Encode(e.to_string()));
        }
    };
    // Cannot truncate: `len` is at most MAX_FRAME_LEN < u32::MAX.
    dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Read the length in a frame header, checking the limit.
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Try to decode one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not hold a whole frame yet, or the
/// message and the number of bytes it used.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, CodecError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(header);
    let len = frame_len(h)?;
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode(payload)?, HEADER_LEN + len)))
}

/// Write one frame to a blocking writer (and flush it).
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), CodecError> {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf)?;
    w.write_all(&buf).map_err(CodecError::Io)?;
    w.flush().map_err(CodecError::Io)
}

/// Read one frame from a blocking reader. A clean end of stream before a new
/// frame starts is [`CodecError::Closed`].
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, CodecError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact_or_closed(r, &mut header, true)?;
    let len = frame_len(header)?;
    let mut payload = vec![0u8; len];
    read_exact_or_closed(r, &mut payload, false)?;
    decode(&payload)
}

fn read_exact_or_closed<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    at_boundary: bool,
) -> Result<(), CodecError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 && at_boundary => return Err(CodecError::Closed),
            Ok(0) => {
                return Err(CodecError::Truncated {
                    expected: buf.len(),
                    got,
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CodecError::Io(e)),
        }
    }
    Ok(())
}

#[cfg(feature = "tokio-codec")]
pub use self::tokio_codec::{FrameCodec, LinkCodec};

#[cfg(feature = "tokio-codec")]
mod tokio_codec {
    //! `tokio_util::codec` adapter for the frame format.
    use super::*;
    use bytes::{Buf, BytesMut};
    use std::marker::PhantomData;

    /// Decodes `In` frames and encodes `Out` frames.
    #[derive(Debug)]
    pub struct FrameCodec<In, Out> {
        _types: PhantomData<fn(Out) -> In>,
    }

    impl<In, Out> Default for FrameCodec<In, Out> {
        fn default() -> Self {
            Self {
                _types: PhantomData,
            }
        }
    }

    impl<In: DeserializeOwned, Out> tokio_util::codec::Decoder for FrameCodec<In, Out> {
        type Item = In;
        type Error = CodecError;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
            let Some(len) = whole_frame(src, 0)? else {
                return Ok(None);
            };
            let msg = super::decode(&src[HEADER_LEN..HEADER_LEN + len])?;
            src.advance(HEADER_LEN + len);
            Ok(Some(msg))
        }
    }

    /// The payload length of the whole frame at the front of `src`, or
    /// `None` after making room for the rest of it (and for at least
    /// `room` bytes).
    fn whole_frame(src: &mut BytesMut, room: usize) -> Result<Option<usize>, CodecError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&src[..HEADER_LEN]);
        let len = frame_len(h)?;
        if src.len() < HEADER_LEN + len {
            let missing = HEADER_LEN + len - src.len();
            if src.capacity() - src.len() < missing {
                src.reserve(missing.max(room));
            }
            return Ok(None);
        }
        Ok(Some(len))
    }

    impl<In, Out: Serialize> tokio_util::codec::Encoder<Out> for FrameCodec<In, Out> {
        type Error = CodecError;

        /// Encodes the payload straight into `dst` behind a header written
        /// last: no intermediate buffer, one copy of a data message's bytes.
        fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
            encode_frame_into(&item, dst)
        }
    }

    /// Bytes a [`LinkCodec`] makes room for when a frame is incomplete:
    /// several data frames, which then share one buffer.
    const LINK_READ_ROOM: usize = 256 * 1024;

    /// [`FrameCodec`] for the agent link: a large data message's payload is
    /// handed on as a slice of the read buffer ([`data::decode_shared`])
    /// instead of being copied out of it. The frames of one read share its
    /// buffer, so an incomplete frame makes room for several more.
    #[derive(Debug)]
    pub struct LinkCodec<In, Out> {
        frames: FrameCodec<In, Out>,
    }

    impl<In, Out> Default for LinkCodec<In, Out> {
        fn default() -> Self {
            Self {
                frames: FrameCodec::default(),
            }
        }
    }

    impl<In: data::DataMessage, Out> tokio_util::codec::Decoder for LinkCodec<In, Out> {
        type Item = In;
        type Error = CodecError;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
            let Some(len) = whole_frame(src, LINK_READ_ROOM)? else {
                return Ok(None);
            };
            let frame = HEADER_LEN..HEADER_LEN + len;
            if data::split_data::<In>(&src[frame]).is_none() {
                return tokio_util::codec::Decoder::decode(&mut self.frames, src);
            }
            let mut frame = src.split_to(HEADER_LEN + len);
            frame.advance(HEADER_LEN);
            data::decode_shared(frame.freeze()).map(Some)
        }
    }

    impl<In, Out: Serialize> tokio_util::codec::Encoder<Out> for LinkCodec<In, Out> {
        type Error = CodecError;

        fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
            self.frames.encode(item, dst)
        }
    }

    impl From<std::io::Error> for CodecError {
        fn from(e: std::io::Error) -> Self {
            CodecError::Io(e)
        }
    }
}
