//! The first exchange with a client: protocol version, session token, target
//! and capabilities, decided before any other frame is looked at.

use remora_protocol::handshake::negotiate;
use remora_protocol::{Capabilities, Hello, HelloReply, PROTOCOL_VERSION, ProtocolVersion};
use remora_protocol::{SessionId, SessionToken};

/// What this agent implements. HTTP filters are not among it yet.
pub const AGENT_CAPABILITIES: Capabilities = Capabilities(
    Capabilities::FILES.0
        | Capabilities::DNS.0
        | Capabilities::ENV.0
        | Capabilities::OUTGOING_TCP.0
        | Capabilities::OUTGOING_UDP.0
        | Capabilities::OUTGOING_UNIX.0
        | Capabilities::SESSIONS.0
        | Capabilities::FILE_SNAPSHOT.0
        | Capabilities::FILE_SYNC.0
        | Capabilities::FILE_METADATA.0
        | Capabilities::FLOW_CONTROL.0
        | Capabilities::HTTP_FLOW_CONTROL.0
        | Capabilities::INCOMING_STEAL.0
        | Capabilities::INCOMING_MIRROR.0
        | Capabilities::SUBSCRIBE_OVERRIDE.0
        | Capabilities::SESSION_POLICY.0
        | Capabilities::DNS_QUERY.0,
);

/// remora's version, as told to clients.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: ProtocolVersion,
    /// The client's capabilities that this agent implements too.
    pub capabilities: Capabilities,
}

/// Decide whether to accept `hello`. The version is checked first: a peer of
/// another version is told so even when its other fields are off too.
///
/// # Errors
/// The reason to put in [`HelloReply::Rejected`].
pub fn evaluate(hello: &Hello, token: &SessionToken, target: &str) -> Result<Negotiated, String> {
    let version = negotiate(hello.version)?;
    if !hello.token.matches(token) {
        return Err("invalid session token".to_owned());
    }
    if let Some(wanted) = &hello.target
        && wanted != target
    {
        return Err(format!(
            "this agent serves {target}, not {wanted}; connect to the agent of {wanted}"
        ));
    }
    let mut capabilities = hello.capabilities.intersect(AGENT_CAPABILITIES);
    if version < ProtocolVersion(3) {
        // Credit messages are v3 variants: a v2 peer (or a v2 operator
        // relaying a newer client's bits) could not decode them.
        capabilities = Capabilities(capabilities.0 & !Capabilities::FLOW_CONTROL.0);
    }
    if version < ProtocolVersion(4) {
        // `Request::DnsQuery` is a v4 variant.
        capabilities = Capabilities(capabilities.0 & !Capabilities::DNS_QUERY.0);
        // Likewise the HTTP body credit messages of v4.
        capabilities = Capabilities(capabilities.0 & !Capabilities::HTTP_FLOW_CONTROL.0);
    }
    Ok(Negotiated {
        version,
        capabilities,
    })
}

/// The reply accepting a session.
pub fn accepted(negotiated: Negotiated, session: SessionId) -> HelloReply {
    HelloReply::Accepted {
        version: negotiated.version,
        capabilities: negotiated.capabilities,
        session,
        server_version: SERVER_VERSION.to_owned(),
    }
}

/// The reply refusing a session.
pub fn rejected(reason: String) -> HelloReply {
    HelloReply::Rejected {
        reason,
        server_protocol: PROTOCOL_VERSION,
        server_version: SERVER_VERSION.to_owned(),
    }
}

#[cfg(test)]
mod tests;
