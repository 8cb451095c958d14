//! Every message exchanged by remora's processes, and the framed codec that carries them.
//!
//! Two links use this crate:
//!
//! * **layer ⇄ intproxy** ([`LayerMessage`] / [`ProxyMessage`]): a blocking
//!   request/response session per process, replies matched by [`RequestId`].
//! * **intproxy (or operator) ⇄ agent/operator** ([`ClientMessage`] /
//!   [`ServerMessage`]): one multiplexed connection carrying requests, outgoing
//!   streams, incoming subscriptions and session control.
//!
//! Every message is a serde type encoded with bincode (see [`codec`]) inside a
//! length-prefixed frame with a hard maximum size ([`codec::MAX_FRAME_LEN`]).
//!
//! # Evolution rules
//! New enum variants are only ever appended, and only sent once the peer has
//! announced a protocol version that knows them ([`handshake`]). Existing
//! variants are never reordered and existing structs never gain fields: the
//! bincode encoding is positional.
//!
//! This crate is I/O free apart from the blocking `std::io` frame helpers; an
//! async `tokio_util` codec sits behind the `tokio-codec` feature.

pub mod broker;
pub mod codec;
pub mod db;
pub mod dns;
pub mod env;
pub mod error;
pub mod flow;
pub mod fs;
pub mod handshake;
pub mod ids;
pub mod incoming;
pub mod messages;
pub mod net;
pub mod outgoing;
pub mod queues;
pub mod session;

pub use codec::{CodecError, MAX_FRAME_LEN};
pub use error::{ErrorCode, RemoteError, RemoteResult};
pub use handshake::{
    Capabilities, ClientIdentity, Hello, HelloReply, PROTOCOL_VERSION, ProtocolVersion,
    SessionToken,
};
pub use ids::{ConnectionId, HttpRequestId, RemoteFd, RequestId, SessionId};
pub use messages::{
    ClientMessage, InterceptorAddr, LayerHello, LayerHelloReply, LayerMessage, LayerRequest,
    LayerResponse, ProxyMessage, Request, Response, ServerMessage,
};
pub use net::{LocalAddr, RemoteAddr};

#[cfg(test)]
mod tests;
