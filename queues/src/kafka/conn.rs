//! One connection to one Kafka broker: framing, request headers, API version
//! negotiation. A task owns the socket and sends requests one at a time, in
//! the order they were queued (so Kafka's per-connection ordering holds
//! trivially); callers that long-poll (fetch) open a connection of their
//! own.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

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

/// Requests waiting for the connection's task; far more than the router
/// keeps in flight (its prefetch), so a sender never waits for room (a
/// waiting sender that its owner stops polling would hold the queue's
/// next slot).
const QUEUE_CAPACITY: usize = 1024;

/// How long a request may wait for its response (a fetch waits at most its
/// `max_wait_ms`, a produce or a topic creation 30 s broker-side).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);

/// One request for the connection's task: the header and body encoded by
/// the caller, the response body (after its header) sent back.
struct Job {
    header: RequestHeader,
    header_version: i16,
    body: Bytes,
    response_header_version: i16,
    reply: oneshot::Sender<Result<Bytes, ConnError>>,
}

/// A connection to one broker, owned by a task of its own that sends
/// requests one at a time, in the order they were queued, and reads each
/// response before the next request. Callers never hold a lock across the
/// network: a caller that stops polling (a router's forward waiting its
/// turn) cannot stall another caller on the same connection. After an I/O
/// error the task reconnects on the next request (the failed request is
/// reported, not retried: the caller decides, because a produce must not be
/// sent twice blindly).
pub struct Conn {
    addr: String,
    /// API key -> (min, max) version the broker supports.
    versions: HashMap<i16, (i16, i16)>,
    /// callers --requests--> the connection's task
    jobs_tx: mpsc::Sender<Job>,
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
        let mut tcp = Some(open(addr).await?);
        let mut correlation = 0;
        // ApiVersions v0: every broker answers it, whatever its own range.
        let req = ApiVersionsRequest::default();
        let mut body = BytesMut::new();
        req.encode(&mut body, 0).map_err(|e| ConnError::Protocol {
            addr: addr.to_owned(),
            api: ApiKey::ApiVersions,
            version: 0,
            message: e.to_string(),
        })?;
        let job_header = header_for(ApiKey::ApiVersions as i16, 0);
        let mut resp = roundtrip(
            addr,
            &mut tcp,
            &mut correlation,
            job_header,
            ApiVersionsRequest::header_version(0),
            &body,
            ApiVersionsResponse::header_version(0),
        )
        .await?;
        let resp = ApiVersionsResponse::decode(&mut resp, 0).map_err(|e| ConnError::Protocol {
            addr: addr.to_owned(),
            api: ApiKey::ApiVersions,
            version: 0,
            message: e.to_string(),
        })?;
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
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(addr.to_owned(), tcp, correlation, jobs_rx));
        Ok(Self {
            addr: addr.to_owned(),
            versions,
            jobs_tx,
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
        let api = api_key::<R>();
        let proto = |message: String| ConnError::Protocol {
            addr: self.addr.clone(),
            api,
            version,
            message,
        };
        let mut body = BytesMut::new();
        req.encode(&mut body, version)
            .map_err(|e| proto(format!("encoding: {e}")))?;
        let (reply, reply_rx) = oneshot::channel();
        let job = Job {
            header: header_for(R::KEY, version),
            header_version: R::header_version(version),
            body: body.freeze(),
            response_header_version: R::Response::header_version(version),
            reply,
        };
        let gone = || ConnError::Io {
            addr: self.addr.clone(),
            message: "the connection's task ended".into(),
        };
        self.jobs_tx.send(job).await.map_err(|_| gone())?;
        let mut resp = match tokio::time::timeout(REQUEST_TIMEOUT, reply_rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(gone()),
            Err(_) => {
                return Err(ConnError::Io {
                    addr: self.addr.clone(),
                    message: format!("{api:?} v{version}: no response within {REQUEST_TIMEOUT:?}"),
                });
            }
        };
        let decoded =
            R::Response::decode(&mut resp, version).map_err(|e| proto(format!("decoding: {e}")))?;
        if resp.has_remaining() {
            tracing::debug!(
                ?api,
                version,
                left = resp.remaining(),
                "response had trailing bytes"
            );
        }
        Ok(decoded)
    }
}

fn header_for(key: i16, version: i16) -> RequestHeader {
    RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(version)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
}

/// The connection's task: one job at a time, until every `Conn` handle is
/// gone.
async fn run(
    addr: String,
    mut tcp: Option<TcpStream>,
    mut correlation: i32,
    mut jobs_rx: mpsc::Receiver<Job>,
) {
    while let Some(job) = jobs_rx.recv().await {
        if job.reply.is_closed() {
            continue; // its caller gave up (timed out or dropped)
        }
        if tcp.is_none() {
            match open(&addr).await {
                Ok(t) => tcp = Some(t),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                    continue;
                }
            }
        }
        let result = tokio::time::timeout(
            REQUEST_TIMEOUT,
            roundtrip(
                &addr,
                &mut tcp,
                &mut correlation,
                job.header,
                job.header_version,
                &job.body,
                job.response_header_version,
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ConnError::Io {
                addr: addr.clone(),
                message: format!("no response within {REQUEST_TIMEOUT:?}"),
            })
        });
        if matches!(result, Err(ConnError::Io { .. })) {
            // The stream may hold half a frame: start over next time.
            tcp = None;
        }
        let _ = job.reply.send(result);
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

async fn roundtrip(
    addr: &str,
    tcp: &mut Option<TcpStream>,
    correlation: &mut i32,
    header: RequestHeader,
    header_version: i16,
    body: &[u8],
    response_header_version: i16,
) -> Result<Bytes, ConnError> {
    let io = |what: &str, e: std::io::Error| ConnError::Io {
        addr: addr.to_owned(),
        message: format!("{what}: {e}"),
    };
    let api = ApiKey::try_from(header.request_api_key).unwrap_or(ApiKey::ApiVersions);
    let version = header.request_api_version;
    let proto = |message: String| ConnError::Protocol {
        addr: addr.to_owned(),
        api,
        version,
        message,
    };
    *correlation = correlation.wrapping_add(1);
    let correlation = *correlation;
    let header = header.with_correlation_id(correlation);
    let mut buf = BytesMut::new();
    buf.put_i32(0); // the frame's length, filled in below
    header
        .encode(&mut buf, header_version)
        .map_err(|e| proto(format!("encoding the header: {e}")))?;
    buf.extend_from_slice(body);
    let len = i32::try_from(buf.len() - 4).map_err(|_| proto("request too large".into()))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());

    let Some(stream) = tcp.as_mut() else {
        return Err(ConnError::Io {
            addr: addr.to_owned(),
            message: "not connected".into(),
        });
    };
    stream.write_all(&buf).await.map_err(|e| io("writing", e))?;
    let len = stream.read_i32().await.map_err(|e| io("reading", e))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_RESPONSE)
        .ok_or_else(|| ConnError::Io {
            addr: addr.to_owned(),
            message: format!("response of {len} bytes refused"),
        })?;
    let mut resp = vec![0; len];
    stream
        .read_exact(&mut resp)
        .await
        .map_err(|e| io("reading", e))?;
    let mut resp = Bytes::from(resp);
    let got = ResponseHeader::decode(&mut resp, response_header_version)
        .map_err(|e| proto(format!("decoding the response header: {e}")))?;
    if got.correlation_id != correlation {
        return Err(ConnError::Io {
            addr: addr.to_owned(),
            message: format!(
                "response for request {} where {correlation} was expected",
                got.correlation_id
            ),
        });
    }
    Ok(resp)
}
