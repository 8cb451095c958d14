//! Incoming traffic: subscriptions to the target's ports, stolen or mirrored
//! connections, and HTTP requests routed by filters. Connection and request
//! ids are chosen by the server.

use crate::error::RemoteResult;
use crate::ids::{ConnectionId, HttpRequestId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A port of the target.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RemotePort(pub u16);

/// What happens to matching traffic.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IncomingMode {
    /// Delivered to the client only; the target never sees it.
    Steal,
    /// The client gets a copy; the target still answers.
    Mirror,
}

/// Which HTTP requests a subscription takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HttpFilter {
    /// Regex matched case-insensitively against each `name: value` header line.
    Header(String),
    /// Regex matched against the request path (and query).
    Path(String),
    /// Exact method, case-insensitive.
    Method(String),
    AllOf(Vec<HttpFilter>),
    AnyOf(Vec<HttpFilter>),
}

/// Client → server.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IncomingClient {
    Subscribe {
        port: RemotePort,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
    },
    Unsubscribe {
        port: RemotePort,
    },
    /// Bytes back to the peer of a stolen connection.
    Data {
        conn: ConnectionId,
        #[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))]
        data: Bytes,
    },
    ShutdownWrite {
        conn: ConnectionId,
    },
    Close {
        conn: ConnectionId,
    },
    /// Answer to a stolen HTTP request.
    ResponseHead {
        request: HttpRequestId,
        head: HttpResponseHead,
    },
    /// A piece of the answer's body, `last` on the final one (which may be
    /// the last data chunk, or an empty chunk after it).
    ResponseBody {
        request: HttpRequestId,
        #[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))]
        chunk: Bytes,
        last: bool,
    },
    /// The local app failed to answer; the server answers 502 for it.
    ResponseFailed {
        request: HttpRequestId,
        reason: String,
    },
    /// The client passed on `bytes` of credit of the server's data on
    /// connection `conn` (v3, [`crate::flow`]).
    Credit {
        conn: ConnectionId,
        bytes: u32,
    },
    /// The client passed on `bytes` of credit of `request`'s body to the
    /// local app (v4, [`crate::flow`]).
    RequestCredit {
        request: HttpRequestId,
        bytes: u32,
    },
}

/// An HTTP version.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

/// Head of a stolen request.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequestHead {
    pub method: String,
    /// Path and query as sent (`/api/x?y=1`).
    pub uri: String,
    pub version: HttpVersion,
    #[cfg_attr(test, proptest(strategy = "crate::tests::headers()"))]
    pub headers: Vec<(String, Bytes)>,
}

/// Head of the response to a stolen request.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponseHead {
    pub status: u16,
    pub version: HttpVersion,
    #[cfg_attr(test, proptest(strategy = "crate::tests::headers()"))]
    pub headers: Vec<(String, Bytes)>,
}

/// Server → client.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IncomingServer {
    Subscribed {
        port: RemotePort,
        result: RemoteResult<()>,
    },
    /// A new raw stolen or mirrored connection.
    NewConnection {
        conn: ConnectionId,
        port: RemotePort,
        #[serde(with = "crate::net::wire_addr")]
        peer: SocketAddr,
        #[serde(with = "crate::net::wire_addr")]
        local: SocketAddr,
    },
    Data {
        conn: ConnectionId,
        #[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))]
        data: Bytes,
    },
    ShutdownWrite {
        conn: ConnectionId,
    },
    Closed {
        conn: ConnectionId,
    },
    /// A request that matched the client's filter.
    Request {
        request: HttpRequestId,
        port: RemotePort,
        #[serde(with = "crate::net::wire_addr")]
        peer: SocketAddr,
        head: HttpRequestHead,
    },
    /// A piece of a taken request's body, `last` on the final one (which may
    /// be empty). Sent for HTTP/2 requests and for HTTP/1 requests whose
    /// head has a `content-length` or `transfer-encoding` header; an HTTP/1
    /// request with neither has no body and gets none of these.
    RequestBody {
        request: HttpRequestId,
        #[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))]
        chunk: Bytes,
        last: bool,
    },
    /// The HTTP client went away; stop answering.
    RequestCancelled {
        request: HttpRequestId,
    },
    /// The request upgraded (WebSocket etc.); from now on it is raw
    /// connection `conn`.
    Upgraded {
        request: HttpRequestId,
        conn: ConnectionId,
    },
    /// The server passed on `bytes` of credit of the client's data on
    /// connection `conn` (v3, [`crate::flow`]).
    Credit {
        conn: ConnectionId,
        bytes: u32,
    },
    /// The server passed on `bytes` of credit of the answer's body to
    /// `request`'s peer (v4, [`crate::flow`]).
    ResponseCredit {
        request: HttpRequestId,
        bytes: u32,
    },
}
