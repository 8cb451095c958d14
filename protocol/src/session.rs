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

/// operator → agent (only on a link that negotiated
/// [`Capabilities::SESSION_POLICY`](crate::Capabilities::SESSION_POLICY)):
/// the file rules the agent enforces for every later file request of this
/// session, on each path as the target resolves it (after `//`, `.`, `..`
/// and symlinks, inside its mount namespace). Replaces the previous one; the
/// operator never forwards one a client sent.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionPolicy {
    /// Paths that appear absent.
    pub fs_not_found: Vec<PathRule>,
    /// When set (to the label of the policy asking), the target's processes'
    /// `/proc/<pid>/environ`, `mem` and the like appear absent: an
    /// `env_exclude` must not be undone by reading them as files.
    pub hide_process_env: Option<String>,
}

/// One `fs_not_found` regex and the policy it comes from.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRule {
    /// The regex, matched against resolved absolute paths.
    pub pattern: String,
    /// `policy #N in FILE`.
    pub label: String,
}
