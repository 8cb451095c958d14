//! The first exchange on every link: versions, capabilities and authentication.
//!
//! [`Hello`] is always the first frame a client sends and [`HelloReply`] the
//! first frame it receives. Their encodings are frozen: a peer of any version
//! can decode them, so a version mismatch is always reported with both
//! versions instead of a decode error.

use serde::{Deserialize, Serialize};

/// Protocol version, bumped whenever a message variant is appended.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProtocolVersion(pub u32);

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// The version this build speaks.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion(1);
/// The oldest peer version this build still understands.
pub const MIN_PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion(1);

/// Optional features a peer supports, as a bit set.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Capabilities(pub u64);

impl Capabilities {
    pub const FILES: Capabilities = Capabilities(1 << 0);
    pub const DNS: Capabilities = Capabilities(1 << 1);
    pub const ENV: Capabilities = Capabilities(1 << 2);
    pub const OUTGOING_TCP: Capabilities = Capabilities(1 << 3);
    pub const OUTGOING_UDP: Capabilities = Capabilities(1 << 4);
    pub const OUTGOING_UNIX: Capabilities = Capabilities(1 << 5);
    pub const INCOMING_STEAL: Capabilities = Capabilities(1 << 6);
    pub const INCOMING_MIRROR: Capabilities = Capabilities(1 << 7);
    pub const HTTP_FILTER: Capabilities = Capabilities(1 << 8);
    pub const HTTP2: Capabilities = Capabilities(1 << 9);
    pub const SESSIONS: Capabilities = Capabilities(1 << 10);
    /// Open replies may carry a snapshot of a small read-only file.
    pub const FILE_SNAPSHOT: Capabilities = Capabilities(1 << 11);

    /// Everything this build implements.
    pub const ALL: Capabilities = Capabilities((1 << 12) - 1);

    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersect(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }
}

impl std::ops::BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Self) -> Self {
        Capabilities(self.0 | rhs.0)
    }
}

/// A secret that authenticates a client to an agent or operator.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionToken(pub String);

impl SessionToken {
    /// Compare with `other` in time independent of where they differ, so a
    /// server's reply time does not tell an attacker how much of a guess was
    /// right.
    pub fn matches(&self, other: &SessionToken) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        let mut diff = u8::from(a.len() != b.len());
        for i in 0..a.len().max(b.len()) {
            diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// Who is connecting: shown in `remora session ls` and in agent logs.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientIdentity {
    /// `REMORA_USER`, or `$USER@hostname`.
    pub user: String,
    pub hostname: String,
    pub pid: u32,
    /// The program being run (`argv[0]` of the user command).
    pub program: String,
    /// remora's crate version, e.g. `0.1.0`.
    pub remora_version: String,
}

/// First frame from a client.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: ProtocolVersion,
    pub capabilities: Capabilities,
    pub token: SessionToken,
    pub client: ClientIdentity,
    /// The target the client wants (`pid/4242`, `deployment/api`...), when the
    /// server serves several.
    pub target: Option<String>,
}

/// First frame from a server.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted {
        version: ProtocolVersion,
        capabilities: Capabilities,
        session: crate::SessionId,
        server_version: String,
    },
    Rejected {
        reason: String,
        server_protocol: ProtocolVersion,
        server_version: String,
    },
}

/// Decide which version to speak with a peer, or explain the mismatch.
pub fn negotiate(peer: ProtocolVersion) -> Result<ProtocolVersion, String> {
    if peer < MIN_PROTOCOL_VERSION {
        Err(format!(
            "peer speaks protocol {peer}, this side needs at least {MIN_PROTOCOL_VERSION} \
             (it speaks {PROTOCOL_VERSION}); upgrade the older remora"
        ))
    } else {
        Ok(peer.min(PROTOCOL_VERSION))
    }
}
