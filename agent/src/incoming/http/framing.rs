//! HTTP/1.x message framing for the pass-through proxy: request and
//! response heads parsed with `httparse` (kept as byte ranges of the read
//! buffer so the original bytes can be forwarded untouched), body lengths
//! (RFC 9112 section 6), and a chunked-coding scanner that finds where a
//! chunked body ends while passing its bytes through as they are.

use bytes::{Bytes, BytesMut};
use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How much is read from a socket at a time.
pub const READ_SIZE: usize = 64 * 1024;

/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most header lines in one head.
pub const MAX_HEADERS: usize = 128;

/// Longest chunk-size line or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 8 * 1024;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A parsed head, as ranges of the buffer it was read into.
#[derive(Debug, Clone)]
pub struct Head {
    /// Bytes of the head, final empty line included.
    pub len: usize,
    /// Request method, or empty for a response.
    pub method: Range<usize>,
    /// Request target, or empty for a response.
    pub target: Range<usize>,
    /// Response status, or 0 for a request.
    pub status: u16,
    /// `HTTP/1.minor`.
    pub minor: u8,
    pub headers: Vec<(Range<usize>, Range<usize>)>,
}

/// Why a head cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed head: {0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// The header lines of a head, as ranges of its buffer. A connection keeps
/// one between messages ([`Head::recycle`]) so that parsing a head
/// allocates nothing.
pub type HeaderRanges = Vec<(Range<usize>, Range<usize>)>;

/// Room for the header lines `httparse` finds, left uninitialised: zeroing
/// [`MAX_HEADERS`] of them would cost more than parsing a small head.
type HeaderSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

fn ranges(buf: &[u8], headers: &[httparse::Header<'_>], spare: &mut HeaderRanges) -> HeaderRanges {
    let mut ranges = std::mem::take(spare);
    ranges.clear();
    ranges.extend(
        headers
            .iter()
            .map(|h| (offset(buf, h.name.as_bytes()), offset(buf, h.value))),
    );
    ranges
}

/// What a parse attempt means: a head (built by `head` from its length),
/// more bytes needed, or an error.
fn complete(
    buf: &[u8],
    parsed: httparse::Result<usize>,
    head: impl FnOnce(usize) -> Head,
) -> Result<Option<Head>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) => Ok(Some(head(len))),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Invalid(e.to_string())),
    }
}

impl Head {
    /// Parse a request head at the start of `buf`; `Ok(None)` when more
    /// bytes are needed.
    #[cfg(test)]
    pub fn request(buf: &[u8]) -> Result<Option<Head>, HeadError> {
        Head::request_reusing(buf, &mut Vec::new())
    }

    /// [`Head::request`], its header ranges in `spare`'s allocation (taken
    /// when the head is complete).
    pub fn request_reusing(
        buf: &[u8],
        spare: &mut HeaderRanges,
    ) -> Result<Option<Head>, HeadError> {
        let mut slots: HeaderSlots<'_> = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let parsed = request.parse_with_uninit_headers(buf, &mut slots);
        complete(buf, parsed, |len| Head {
            len,
            method: offset(buf, request.method.unwrap_or_default().as_bytes()),
            target: offset(buf, request.path.unwrap_or_default().as_bytes()),
            status: 0,
            minor: request.version.unwrap_or(1),
            headers: ranges(buf, request.headers, spare),
        })
    }

    /// Parse a response head at the start of `buf`; `Ok(None)` when more
    /// bytes are needed.
    #[cfg(test)]
    pub fn response(buf: &[u8]) -> Result<Option<Head>, HeadError> {
        Head::response_reusing(buf, &mut Vec::new())
    }

    /// [`Head::response`], its header ranges in `spare`'s allocation (taken
    /// when the head is complete).
    pub fn response_reusing(
        buf: &[u8],
        spare: &mut HeaderRanges,
    ) -> Result<Option<Head>, HeadError> {
        let mut slots: HeaderSlots<'_> = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        );
        complete(buf, parsed, |len| Head {
            len,
            method: 0..0,
            target: 0..0,
            status: response.code.unwrap_or_default(),
            minor: response.version.unwrap_or(1),
            headers: ranges(buf, response.headers, spare),
        })
    }

    /// Give the header ranges' allocation back for the next head.
    pub fn recycle(self, spare: &mut HeaderRanges) {
        *spare = self.headers;
    }

    /// Values of header `name` (case-insensitive).
    pub fn values<'a>(&'a self, buf: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(move |(_, v)| &buf[v.clone()])
    }

    /// Whether a comma-separated header (`connection`...) lists `token`.
    pub fn has_token(&self, buf: &[u8], name: &str, token: &str) -> bool {
        self.values(buf, name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// How the body of this message is delimited (RFC 9112 6.3); `request`
    /// tells which rules apply. For a response, `head_request` and the
    /// status decide first.
    pub fn body(&self, buf: &[u8], request: bool, head_request: bool) -> Result<Body, HeadError> {
        if !request
            && (head_request
                || (100..200).contains(&self.status)
                || self.status == 204
                || self.status == 304)
        {
            return Ok(Body::Empty);
        }
        let mut codings = self.values(buf, "transfer-encoding").peekable();
        if codings.peek().is_some() {
            let last = codings
                .flat_map(|v| v.split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty())
                .last()
                .unwrap_or_default();
            return if last.eq_ignore_ascii_case(b"chunked") {
                Ok(Body::Chunked)
            } else if request {
                Err(HeadError::Invalid(
                    "request body with a transfer coding other than chunked last".into(),
                ))
            } else {
                Ok(Body::UntilClose)
            };
        }
        let mut length: Option<u64> = None;
        for value in self.values(buf, "content-length") {
            for part in value.split(|&b| b == b',') {
                let parsed = std::str::from_utf8(part.trim_ascii())
                    .ok()
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse::<u64>().ok())
                    .ok_or_else(|| HeadError::Invalid("bad content-length".into()))?;
                if length.is_some_and(|l| l != parsed) {
                    return Err(HeadError::Invalid("conflicting content-length".into()));
                }
                length = Some(parsed);
            }
        }
        Ok(match (length, request) {
            (Some(0), _) | (None, true) => Body::Empty,
            (Some(n), _) => Body::Length(n),
            (None, false) => Body::UntilClose,
        })
    }

    /// Whether the connection may carry another message after this one.
    pub fn keep_alive(&self, buf: &[u8]) -> bool {
        if self.minor == 0 {
            self.has_token(buf, "connection", "keep-alive")
        } else {
            !self.has_token(buf, "connection", "close")
        }
    }
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// One step of [`Chunked::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// More bytes are needed.
    Need,
    /// `consumed` bytes belong to the body; `data` (within them) is payload.
    Advance {
        consumed: usize,
        data: Option<Range<usize>>,
    },
    /// The body ended after `consumed` more bytes.
    Done { consumed: usize },
}

/// Scanner of a chunked body.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: ChunkState,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: ChunkState::Size,
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("chunked body: {what}"))
}

impl Chunked {
    /// Step over everything `buf` holds: how many of its bytes belong to
    /// the body and whether the body ended there; the payload's ranges among
    /// them go to `data` when given.
    pub fn scan(
        &mut self,
        buf: &[u8],
        mut data: Option<&mut Vec<Range<usize>>>,
    ) -> io::Result<(usize, bool)> {
        let mut at = 0;
        loop {
            match self.step(&buf[at..])? {
                Step::Need => return Ok((at, false)),
                Step::Advance { consumed, data: d } => {
                    if let (Some(d), Some(data)) = (d, data.as_deref_mut()) {
                        data.push(at + d.start..at + d.end);
                    }
                    at += consumed;
                }
                Step::Done { consumed } => return Ok((at + consumed, true)),
            }
        }
    }

    /// Look at the bytes after those already consumed.
    pub fn step(&mut self, input: &[u8]) -> io::Result<Step> {
        match self.state {
            ChunkState::Done => Ok(Step::Done { consumed: 0 }),
            ChunkState::Size => match httparse::parse_chunk_size(input) {
                Ok(httparse::Status::Complete((consumed, size))) => {
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                    Ok(Step::Advance {
                        consumed,
                        data: None,
                    })
                }
                Ok(httparse::Status::Partial) if input.len() > MAX_CHUNK_LINE => {
                    Err(invalid("chunk-size line too long"))
                }
                Ok(httparse::Status::Partial) => Ok(Step::Need),
                Err(_) => Err(invalid("bad chunk size")),
            },
            ChunkState::Data(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                if n == 0 {
                    return Ok(Step::Need);
                }
                let left = left - n as u64;
                self.state = if left == 0 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left)
                };
                Ok(Step::Advance {
                    consumed: n,
                    data: Some(0..n),
                })
            }
            ChunkState::DataEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = ChunkState::Size;
                    Ok(Step::Advance {
                        consumed: 2,
                        data: None,
                    })
                }
                [] | [b'\r'] => Ok(Step::Need),
                _ => Err(invalid("missing CRLF after chunk data")),
            },
            ChunkState::Trailers => match input.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.state = ChunkState::Done;
                    Ok(Step::Done { consumed: 2 })
                }
                Some(end) => Ok(Step::Advance {
                    consumed: end + 2,
                    data: None,
                }),
                None if input.len() > MAX_CHUNK_LINE => Err(invalid("trailer line too long")),
                None => Ok(Step::Need),
            },
        }
    }
}

/// Read more into `buf`; an error at end of stream (`what` names it).
pub async fn read_more<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    what: &str,
) -> io::Result<()> {
    buf.reserve(READ_SIZE);
    if reader.read_buf(buf).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed in the middle of {what}"),
        ));
    }
    Ok(())
}

/// Where a relayed body is: what is left of it, as its bytes go by.
#[derive(Debug, Clone)]
pub enum Progress {
    /// This many bytes are left (0: the body is over).
    Length(u64),
    Chunked(Chunked),
    /// Until the connection closes.
    UntilClose,
}

impl Progress {
    pub fn new(body: Body) -> Progress {
        match body {
            Body::Empty => Progress::Length(0),
            Body::Length(n) => Progress::Length(n),
            Body::Chunked => Progress::Chunked(Chunked::default()),
            Body::UntilClose => Progress::UntilClose,
        }
    }

    /// How many of `bytes` (the ones after those already taken) belong to
    /// the body, and whether it ends with them.
    pub fn take(&mut self, bytes: &[u8]) -> io::Result<(usize, bool)> {
        match self {
            Progress::Length(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                *left -= n as u64;
                Ok((n, *left == 0))
            }
            Progress::Chunked(chunked) => chunked.scan(bytes, None),
            Progress::UntilClose => Ok((bytes.len(), false)),
        }
    }
}

/// Copy the rest of a body (all of it for a new [`Progress`]) from `buf`
/// (bytes already read) and then `reader` to `writer`, unchanged. Bytes
/// after the body stay in `buf`.
pub async fn copy_rest<R, W>(
    mut progress: Progress,
    buf: &mut BytesMut,
    reader: &mut R,
    writer: &mut W,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Progress::UntilClose = progress {
        if !buf.is_empty() {
            writer.write_all(&buf.split()).await?;
        }
        return tokio::io::copy(reader, writer).await.map(drop);
    }
    loop {
        let (n, done) = progress.take(buf)?;
        if n > 0 {
            writer.write_all(&buf.split_to(n)).await?;
        }
        if done {
            return Ok(());
        }
        read_more(reader, buf, "a body").await?;
    }
}

/// Read one body, delimited by `body`, from `buf` and then `reader`,
/// handing its payload (chunk coding removed) to `sink` piece by piece.
/// Bytes after the body stay in `buf`. `sink` returning `false` stops.
pub async fn read_body<R, F, Fut>(
    body: Body,
    buf: &mut BytesMut,
    reader: &mut R,
    mut sink: F,
) -> io::Result<bool>
where
    R: AsyncRead + Unpin,
    F: FnMut(Bytes) -> Fut,
    Fut: Future<Output = bool>,
{
    match body {
        Body::Empty => Ok(true),
        Body::Length(mut left) => loop {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            if n > 0 {
                left -= n as u64;
                if !sink(buf.split_to(n).freeze()).await {
                    return Ok(false);
                }
            }
            if left == 0 {
                return Ok(true);
            }
            read_more(reader, buf, "a body").await?;
        },
        Body::Chunked => {
            let mut chunked = Chunked::default();
            loop {
                let mut data: Vec<Range<usize>> = Vec::new();
                let (at, done) = chunked.scan(buf, Some(&mut data))?;
                let read: Bytes = buf.split_to(at).freeze();
                for range in data {
                    if !sink(read.slice(range)).await {
                        return Ok(false);
                    }
                }
                if done {
                    return Ok(true);
                }
                read_more(reader, buf, "a chunked body").await?;
            }
        }
        Body::UntilClose => loop {
            if !buf.is_empty() && !sink(buf.split().freeze()).await {
                return Ok(false);
            }
            buf.reserve(READ_SIZE);
            if reader.read_buf(buf).await? == 0 {
                return Ok(true);
            }
        },
    }
}

#[cfg(test)]
mod tests;
