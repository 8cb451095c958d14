//! Session control and messages for the user.

use crate::ids::SessionId;
use crate::incoming::{HttpFilter, IncomingMode, RemotePort};
use serde::{Deserialize, Serialize};

/// One port a session holds.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSubscription {
    pub port: RemotePort,
    pub mode: IncomingMode,
    pub filter: Option<HttpFilter>,
}

/// A session as listed by `remora session ls`.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: SessionId,
    pub user: String,
    pub target: String,
    pub subscriptions: Vec<PortSubscription>,
    /// Unix seconds.
    pub started_at: u64,
}

/// Client → server control requests.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionRequest {
    List,
    Kill { id: SessionId },
}

/// Replies to [`SessionRequest`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionReply {
    Sessions(Vec<SessionInfo>),
    Killed,
}

/// How loudly to show a [`crate::ServerMessage::Log`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}
