//! The top-level message enums of both links.

use crate::dns::{LookupReply, LookupRequest, ReverseReply, ReverseRequest};
use crate::env::{EnvReply, EnvRequest};
use crate::error::RemoteResult;
use crate::fs::{FsReply, FsRequest};
use crate::handshake::ProtocolVersion;
use crate::ids::RequestId;
use crate::incoming::{HttpFilter, IncomingClient, IncomingMode, IncomingServer, RemotePort};
use crate::net::{RemoteAddr, Transport};
use crate::outgoing::{OutgoingClient, OutgoingServer};
use crate::session::{LogLevel, SessionReply, SessionRequest};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A request answered by the agent (or operator) on behalf of a session.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Fs(FsRequest),
    Lookup(LookupRequest),
    Reverse(ReverseRequest),
    /// The target's hostname (`gethostname` inside its UTS namespace).
    Hostname,
    Env(EnvRequest),
    Session(SessionRequest),
    Ping,
    /// Database branches (operator only; protocol v2, [`crate::Capabilities::DB_BRANCHES`]).
    Db(crate::db::DbRequest),
    /// Queue splits (operator only; [`crate::Capabilities::QUEUE_SPLITS`]).
    Queues(crate::queues::QueueRequest),
    /// A raw DNS query answered by the target's nameservers (v4,
    /// [`crate::Capabilities::DNS_QUERY`]).
    DnsQuery(crate::dns::DnsQueryRequest),
}

/// The successful answer to a [`Request`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Fs(FsReply),
    Lookup(LookupReply),
    Reverse(ReverseReply),
    Hostname(String),
    Env(EnvReply),
    Session(SessionReply),
    Pong,
    Db(crate::db::DbReply),
    Queues(crate::queues::QueueReply),
    DnsAnswer(crate::dns::DnsAnswer),
}

/// intproxy/operator client → agent/operator, after the handshake.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    Request {
        id: RequestId,
        request: Request,
    },
    Outgoing(OutgoingClient),
    Incoming(IncomingClient),
    /// Orderly goodbye; the server releases everything of this session.
    Bye,
    /// Like `Incoming(IncomingClient::Subscribe { .. })`, but the client asks
    /// the operator to take the port over from another session holding an
    /// identical (or conflicting) filter: the holder's subscription of this
    /// port ends and it is told so. Policies may forbid it. An agent, which
    /// serves no competing sessions' registry, treats it as a plain
    /// subscription.
    SubscribeOverride {
        port: RemotePort,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
    },
    /// operator → agent: the file policies of this session (see
    /// [`SessionPolicy`](crate::session::SessionPolicy)).
    SessionPolicy(crate::session::SessionPolicy),
}

/// agent/operator → client, after the handshake.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    Response {
        id: RequestId,
        result: RemoteResult<Response>,
    },
    Outgoing(OutgoingServer),
    Incoming(IncomingServer),
    /// Something the user should see (policy warnings, probe-traffic hints...).
    Log {
        level: LogLevel,
        message: String,
    },
    /// The server ends the session (killed, shutting down); no more frames follow.
    Closing {
        reason: String,
    },
}

/// First frame from a layer to its intproxy.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerHello {
    pub version: ProtocolVersion,
    /// The intproxy's per-run secret, inherited through the environment.
    pub token: crate::SessionToken,
    pub pid: u32,
    pub parent_pid: u32,
    pub program: String,
}

/// First frame from the intproxy to a layer.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerHelloReply {
    Accepted { version: ProtocolVersion },
    Rejected { reason: String },
}

/// What a layer asks its intproxy.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerRequest {
    /// Forwarded to the agent as is.
    Remote(Request),
    /// Open a stream to `remote` from the target; on success the layer
    /// connects the application's socket to the returned interceptor.
    ConnectOutgoing {
        transport: Transport,
        remote: RemoteAddr,
    },
    /// The application listens on `local`; subscribe the target's `remote` port.
    Listen {
        #[serde(with = "crate::net::wire_addr")]
        local: SocketAddr,
        remote: RemotePort,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
    },
    /// The application closed its listener on `remote`.
    Unlisten { remote: RemotePort },
    /// Write sequentially to the remote file `fd` (opened write-only through
    /// this intproxy) from a local stream: the layer connects the returned
    /// interceptor and hands that socket to the application, so writes work
    /// from stdio internals and exec'd children too. The intproxy closes the
    /// remote file when the stream ends, and holds later requests naming
    /// `path` until the stream is drained.
    StreamWrites { fd: crate::RemoteFd, path: String },
    /// Wait until every byte that reached the write stream accepted at
    /// `stream` (the intproxy's end, the layer's peer address) is written to
    /// the remote file, then (`sync: Some(data_only)`) sync it in the target.
    /// Fails with the stream's first write error, if any: how a failed
    /// remote write reaches the program's `fsync` or `close` (v4,
    /// [`crate::Capabilities::STREAM_SYNC`]).
    StreamSync {
        #[serde(with = "crate::net::wire_addr")]
        stream: SocketAddr,
        sync: Option<bool>,
    },
    /// The intproxy dialed the application's listener from `dialer` for an
    /// incoming connection: who is the real peer (and the target-side address
    /// it connected to)?
    IncomingPeer {
        #[serde(with = "crate::net::wire_addr")]
        dialer: SocketAddr,
    },
}

/// The successful answer to a [`LayerRequest`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerResponse {
    Remote(Response),
    /// Connect the app's socket here. `remote_local` is the stream's own
    /// address inside the target.
    Intercepted {
        interceptor: InterceptorAddr,
        #[serde(with = "crate::net::wire_addr::option")]
        remote_local: Option<SocketAddr>,
    },
    Listening,
    Unlistened,
    /// Answer to [`LayerRequest::StreamSync`]: everything is written.
    StreamSynced,
    /// Answer to [`LayerRequest::IncomingPeer`]; `None` when the connection
    /// is not one the intproxy dialed.
    Peer {
        #[serde(with = "crate::net::wire_addr::option")]
        peer: Option<SocketAddr>,
        #[serde(with = "crate::net::wire_addr::option")]
        local: Option<SocketAddr>,
    },
}

/// Where the intproxy accepts an intercepted stream.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterceptorAddr {
    Ip(#[serde(with = "crate::net::wire_addr")] SocketAddr),
    Unix(String),
}

/// layer → intproxy, after the handshake.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerMessage {
    Request {
        id: RequestId,
        request: LayerRequest,
    },
}

/// intproxy → layer, after the handshake.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProxyMessage {
    Response {
        id: RequestId,
        result: RemoteResult<LayerResponse>,
    },
    /// A line to print on the user's terminal (from the agent or the intproxy).
    Log { level: LogLevel, message: String },
}
