//! Tests of handshake decisions.

use super::*;
use remora_protocol::ClientIdentity;

fn hello(version: u32, token: &str, target: Option<&str>) -> Hello {
    Hello {
        version: ProtocolVersion(version),
        capabilities: Capabilities::ALL,
        token: SessionToken(token.into()),
        client: ClientIdentity {
            user: "alice".into(),
            hostname: "laptop".into(),
            pid: 1,
            program: "app".into(),
            remora_version: "0.1.0".into(),
        },
        target: target.map(str::to_owned),
    }
}

fn token() -> SessionToken {
    SessionToken("s3cret-token".into())
}

#[test]
fn accepts_and_intersects_capabilities() {
    let ok = evaluate(&hello(4, "s3cret-token", Some("pid/7")), &token(), "pid/7").unwrap();
    assert_eq!(ok.version, PROTOCOL_VERSION);
    assert_eq!(ok.capabilities, AGENT_CAPABILITIES);
    assert!(ok.capabilities.contains(Capabilities::SESSION_POLICY));
    assert!(ok.capabilities.contains(Capabilities::FLOW_CONTROL));
    // A v1 client is still served, in v1, and a v2 one gets no credit
    // messages even if its bits say so.
    let v1 = evaluate(&hello(1, "s3cret-token", None), &token(), "pid/7").unwrap();
    assert_eq!(v1.version, ProtocolVersion(1));
    let v2 = evaluate(&hello(2, "s3cret-token", None), &token(), "pid/7").unwrap();
    assert!(!v2.capabilities.contains(Capabilities::FLOW_CONTROL));
    // Raw DNS queries and HTTP body credit are v4 variants.
    assert!(ok.capabilities.contains(Capabilities::DNS_QUERY));
    assert!(ok.capabilities.contains(Capabilities::HTTP_FLOW_CONTROL));
    let v3 = evaluate(&hello(3, "s3cret-token", None), &token(), "pid/7").unwrap();
    assert!(!v3.capabilities.contains(Capabilities::DNS_QUERY));
    assert!(v3.capabilities.contains(Capabilities::FLOW_CONTROL));
    assert!(!v3.capabilities.contains(Capabilities::HTTP_FLOW_CONTROL));
    assert!(ok.capabilities.contains(Capabilities::INCOMING_STEAL));
    assert!(!ok.capabilities.contains(Capabilities::HTTP_FILTER));

    let mut small = hello(1, "s3cret-token", None);
    small.capabilities = Capabilities::FILES | Capabilities::HTTP2;
    let ok = evaluate(&small, &token(), "pid/7").unwrap();
    assert_eq!(ok.capabilities, Capabilities::FILES);
}

#[test]
fn refuses_bad_tokens_old_versions_and_other_targets() {
    for bad in ["", "s3cret-toke", "s3cret-token!", "S3cret-token"] {
        let err = evaluate(&hello(1, bad, None), &token(), "pid/7").unwrap_err();
        assert_eq!(err, "invalid session token");
    }
    let err = evaluate(&hello(0, "wrong", None), &token(), "pid/7").unwrap_err();
    assert!(
        err.contains("v0") && err.contains("v1") && err.contains(&PROTOCOL_VERSION.to_string()),
        "{err}"
    );
    let err = evaluate(&hello(1, "s3cret-token", Some("pid/8")), &token(), "pid/7").unwrap_err();
    assert!(err.contains("pid/7") && err.contains("pid/8"), "{err}");
}

#[test]
fn a_newer_client_is_spoken_to_in_our_version() {
    let ok = evaluate(&hello(9, "s3cret-token", None), &token(), "pid/7").unwrap();
    assert_eq!(ok.version, PROTOCOL_VERSION);
}
