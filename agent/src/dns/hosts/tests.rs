//! Tests of hosts-file parsing and matching.

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

const SAMPLE: &str = "\
# The pod's hosts file
127.0.0.1\tlocalhost
::1 localhost ip6-localhost ip6-loopback   # loopback too
10.0.0.7   db.internal db   # the database
10.0.0.8   DB.Internal
fe80::1%eth0 router.link
not-an-address foo
10.0.0.9
   
10.0.0.10 cache cache.internal
";

#[test]
fn parses_lines_and_skips_garbage() {
    let hosts = HostsFile::parse(SAMPLE);
    let addrs: Vec<String> = hosts.entries().iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(
        addrs,
        [
            "127.0.0.1",
            "::1",
            "10.0.0.7",
            "10.0.0.8",
            "fe80::1",
            "10.0.0.10"
        ]
    );
    assert_eq!(
        hosts.entries()[1].names,
        ["localhost", "ip6-localhost", "ip6-loopback"]
    );
}

#[test]
fn lookup_collects_every_line_case_insensitively_in_order() {
    let hosts = HostsFile::parse(SAMPLE);
    let hit = hosts.lookup("db.INTERNAL.", AddrFamily::Any).unwrap();
    assert_eq!(hit.canonical_name, "db.internal");
    assert_eq!(
        hit.addresses,
        [
            IpAddr::from(Ipv4Addr::new(10, 0, 0, 7)),
            Ipv4Addr::new(10, 0, 0, 8).into()
        ]
    );
    // An alias finds the line and reports its canonical name.
    assert_eq!(
        hosts.lookup("db", AddrFamily::Any).unwrap().canonical_name,
        "db.internal"
    );
    assert_eq!(hosts.lookup("nowhere", AddrFamily::Any), None);
}

#[test]
fn lookup_honours_the_family() {
    let hosts = HostsFile::parse(SAMPLE);
    let any = hosts.lookup("localhost", AddrFamily::Any).unwrap();
    assert_eq!(
        any.addresses,
        [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            Ipv6Addr::LOCALHOST.into()
        ]
    );
    let v6 = hosts.lookup("localhost", AddrFamily::V6).unwrap();
    assert_eq!(v6.addresses, [IpAddr::from(Ipv6Addr::LOCALHOST)]);
    // The name exists, but not in this family: DNS gets its chance.
    assert_eq!(hosts.lookup("db", AddrFamily::V6), None);
}

#[test]
fn reverse_returns_the_first_line_names() {
    let hosts = HostsFile::parse(SAMPLE);
    assert_eq!(
        hosts.reverse(Ipv4Addr::new(10, 0, 0, 7).into()),
        ["db.internal", "db"]
    );
    let mapped: IpAddr = "::ffff:10.0.0.10".parse().unwrap();
    assert_eq!(hosts.reverse(mapped), ["cache", "cache.internal"]);
    assert!(hosts.reverse(Ipv4Addr::new(192, 0, 2, 1).into()).is_empty());
}
