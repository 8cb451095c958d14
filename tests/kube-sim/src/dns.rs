//! The cluster DNS: a small resolver on the bridge's address (port 53, UDP and TCP) that pods use
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

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};

use crate::store::Store;

/// The cluster's domain.
pub const DOMAIN: &str = "cluster.local";
/// TTL of the answers (pods come and go).
const TTL: u32 = 5;
/// How long a relayed query may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP connection may stay idle between queries.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
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

/// The reply to one query: answered here for names under `cluster.local`, relayed to
/// `upstream` (over TCP when the query came over TCP) otherwise; None for a malformed query.
async fn reply(
    store: &Store,
    upstream: Option<SocketAddr>,
    query: &[u8],
    tcp: bool,
) -> Option<Vec<u8>> {
    let (name, qtype, end) = question(query)?;
    if name == DOMAIN || name.ends_with(&format!(".{DOMAIN}")) {
        let labels: Vec<&str> = name.split('.').collect();
        return Some(match labels.as_slice() {
            [svc, ns, "svc", "cluster", "local"] => match service_addresses(store, ns, svc) {
                Some(ips) if qtype == TYPE_A => response(query, end, 0, &ips),
                // The name exists: no data of other types.
                Some(_) => response(query, end, 0, &[]),
                None => response(query, end, RCODE_NXDOMAIN, &[]),
            },
            _ => response(query, end, RCODE_NXDOMAIN, &[]),
        });
    }
    let relayed = match upstream {
        Some(up) if tcp => relay_tcp(query, up).await,
        Some(up) => relay(query, up).await,
        None => None,
    };
    Some(relayed.unwrap_or_else(|| response(query, end, RCODE_SERVFAIL, &[])))
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
        let socket = socket.clone();
        let store = store.clone();
        tokio::spawn(async move {
            if let Some(r) = reply(&store, upstream, &query, false).await {
                let _ = socket.send_to(&r, peer).await;
            }
        });
    }
}

/// Serves DNS over TCP (RFC 1035 4.2.2, RFC 7766: each message behind its 2-byte length,
/// several per connection) on `listener` until aborted, as resolvers use it for large
/// answers or with `options use-vc`.
pub async fn serve_tcp(listener: TcpListener, store: Store, upstream: Option<SocketAddr>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            while let Ok(Ok(query)) =
                tokio::time::timeout(TCP_IDLE_TIMEOUT, read_message(&mut conn)).await
            {
                let Some(r) = reply(&store, upstream, &query, true).await else {
                    return;
                };
                if write_message(&mut conn, &r).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn read_message(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).await?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_message(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    conn.write_all(&out).await
}

async fn relay_tcp(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let mut conn = TcpStream::connect(upstream).await.ok()?;
        write_message(&mut conn, query).await.ok()?;
        read_message(&mut conn).await.ok()
    })
    .await
    .ok()
    .flatten()
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
