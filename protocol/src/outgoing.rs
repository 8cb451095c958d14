//! Outgoing streams: connections the local process makes that leave from the
//! target's network namespace. Connection ids are chosen by the client.

use crate::error::RemoteResult;
use crate::ids::ConnectionId;
use crate::net::{RemoteAddr, Transport};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Largest data chunk either side puts in one message.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Client → server.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutgoingClient {
    /// Open a stream to `remote` from inside the target.
    Connect {
        conn: ConnectionId,
        transport: Transport,
        remote: RemoteAddr,
    },
    /// Bytes (TCP/unix) or one datagram (UDP) for the remote peer.
    Data {
        conn: ConnectionId,
        #[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))]
        data: Bytes,
    },
    /// The local side will send no more (half close).
    ShutdownWrite { conn: ConnectionId },
    /// The local side is gone; release everything.
    Close { conn: ConnectionId },
    /// The client passed on `bytes` of credit of the server's data on `conn`
    /// (v3, [`crate::flow`]).
    Credit { conn: ConnectionId, bytes: u32 },
}

/// What the remote side of a new stream looks like.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    /// The stream's own address inside the target (what `getsockname` would say there).
    #[serde(with = "crate::net::wire_addr::option")]
    pub local: Option<SocketAddr>,
    pub remote: RemoteAddr,
}

/// Server → client.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutgoingServer {
    Connected {
        conn: ConnectionId,
        result: RemoteResult<Connected>,
    },
    Data {
        conn: ConnectionId,
        #[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))]
        data: Bytes,
    },
    /// The remote peer will send no more.
    ShutdownWrite { conn: ConnectionId },
    /// The stream is finished; `error` says why when it failed.
    Closed {
        conn: ConnectionId,
        error: Option<crate::RemoteError>,
    },
    /// The server passed on `bytes` of credit of the client's data on `conn`
    /// (v3, [`crate::flow`]).
    Credit { conn: ConnectionId, bytes: u32 },
}
