//! The server side of SPDY/3.1 as kubectl's port-forward speaks it (`portforward.k8s.io`):
//! per forwarded connection the client opens an error stream and a data stream (headers
//! `streamtype`, `port`, `requestid`); the server replies to both, forwards the data stream
//! to the port in the pod, writes failures to the error stream, and closes both when the pod
//! side is done. Header blocks are zlib with the SPDY/3 dictionary: the client's are inflated
//! (miniz_oxide with the dictionary preloaded as history), the server's are sent as stored
//! (uncompressed) deflate blocks, which any inflater accepts.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use miniz_oxide::inflate::{
    TINFLStatus,
    core::{DecompressorOxide, decompress, inflate_flags},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
    task::JoinSet,
};

use super::PodTarget;

/// The SPDY/3 header compression dictionary (1423 bytes, from the SPDY/3 draft).
const DICTIONARY: &[u8] = include_bytes!("spdy3.dict");
const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;
/// Largest frame accepted from a client (SPDY's limit is 16 MiB; kubectl sends ≤ 32 KiB).
const MAX_FRAME: usize = 1 << 24;
/// Bytes read from the pod per data frame.
const CHUNK: usize = 32 * 1024;
/// Chunks queued from the client to one pod connection.
const TO_POD_QUEUE: usize = 16;

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("frame of {0} bytes is larger than SPDY allows")]
    FrameTooLarge(usize),
    #[error("SPDY version {0} is not supported (only 3)")]
    Version(u16),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("corrupt header block: {0:?}")]
    Inflate(TINFLStatus),
}

/// One parsed frame.
#[derive(Debug)]
enum Frame {
    Control { kind: u16, data: Bytes },
    Data { stream: u32, flags: u8, data: Bytes },
}

/// Takes one complete frame off the front of `buf`.
fn take_frame(buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
    if len > MAX_FRAME {
        return Err(SpdyError::FrameTooLarge(len));
    }
    if buf.len() < 8 + len {
        return Ok(None);
    }
    let head = buf.split_to(8);
    let data = buf.split_to(len).freeze();
    let flags = head[4];
    if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        Ok(Some(Frame::Control { kind, data }))
    } else {
        let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
        Ok(Some(Frame::Data {
            stream,
            flags,
            data,
        }))
    }
}

fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + payload.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    out.put_uint(payload.len() as u64, 3);
    out.put_slice(payload);
    out.freeze()
}

fn data_frame(stream: u32, flags: u8, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + data.len());
    out.put_u32(stream & 0x7fff_ffff);
    out.put_u8(flags);
    out.put_uint(data.len() as u64, 3);
    out.put_slice(data);
    out.freeze()
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    b << 16 | a
}

/// The inflater of the client's header blocks: one zlib stream over the whole session.
struct Inflater {
    state: Box<DecompressorOxide>,
    /// deflate's 32 KiB window as a ring; starts with the dictionary as its history.
    ring: Vec<u8>,
    pos: usize,
    /// Bytes of the zlib header (2) and dictionary id (4) not skipped yet.
    header_left: usize,
}

const WINDOW: usize = 32 * 1024;

impl Inflater {
    fn new() -> Self {
        let mut ring = vec![0; WINDOW];
        ring[WINDOW - DICTIONARY.len()..].copy_from_slice(DICTIONARY);
        Self {
            state: Box::default(),
            ring,
            pos: 0,
            header_left: 6,
        }
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let skip = self.header_left.min(input.len());
        input = &input[skip..];
        self.header_left -= skip;
        let mut out = Vec::new();
        loop {
            let (status, consumed, written) = decompress(
                &mut self.state,
                input,
                &mut self.ring,
                self.pos,
                inflate_flags::TINFL_FLAG_HAS_MORE_INPUT,
            );
            out.extend_from_slice(&self.ring[self.pos..self.pos + written]);
            self.pos = (self.pos + written) & (WINDOW - 1);
            input = &input[consumed..];
            match status {
                TINFLStatus::HasMoreOutput => {}
                TINFLStatus::NeedsMoreInput | TINFLStatus::Done if input.is_empty() => {
                    return Ok(out);
                }
                TINFLStatus::NeedsMoreInput => {}
                other => return Err(SpdyError::Inflate(other)),
            }
        }
    }
}

/// The deflater of the server's header blocks: stored blocks, no compression.
struct Deflater {
    started: bool,
}

impl Deflater {
    fn deflate(&mut self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len() + 16);
        if !self.started {
            // CMF 0x78 (deflate, 32 KiB window), FLG 0xbb (FDICT, level 2, check bits).
            out.extend_from_slice(&[0x78, 0xbb]);
            out.extend_from_slice(&adler32(DICTIONARY).to_be_bytes());
            self.started = true;
        }
        for chunk in raw.chunks(0xffff) {
            let len = chunk.len() as u16;
            out.push(0);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        // An empty stored block, as zlib's sync flush ends every header block.
        out.extend_from_slice(&[0, 0, 0, 0xff, 0xff]);
        out
    }
}

/// Decodes an inflated name/value block.
fn parse_headers(mut block: &[u8]) -> Result<HashMap<String, String>, SpdyError> {
    let bad = SpdyError::Malformed("header block");
    let take = |block: &mut &[u8]| -> Result<String, SpdyError> {
        if block.len() < 4 {
            return Err(SpdyError::Malformed("header block"));
        }
        let len = block.get_u32() as usize;
        if block.len() < len {
            return Err(SpdyError::Malformed("header block"));
        }
        let s = String::from_utf8_lossy(&block[..len]).into_owned();
        block.advance(len);
        Ok(s)
    };
    if block.len() < 4 {
        return Err(bad);
    }
    let count = block.get_u32();
    let mut headers = HashMap::new();
    for _ in 0..count {
        let name = take(&mut block)?;
        let value = take(&mut block)?;
        headers.insert(name.to_ascii_lowercase(), value);
    }
    Ok(headers)
}

/// The streams of one forwarded connection, paired by `requestid`.
#[derive(Debug, Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

/// Serves one SPDY session: frames arrive on `input` (in any chunking), frames to send go to
/// `output`. Returns when the client goes away.
pub async fn serve(
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    target: PodTarget,
) -> Result<(), SpdyError> {
    let mut buf = BytesMut::new();
    let mut inflater = Inflater::new();
    let mut deflater = Deflater { started: false };
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // data stream id → its queue towards the pod.
    let mut to_pod: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut forwards = JoinSet::new();
    let mut result = Ok(());
    'session: while let Some(chunk) = input.recv().await {
        buf.extend_from_slice(&chunk);
        loop {
            let frame = match take_frame(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break 'session;
                }
            };
            match frame {
                Frame::Control {
                    kind: SYN_STREAM,
                    data,
                    ..
                } => {
                    if data.len() < 10 {
                        result = Err(SpdyError::Malformed("SYN_STREAM"));
                        break 'session;
                    }
                    let stream =
                        u32::from_be_bytes([data[0], data[1], data[2], data[3]]) & 0x7fff_ffff;
                    let headers = match inflater
                        .inflate(&data[10..])
                        .and_then(|b| parse_headers(&b))
                    {
                        Ok(h) => h,
                        Err(e) => {
                            result = Err(e);
                            break 'session;
                        }
                    };
                    let mut reply = stream.to_be_bytes().to_vec();
                    reply.extend(deflater.deflate(&0u32.to_be_bytes()));
                    if output
                        .send(control_frame(SYN_REPLY, 0, &reply))
                        .await
                        .is_err()
                    {
                        break 'session;
                    }
                    let key = headers.get("requestid").cloned().unwrap_or_default();
                    let pair = pairs.entry(key.clone()).or_default();
                    pair.port = headers
                        .get("port")
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(pair.port);
                    match headers.get("streamtype").map(String::as_str) {
                        Some("error") => pair.error = Some(stream),
                        Some("data") => pair.data = Some(stream),
                        _ => {}
                    }
                    if let Pair {
                        error: Some(error),
                        data: Some(data),
                        port,
                    } = *pair
                    {
                        pairs.remove(&key);
                        let (tx, rx) = mpsc::channel(TO_POD_QUEUE);
                        to_pod.insert(data, tx);
                        forwards.spawn(forward(
                            target.clone(),
                            port,
                            data,
                            error,
                            rx,
                            output.clone(),
                        ));
                    }
                }
                Frame::Control {
                    kind: RST_STREAM, ..
                } => {
                    // The client gave up on a stream: the pod connection ends with its queue.
                }
                Frame::Control {
                    kind: PING, data, ..
                } => {
                    if output.send(control_frame(PING, 0, &data)).await.is_err() {
                        break 'session;
                    }
                }
                Frame::Control { kind: GOAWAY, .. } => break 'session,
                // SETTINGS, WINDOW_UPDATE, HEADERS: nothing to do for a port forward.
                Frame::Control { .. } => {}
                Frame::Data {
                    stream,
                    flags,
                    data,
                } => {
                    if let Some(tx) = to_pod.get(&stream) {
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            to_pod.remove(&stream);
                        }
                        if flags & FLAG_FIN != 0 {
                            // Dropping the queue half-closes the pod connection.
                            to_pod.remove(&stream);
                        }
                    }
                }
            }
        }
    }
    forwards.abort_all();
    result
}

/// Forwards one data stream to `port` in the pod until the pod side closes.
async fn forward(
    target: PodTarget,
    port: u16,
    data: u32,
    error: u32,
    mut to_pod: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
) {
    let tcp = match target.connect(port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let message = target.error_message(port, &e);
            let _ = output.send(data_frame(error, 0, message.as_bytes())).await;
            let _ = output.send(data_frame(error, FLAG_FIN, &[])).await;
            let _ = output.send(data_frame(data, FLAG_FIN, &[])).await;
            return;
        }
    };
    let (mut from_pod, mut into_pod) = tcp.into_split();
    let up = tokio::spawn(async move {
        while let Some(chunk) = to_pod.recv().await {
            if into_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = into_pod.shutdown().await;
    });
    let mut buf = vec![0; CHUNK];
    loop {
        match from_pod.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if output.send(data_frame(data, 0, &buf[..n])).await.is_err() {
                    up.abort();
                    return;
                }
            }
        }
    }
    up.abort();
    let _ = output.send(data_frame(data, FLAG_FIN, &[])).await;
    let _ = output.send(data_frame(error, FLAG_FIN, &[])).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(adler32(DICTIONARY), 0xe3c6_a7c2);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Two header blocks as zlib (Python's, level 9, SPDY/3 dictionary, sync-flushed) compresses
    /// them: the second refers back into the first, the first into the dictionary.
    #[test]
    fn compressed_header_blocks_with_the_dictionary_inflate() {
        let mut inflater = Inflater::new();
        let first = inflater
            .inflate(&hex("78f9e3c6a7c202253a48f95b044eea16061606409ab308125f99a074cc68004e892545a989b9d0c2863515141500000000ffff"))
            .unwrap();
        let first = parse_headers(&first).unwrap();
        assert_eq!(first["port"], "8080");
        assert_eq!(first["streamtype"], "error");
        let second = inflater.inflate(&hex("225333a8a44a04000000ffff")).unwrap();
        let second = parse_headers(&second).unwrap();
        assert_eq!(second["requestid"], "0");
        assert_eq!(second["streamtype"], "data");
    }

    #[test]
    fn stored_header_blocks_inflate_back() {
        let raw = {
            let mut b = vec![0, 0, 0, 1];
            for s in ["port", "8080"] {
                b.extend((s.len() as u32).to_be_bytes());
                b.extend(s.as_bytes());
            }
            b
        };
        let mut deflater = Deflater { started: false };
        let mut inflater = Inflater::new();
        for _ in 0..3 {
            let block = inflater.inflate(&deflater.deflate(&raw)).unwrap();
            assert_eq!(parse_headers(&block).unwrap()["port"], "8080");
        }
    }
}
