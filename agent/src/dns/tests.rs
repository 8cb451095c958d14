//! Tests of the lookup order with the namespace double (hosts file of this
//! machine, no DNS server reachable).

use super::*;
use crate::namespace::CurrentNamespaces;
use remora_protocol::dns::SockType;

async fn api() -> DnsApi {
    let ns: Arc<dyn crate::namespace::TargetNamespaces> = Arc::new(CurrentNamespaces);
    let pool = NsPool::start(ns.clone(), 1).await.unwrap();
    let net = NetApi::start(ns).await.unwrap();
    DnsApi::new(pool, net)
}

fn request(name: &str, family: AddrFamily) -> LookupRequest {
    LookupRequest {
        name: name.into(),
        family,
        socktype: SockType::Stream,
        flags: 0,
    }
}

#[tokio::test]
async fn numeric_names_resolve_to_themselves_in_their_family() {
    let dns = api().await;
    let reply = dns
        .lookup(request("10.1.2.3", AddrFamily::Any))
        .await
        .unwrap();
    assert_eq!(reply.addresses, [IpAddr::from(Ipv4Addr::new(10, 1, 2, 3))]);
    let err = dns
        .lookup(request("10.1.2.3", AddrFamily::V6))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NameNotResolved);
}

#[tokio::test]
async fn localhost_resolves_to_loopback_in_the_asked_family() {
    let dns = api().await;
    let v4 = dns
        .lookup(request("localhost", AddrFamily::V4))
        .await
        .unwrap();
    assert_eq!(v4.addresses, [IpAddr::from(Ipv4Addr::LOCALHOST)]);
    let v6 = dns
        .lookup(request("LocalHost.", AddrFamily::V6))
        .await
        .unwrap();
    assert_eq!(v6.addresses, [IpAddr::from(Ipv6Addr::LOCALHOST)]);
    let sub = dns
        .lookup(request("app.localhost", AddrFamily::V4))
        .await
        .unwrap();
    assert_eq!(sub.addresses, [IpAddr::from(Ipv4Addr::LOCALHOST)]);
}

#[tokio::test]
async fn reverse_of_loopback_comes_from_the_hosts_file() {
    let dns = api().await;
    let hosts = HostsFile::parse(&std::fs::read_to_string(HOSTS_PATH).unwrap_or_default());
    let expected = hosts.reverse(Ipv4Addr::LOCALHOST.into());
    if expected.is_empty() {
        return; // This machine's hosts file has no loopback line to compare with.
    }
    let reply = dns
        .reverse(ReverseRequest {
            address: Ipv4Addr::LOCALHOST.into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.names, expected);
}

#[test]
fn reload_notices_changes_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts");
    let path = path.to_str().unwrap();
    let (missing, data) = reload(path, None).unwrap();
    assert_eq!((missing, data), (None, None));
    assert!(reload(path, Some(None)).is_none());

    std::fs::write(path, "10.0.0.1 a\n").unwrap();
    let (stamp, data) = reload(path, Some(None)).unwrap();
    assert_eq!(data.as_deref(), Some(&b"10.0.0.1 a\n"[..]));
    assert!(reload(path, Some(stamp)).is_none());

    std::fs::write(path, "10.0.0.1 a\n10.0.0.2 b\n").unwrap();
    assert!(reload(path, Some(stamp)).is_some());
}
