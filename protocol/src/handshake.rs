//! The first exchange on every link: versions, capabilities and authentication.
//!
//! [`Hello`] is always the first frame a client sends and [`HelloReply`] the
//! first frame it receives. Their encodings are frozen: a peer of any version
//! can decode them, so a version mismatch is always reported with both
//! versions instead of a decode error.

use serde::{Deserialize, Serialize};

/// Protocol version, bumped whenever a message variant is appended.
///
/// * v1: the first release.
/// * v2: feature negotiation for the messages v1 gained without a version
///   ([`Capabilities::SUBSCRIBE_OVERRIDE`], [`Capabilities::STREAM_WRITES`],
///   [`Capabilities::INCOMING_PEER`]) and the operator's
///   [`Capabilities::SESSION_POLICY`]. A v1 peer still works: it never
///   advertises those bits, so neither side sends those messages to it.
/// * v3: per-stream credit ([`Capabilities::FLOW_CONTROL`], [`crate::flow`]).
/// * v4: `LayerRequest::StreamSync` ([`Capabilities::STREAM_SYNC`]),
///   `Request::DnsQuery` ([`Capabilities::DNS_QUERY`]), per-request credit
///   for the bodies of taken HTTP requests and their answers
///   ([`Capabilities::HTTP_FLOW_CONTROL`]).
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProtocolVersion(pub u32);

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// The version this build speaks.
///
/// - v1: the first release.
/// - v2: `FsRequest::Fsync` ([`Capabilities::FILE_SYNC`]); the capability bits
///   for what v1 peers may lack: `ClientMessage::SubscribeOverride`
///   ([`Capabilities::SUBSCRIBE_OVERRIDE`]).
/// - v3: per-stream credit-based flow control (`OutgoingClient::Credit` and
///   the like, [`Capabilities::FLOW_CONTROL`]).
/// - v4: `LayerRequest::StreamSync` on the layer ⇄ intproxy link
///   ([`Capabilities::STREAM_SYNC`]): a write stream's errors reach the
///   program's `fsync` and `close`; `Request::DnsQuery`
///   ([`Capabilities::DNS_QUERY`]): `res_query` and friends; the same
///   credit as v3 for HTTP bodies of taken requests
///   (`IncomingClient::RequestCredit`, `IncomingServer::ResponseCredit`,
///   [`Capabilities::HTTP_FLOW_CONTROL`]).
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion(4);
/// The oldest peer version this build still understands (v1: every message
/// added since is gated by a capability bit a v1 peer does not advertise).
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
    /// `FsRequest::Fsync` syncs a remote file (v2).
    pub const FILE_SYNC: Capabilities = Capabilities(1 << 16);
    /// `chmod`, `chown`, `utimensat`, `truncate`, links and `statfs` on remote
    /// paths (`FsRequest::SetMode`... `StatFs`, v2).
    pub const FILE_METADATA: Capabilities = Capabilities(1 << 17);
    /// Per-stream credit on the client ⇄ server link ([`crate::flow`], v3):
    /// the `Credit` messages of outgoing and incoming streams. Without it a
    /// stream's data is not windowed and a slow stream slows the link.
    pub const FLOW_CONTROL: Capabilities = Capabilities(1 << 18);
    /// Per-request credit for the bodies of taken HTTP requests and their
    /// answers ([`crate::flow`], v4): `RequestCredit` and `ResponseCredit`.
    /// Without it a peer that does not read its answer is given up after a
    /// timeout, and an app slow to read a request body slows the link.
    pub const HTTP_FLOW_CONTROL: Capabilities = Capabilities(1 << 19);
    /// `ClientMessage::SubscribeOverride` takes a port over from a session
    /// holding an identical filter (operators; v2 names it).
    pub const SUBSCRIBE_OVERRIDE: Capabilities = Capabilities(1 << 24);
    /// `ClientMessage::SessionPolicy`: the agent enforces the operator's
    /// file policies itself, on paths as the target resolves them.
    pub const SESSION_POLICY: Capabilities = Capabilities(1 << 25);
    /// `LayerRequest::StreamWrites` is understood (layer ⇄ intproxy).
    pub const STREAM_WRITES: Capabilities = Capabilities(1 << 26);
    /// `LayerRequest::IncomingPeer` is understood (layer ⇄ intproxy).
    pub const INCOMING_PEER: Capabilities = Capabilities(1 << 27);
    /// The operator makes database branches ([`crate::db`]).
    pub const DB_BRANCHES: Capabilities = Capabilities(1 << 28);
    /// `LayerRequest::StreamSync` is understood (layer ⇄ intproxy, v4).
    pub const STREAM_SYNC: Capabilities = Capabilities(1 << 29);
    /// `Request::DnsQuery`: raw DNS queries through the target's
    /// nameservers (`res_query` and friends, v4).
    pub const DNS_QUERY: Capabilities = Capabilities(1 << 30);
    /// The operator splits queues ([`crate::queues`]).
    pub const QUEUE_SPLITS: Capabilities = Capabilities(1 << 31);

    /// Every capability of protocol v1.
    pub const V1: Capabilities = Capabilities((1 << 12) - 1);
    /// Everything this build implements.
    pub const ALL: Capabilities = Capabilities(
        Self::V1.0
            | Self::FILE_SYNC.0
            | Self::FILE_METADATA.0
            | Self::FLOW_CONTROL.0
            | Self::HTTP_FLOW_CONTROL.0
            | Self::SUBSCRIBE_OVERRIDE.0
            | Self::SESSION_POLICY.0
            | Self::STREAM_WRITES.0
            | Self::INCOMING_PEER.0
            | Self::DB_BRANCHES.0
            | Self::STREAM_SYNC.0
            | Self::DNS_QUERY.0
            | Self::QUEUE_SPLITS.0,
    );

    /// What a peer that negotiated `version` but no capability set (the
    /// layer ⇄ intproxy link, whose handshake carries only a version)
    /// understands beyond v1.
    pub fn implied_by(version: ProtocolVersion) -> Capabilities {
        if version >= ProtocolVersion(4) {
            Capabilities(Self::STREAM_WRITES.0 | Self::INCOMING_PEER.0 | Self::STREAM_SYNC.0)
        } else if version >= ProtocolVersion(2) {
            Capabilities(Self::STREAM_WRITES.0 | Self::INCOMING_PEER.0)
        } else {
            Capabilities(0)
        }
    }

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

/// Server side: decide which version to speak with a client that speaks
/// `peer`, or explain the mismatch naming both versions. A newer client is
/// answered in this side's version (it decides in [`check_accepted`] whether
/// it can still speak it).
pub fn negotiate(peer: ProtocolVersion) -> Result<ProtocolVersion, String> {
    if peer < MIN_PROTOCOL_VERSION {
        Err(format!(
            "the client speaks protocol {peer}, this side speaks {PROTOCOL_VERSION} and needs \
             at least {MIN_PROTOCOL_VERSION}; upgrade the older remora (the client)"
        ))
    } else {
        Ok(peer.min(PROTOCOL_VERSION))
    }
}

/// Client side: may this build speak `accepted`, the version a server chose?
/// `server` names the server in the message (`the agent`, `the operator`).
///
/// # Errors
/// Both versions and which side to upgrade.
pub fn check_accepted(accepted: ProtocolVersion, server: &str) -> Result<(), String> {
    if accepted < MIN_PROTOCOL_VERSION {
        Err(format!(
            "{server} speaks protocol {accepted}, this remora speaks {PROTOCOL_VERSION} and \
             needs at least {MIN_PROTOCOL_VERSION}; upgrade {server}"
        ))
    } else if accepted > PROTOCOL_VERSION {
        Err(format!(
            "{server} answered in protocol {accepted}, newer than this remora's \
             {PROTOCOL_VERSION}; upgrade this remora"
        ))
    } else {
        Ok(())
    }
}

/// Client side: explain a rejection in which the server's version differs
/// from ours.
pub fn explain_rejection(reason: &str, server_protocol: ProtocolVersion, server: &str) -> String {
    if server_protocol == PROTOCOL_VERSION {
        reason.to_owned()
    } else {
        format!(
            "{reason} ({server} speaks protocol {server_protocol}, this remora speaks \
             {PROTOCOL_VERSION})"
        )
    }
}
