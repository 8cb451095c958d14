//! A `Bytes` field decoded as a slice of the frame it arrived in, when the
//! frame itself is a `Bytes` ([`decode_shared`]): a stream's data chunk is
//! then not copied out of the connection's read buffer a second time.
//!
//! The wire format is the same as `bytes`' own serde support (a length and
//! the bytes), so peers that decode with a copy read it alike. Use it as
//! `#[serde(with = "crate::codec::shared_bytes")]`.

use super::{CodecError, config};
use bytes::Bytes;
use serde::de::{DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use std::cell::RefCell;

/// The smallest field shared with its frame; a smaller one is copied, so
/// that a few bytes never hold a whole read buffer alive (the same rule as
/// the agent's reads: half of a data chunk).
pub const SHARE_MIN: usize = crate::outgoing::MAX_CHUNK / 2;

thread_local! {
    /// The frame being decoded by [`decode_shared`] on this thread.
    static FRAME: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Decode `payload` (a whole frame's payload; trailing bytes are an error),
/// its large `shared_bytes` fields as slices of it.
pub fn decode_shared<T: DeserializeOwned>(payload: Bytes) -> Result<T, CodecError> {
    /// Clears the thread's frame however decoding ends.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            FRAME.with(|frame| frame.borrow_mut().take());
        }
    }
    FRAME.with(|frame| *frame.borrow_mut() = Some(payload.clone()));
    let _clear = Clear;
    let (msg, used): (T, usize) = bincode::serde::borrow_decode_from_slice(&payload, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::TrailingBytes(payload.len() - used));
    }
    Ok(msg)
}

/// Serialize as `bytes` does.
pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Deserialize, sharing the frame's bytes when the decoder lends them.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedVisitor)
}

struct SharedVisitor;

impl<'de> Visitor<'de> for SharedVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(FRAME.with(|frame| match &*frame.borrow() {
            Some(frame) if v.len() >= SHARE_MIN && within(frame, v) => frame.slice_ref(v),
            _ => Bytes::copy_from_slice(v),
        }))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Bytes::from(v))
    }
}

/// `part` lies inside `frame` (else `Bytes::slice_ref` would panic).
fn within(frame: &Bytes, part: &[u8]) -> bool {
    let start = frame.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    at >= start && at + part.len() <= start + frame.len()
}

#[cfg(test)]
mod tests;
