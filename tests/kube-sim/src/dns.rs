//! The cluster DNS: a small UDP resolver on the bridge's address (port 53) that pods use
//! through their `/etc/resolv.conf`. It answers A queries for `<svc>.<ns>.svc.cluster.local`
//! with the service's cluster IP (routed by the service proxy, `src/proxy.rs`), or for a
//! headless service the addresses of its ready pods (from its Endpoints), NXDOMAIN for other
//! names under `cluster.local`, and relays every other query to this machine's own
//! nameserver.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::net::UdpSocket;

use crate::store::Store;

/// The cluster's domain.
pub const DOMAIN: &str = "cluster.local";
/// TTL of the answers (pods come and go).
const TTL: u32 = 5;
/// How long a relayed query may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
const TYPE_A: u16 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_SERVFAIL: u8 = 2;

/// The question of a query: lowercased name without the final dot, type, and where the
/// question section ends.
fn question(packet: &[u8]) -> Option<(String, u16, usize)> {
    if packet.len() < 12 || u16::from_be_bytes([packet[4], packet[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = usize::from(*packet.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(packet.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*packet.get(i)?, *packet.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
}

/// A response to `query` (its header and question) with `answers` as A records.
fn response(query: &[u8], question_end: usize, rcode: u8, answers: &[Ipv4Addr]) -> Vec<u8> {
    let mut out = query[..question_end].to_vec();
    // QR, opcode copied, AA, RD copied; RA; rcode.
    out[2] = 0x80 | (query[2] & 0x78) | 0x04 | (query[2] & 0x01);
    out[3] = 0x80 | rcode;
    out[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
    out[8..12].fill(0);
    for ip in answers {
        // A pointer to the question's name (offset 12).
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// The addresses of service `svc` in `ns`: its cluster IP when the service proxy routes it,
/// else (a headless service) its ready pods' addresses; `None` if there is no such service.
fn service_addresses(store: &Store, ns: &str, svc: &str) -> Option<Vec<Ipv4Addr>> {
    let reg = store.registry();
    let service = store
        .get(reg.find("", "v1", "services")?, Some(ns), svc)
        .ok()?;
    if let Some(ip) = store.routed_cluster_ip(&service) {
        return Some(vec![ip]);
    }
    let endpoints = reg
        .find("", "v1", "endpoints")
        .and_then(|rt| store.get(rt, Some(ns), svc).ok());
    Some(
        endpoints
            .iter()
            .flat_map(|ep| ep["subsets"].as_array().cloned().unwrap_or_default())
            .flat_map(|subset| subset["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["ip"].as_str()?.parse().ok())
            .collect(),
    )
}

/// The first nameserver of this machine's `/etc/resolv.conf`.
pub fn upstream() -> Option<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("nameserver"))
        .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

/// Serves queries on `socket` until aborted.
pub async fn serve(socket: UdpSocket, store: Store, upstream: Option<SocketAddr>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..n].to_vec();
        let Some((name, qtype, end)) = question(&query) else {
            continue;
        };
        if name == DOMAIN || name.ends_with(&format!(".{DOMAIN}")) {
            let labels: Vec<&str> = name.split('.').collect();
            let reply = match labels.as_slice() {
                [svc, ns, "svc", "cluster", "local"] => match service_addresses(&store, ns, svc) {
                    Some(ips) if qtype == TYPE_A => response(&query, end, 0, &ips),
                    // The name exists: no data of other types.
                    Some(_) => response(&query, end, 0, &[]),
                    None => response(&query, end, RCODE_NXDOMAIN, &[]),
                },
                _ => response(&query, end, RCODE_NXDOMAIN, &[]),
            };
            let _ = socket.send_to(&reply, peer).await;
            continue;
        }
        let socket = socket.clone();
        tokio::spawn(async move {
            let reply = match upstream {
                Some(up) => relay(&query, up).await,
                None => None,
            };
            let reply = reply.unwrap_or_else(|| response(&query, end, RCODE_SERVFAIL, &[]));
            let _ = socket.send_to(&reply, peer).await;
        });
    }
}

async fn relay(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.send_to(query, upstream).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_question_and_answers_it() {
        // id 0x1234, RD, one question: web.default.svc.cluster.local A IN.
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["web", "default", "svc", "cluster", "local"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let (name, qtype, end) = question(&q).unwrap();
        assert_eq!(name, "web.default.svc.cluster.local");
        assert_eq!((qtype, end), (1, q.len()));
        let r = response(&q, end, 0, &[Ipv4Addr::new(10, 216, 1, 2)]);
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[2] & 0x80, 0x80, "a response");
        assert_eq!(&r[6..8], &[0, 1], "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 216, 1, 2]);
    }
}
