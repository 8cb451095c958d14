//! Tests for outgoing filter entries and the outgoing policy.

use super::*;
use crate::OutgoingFilter;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn remote_only(entries: &[&str]) -> OutgoingPolicy {
    OutgoingPolicy::new(&OutgoingConfig {
        filter: OutgoingFilter {
            remote: strings(entries),
            local: vec![],
        },
        ..OutgoingConfig::default()
    })
    .unwrap()
}

fn local_only(entries: &[&str]) -> OutgoingPolicy {
    OutgoingPolicy::new(&OutgoingConfig {
        filter: OutgoingFilter {
            remote: vec![],
            local: strings(entries),
        },
        ..OutgoingConfig::default()
    })
    .unwrap()
}

use Proto::{Tcp, Udp};
use Route::{Local, Remote};

#[test]
fn entry_forms_parse() {
    let cases = [
        ("db", None, HostMatch::Name("db".into()), None),
        (
            "DB.Example.com.",
            None,
            HostMatch::Name("db.example.com".into()),
            None,
        ),
        ("db:5432", None, HostMatch::Name("db".into()), Some(5432)),
        (
            "*.svc.cluster.local",
            None,
            HostMatch::Suffix(".svc.cluster.local".into()),
            None,
        ),
        (
            "*.example.com:443",
            None,
            HostMatch::Suffix(".example.com".into()),
            Some(443),
        ),
        (
            "10.1.2.3",
            None,
            HostMatch::Ip("10.1.2.3".parse().unwrap()),
            None,
        ),
        (
            "10.1.2.3:0",
            None,
            HostMatch::Ip("10.1.2.3".parse().unwrap()),
            None,
        ),
        (
            "[::1]:80",
            None,
            HostMatch::Ip("::1".parse().unwrap()),
            Some(80),
        ),
        (
            "[fd00::1]",
            None,
            HostMatch::Ip("fd00::1".parse().unwrap()),
            None,
        ),
        (
            "fd00::1",
            None,
            HostMatch::Ip("fd00::1".parse().unwrap()),
            None,
        ),
        (
            "10.0.0.0/8",
            None,
            HostMatch::Net("10.0.0.0/8".parse().unwrap()),
            None,
        ),
        (
            "10.9.9.9/8:5432",
            None,
            HostMatch::Net("10.0.0.0/8".parse().unwrap()),
            Some(5432),
        ),
        (
            "[fd00::/8]:53",
            None,
            HostMatch::Net("fd00::/8".parse().unwrap()),
            Some(53),
        ),
        (
            "tcp://db:5432",
            Some(Tcp),
            HostMatch::Name("db".into()),
            Some(5432),
        ),
        (
            "UDP://10.0.0.0/8",
            Some(Udp),
            HostMatch::Net("10.0.0.0/8".parse().unwrap()),
            None,
        ),
        ("udp://:53", Some(Udp), HostMatch::Any, Some(53)),
        (":5432", None, HostMatch::Any, Some(5432)),
        ("*:5432", None, HostMatch::Any, Some(5432)),
    ];
    for (entry, proto, host, port) in cases {
        let got = AddrFilter::parse(entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
        assert_eq!(got, AddrFilter { proto, host, port }, "{entry}");
    }
}

#[test]
fn bad_entries_say_why() {
    let cases = [
        ("", "empty"),
        ("http://db", "unknown protocol \"http\""),
        ("db:http", "invalid port \"http\""),
        ("db:70000", "invalid port \"70000\""),
        ("[::1:80", "missing ']'"),
        ("[::1]80", "expected :port after ']'"),
        ("[db]:80", "not an IPv6 address"),
        ("10.0.0.0/33", "invalid CIDR"),
        ("db..example", "not a valid host name"),
        ("a*.example.com", "not a valid host name"),
        ("-db", "not a valid host name"),
    ];
    for (entry, want) in cases {
        let err = AddrFilter::parse(entry).expect_err(entry);
        assert!(err.contains(want), "{entry}: {err}");
        assert!(
            err.contains("expected [tcp://|udp://]host|ip|cidr[:port]"),
            "{entry}: {err}"
        );
    }
}

#[test]
fn no_filter_sends_everything_remote() {
    let p = OutgoingPolicy::new(&OutgoingConfig::default()).unwrap();
    assert_eq!(p.decide(Tcp, sa("1.2.3.4:80"), None), Remote);
    assert_eq!(p.decide(Udp, sa("1.2.3.4:53"), None), Remote);
    assert_eq!(p.decide(Tcp, sa("127.0.0.1:80"), None), Remote);
}

#[test]
fn disabled_protocol_is_local() {
    let p = OutgoingPolicy::new(&OutgoingConfig {
        udp: false,
        ..OutgoingConfig::default()
    })
    .unwrap();
    assert_eq!(p.decide(Udp, sa("1.2.3.4:53"), None), Local);
    assert_eq!(p.decide(Tcp, sa("1.2.3.4:53"), None), Remote);
    let p = OutgoingPolicy::new(&OutgoingConfig {
        tcp: false,
        ..OutgoingConfig::default()
    })
    .unwrap();
    assert_eq!(p.decide(Tcp, sa("1.2.3.4:80"), None), Local);
}

#[test]
fn ignore_localhost_keeps_loopback_local() {
    let p = OutgoingPolicy::new(&OutgoingConfig {
        ignore_localhost: true,
        ..OutgoingConfig::default()
    })
    .unwrap();
    for addr in [
        "127.0.0.1:80",
        "127.8.9.1:80",
        "[::1]:80",
        "[::ffff:127.0.0.1]:80",
        "0.0.0.0:80",
    ] {
        assert_eq!(p.decide(Tcp, sa(addr), None), Local, "{addr}");
    }
    assert_eq!(p.decide(Tcp, sa("10.0.0.1:80"), None), Remote);
}

#[test]
fn host_entries_match_the_resolved_name() {
    let p = remote_only(&["db:5432", "*.svc.cluster.local"]);
    let addr = sa("10.0.0.5:5432");
    assert_eq!(p.decide(Tcp, addr, Some("db")), Remote);
    assert_eq!(p.decide(Tcp, addr, Some("DB.")), Remote);
    assert_eq!(
        p.decide(Tcp, sa("10.0.0.5:5433"), Some("db")),
        Local,
        "port differs"
    );
    assert_eq!(p.decide(Tcp, addr, None), Local, "no name known");
    assert_eq!(
        p.decide(Tcp, addr, Some("api.default.svc.cluster.local")),
        Remote
    );
    assert_eq!(p.decide(Tcp, addr, Some("API.SVC.CLUSTER.LOCAL")), Remote);
    assert_eq!(
        p.decide(Tcp, addr, Some("svc.cluster.local")),
        Local,
        "wildcard needs a label"
    );
    assert_eq!(p.decide(Tcp, addr, Some("evilsvc.cluster.local")), Local);
}

#[test]
fn ip_and_cidr_entries_match_addresses() {
    let p = remote_only(&[
        "10.1.2.3",
        "[fd00::1]:80",
        "192.168.0.0/16:5432",
        "fe80::/10",
    ]);
    assert_eq!(p.decide(Tcp, sa("10.1.2.3:1"), None), Remote);
    assert_eq!(
        p.decide(Tcp, sa("[::ffff:10.1.2.3]:1"), None),
        Remote,
        "mapped v4"
    );
    assert_eq!(p.decide(Tcp, sa("10.1.2.4:1"), None), Local);
    assert_eq!(p.decide(Tcp, sa("[fd00::1]:80"), None), Remote);
    assert_eq!(p.decide(Tcp, sa("[fd00::1]:81"), None), Local);
    assert_eq!(p.decide(Udp, sa("192.168.7.7:5432"), None), Remote);
    assert_eq!(p.decide(Udp, sa("192.168.7.7:5433"), None), Local);
    assert_eq!(p.decide(Udp, sa("192.169.0.1:5432"), None), Local);
    assert_eq!(p.decide(Tcp, sa("[fe80::1234]:22"), None), Remote);
}

#[test]
fn protocol_prefix_restricts_the_entry() {
    let p = remote_only(&["tcp://10.0.0.0/8", "udp://:53"]);
    assert_eq!(p.decide(Tcp, sa("10.1.1.1:80"), None), Remote);
    assert_eq!(p.decide(Udp, sa("10.1.1.1:80"), None), Local);
    assert_eq!(p.decide(Udp, sa("8.8.8.8:53"), None), Remote);
    assert_eq!(p.decide(Tcp, sa("8.8.8.8:53"), None), Local);
}

#[test]
fn local_filter_inverts_the_decision() {
    let p = local_only(&["*.amazonaws.com", "127.0.0.0/8"]);
    assert_eq!(
        p.decide(Tcp, sa("52.1.1.1:443"), Some("s3.amazonaws.com")),
        Local
    );
    assert_eq!(p.decide(Tcp, sa("127.0.0.1:6379"), None), Local);
    assert_eq!(p.decide(Tcp, sa("10.0.0.1:6379"), Some("redis")), Remote);
}

#[test]
fn both_lists_and_bad_entries_are_invalid() {
    let err = OutgoingPolicy::new(&OutgoingConfig {
        filter: OutgoingFilter {
            remote: strings(&["db", "db:x"]),
            local: strings(&["cache"]),
        },
        ..OutgoingConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("network.outgoing.filter.remote[1]: invalid address \"db:x\""),
        "{err}"
    );
    assert!(
        err.contains("network.outgoing.filter: set either remote or local, not both"),
        "{err}"
    );
}
