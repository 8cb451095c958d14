//! One connection to one Kafka broker: framing, request headers, API version
//! negotiation. Requests on one connection are sent one at a time (a request
//! is written, then its response read, under one lock), so Kafka's
//! per-connection ordering holds trivially; callers that long-poll (fetch)
//! open a connection of their own.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// The client id remora sends (brokers log it; quotas may key on it).
pub const CLIENT_ID: &str = "remora-queues";

/// The largest response accepted (Kafka's default `fetch.max.bytes` is 50 MiB).
const MAX_RESPONSE: usize = 128 << 20;

/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What failed on a connection: the connection itself, or encoding/decoding.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Connecting, writing or reading failed; the connection is unusable.
    #[error("{addr}: {message}")]
    Io {
        /// The broker's address.
        addr: String,
        /// What failed.
        message: String,
    },
    /// A request or response did not encode or decode.
    #[error("{addr}: {api:?} v{version}: {message}")]
    Protocol {
        /// The broker's address.
        addr: String,
        /// Which API.
        api: ApiKey,
        /// Which version.
        version: i16,
        /// What failed.
        message: String,
    },
    /// The broker supports no version of an API that remora speaks.
    #[error("{addr}: the broker supports no version of {api:?} in {min}..={max}")]
    Unsupported {
        /// The broker's address.
        addr: String,
        /// Which API.
        api: ApiKey,
        /// The lowest version remora speaks.
        min: i16,
        /// The highest version remora speaks.
        max: i16,
    },
}

struct Stream {
    tcp: Option<TcpStream>,
    correlation: i32,
}

/// A connection to one broker. Reconnects on the next request after an I/O
/// error (the failed request is reported, not retried: the caller decides,
/// because a produce must not be sent twice blindly).
pub struct Conn {
    addr: String,
    /// API key -> (min, max) version the broker supports.
    versions: HashMap<i16, (i16, i16)>,
    stream: Mutex<Stream>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("addr", &self.addr).finish()
    }
}

impl Conn {
    /// Connects to `addr` (`host:port`) and asks which API versions it
    /// supports.
    pub async fn connect(addr: &str) -> Result<Self, ConnError> {
        let tcp = open(addr).await?;
        let mut stream = Stream {
            tcp: Some(tcp),
            correlation: 0,
        };
        // ApiVersions v0: every broker answers it, whatever its own range.
        let resp = roundtrip::<ApiVersionsRequest>(addr, &mut stream, &Default::default(), 0)
            .await?;
        if resp.error_code != 0 {
            return Err(ConnError::Io {
                addr: addr.to_owned(),
                message: format!("ApiVersions failed with error code {}", resp.error_code),
            });
        }
        let versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(Self {
            addr: addr.to_owned(),
            versions,
            stream: Mutex::new(stream),
        })
    }

    /// The broker's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The version of `R` to use: the highest both sides speak, within
    /// `min..=max` (the versions whose fields the caller fills).
    pub fn version<R: Request>(&self, min: i16, max: i16) -> Result<i16, ConnError> {
        let api = api_key::<R>();
        let (bmin, bmax) = self.versions.get(&R::KEY).copied().unwrap_or((0, -1));
        let lo = min.max(bmin).max(R::VERSIONS.min);
        let hi = max.min(bmax).min(R::VERSIONS.max);
        if lo > hi {
            return Err(ConnError::Unsupported {
                addr: self.addr.clone(),
                api,
                min,
                max,
            });
        }
        Ok(hi)
    }

    /// Sends `req` at `version` and waits for its response.
    pub async fn send<R: Request>(&self, req: &R, version: i16) -> Result<R::Response, ConnError> {
        let mut stream = self.stream.lock().await;
        if stream.tcp.is_none() {
            stream.tcp = Some(open(&self.addr).await?);
        }
        let result = roundtrip(&self.addr, &mut stream, req, version).await;
        if matches!(result, Err(ConnError::Io { .. })) {
            // The stream may hold half a frame: start over next time.
            stream.tcp = None;
        }
        result
    }
}

async fn open(addr: &str) -> Result<TcpStream, ConnError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnError::Io {
            addr: addr.to_owned(),
            message: format!("connecting timed out after {CONNECT_TIMEOUT:?}"),
        })?
        .map_err(|e| ConnError::Io {
            addr: addr.to_owned(),
            message: format!("connecting: {e}"),
        })?;
    // Requests are small and answered one at a time: Nagle would add latency.
    tcp.set_nodelay(true).map_err(|e| ConnError::Io {
        addr: addr.to_owned(),
        message: format!("setting TCP_NODELAY: {e}"),
    })?;
    Ok(tcp)
}

fn api_key<R: Request>() -> ApiKey {
    // R::KEY comes from kafka-protocol's own message definitions.
    ApiKey::try_from(R::KEY).unwrap_or(ApiKey::ApiVersions)
}

async fn roundtrip<R: Request>(
    addr: &str,
    stream: &mut Stream,
    req: &R,
    version: i16,
) -> Result<R::Response, ConnError> {
    let api = api_key::<R>();
    let proto = |message: String| ConnError::Protocol {
        addr: addr.to_owned(),
        api,
        version,
        message,
    };
    let io = |what: &str, e: std::io::Error| ConnError::Io {
        addr: addr.to_owned(),
        message: format!("{what}: {e}"),
    };
    stream.correlation = stream.correlation.wrapping_add(1);
    let correlation = stream.correlation;
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut buf = BytesMut::new();
    buf.put_i32(0); // the frame's length, filled in below
    header
        .encode(&mut buf, R::header_version(version))
        .map_err(|e| proto(format!("encoding the header: {e}")))?;
    req.encode(&mut buf, version)
        .map_err(|e| proto(format!("encoding: {e}")))?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| proto("request too large".into()))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());

    let Some(tcp) = stream.tcp.as_mut() else {
        return Err(ConnError::Io {
            addr: addr.to_owned(),
            message: "not connected".into(),
        });
    };
    tcp.write_all(&buf).await.map_err(|e| io("writing", e))?;
    let len = tcp.read_i32().await.map_err(|e| io("reading", e))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_RESPONSE)
        .ok_or_else(|| ConnError::Io {
            addr: addr.to_owned(),
            message: format!("response of {len} bytes refused"),
        })?;
    let mut body = vec![0; len];
    tcp.read_exact(&mut body)
        .await
        .map_err(|e| io("reading", e))?;
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
        .map_err(|e| proto(format!("decoding the response header: {e}")))?;
    if header.correlation_id != correlation {
        return Err(ConnError::Io {
            addr: addr.to_owned(),
            message: format!(
                "response for request {} where {correlation} was expected",
                header.correlation_id
            ),
        });
    }
    let resp =
        R::Response::decode(&mut body, version).map_err(|e| proto(format!("decoding: {e}")))?;
    if body.has_remaining() {
        tracing::debug!(?api, version, left = body.remaining(), "response had trailing bytes");
    }
    Ok(resp)
}
