//! Raw DNS queries (`res_query`, `res_search`): the query message is built
//! here and sent over UDP to the target's nameservers from its network
//! namespace; the reply goes back to the program as received. The search
//! list and `ndots` of the target's `/etc/resolv.conf` apply to
//! `res_search` as glibc applies them.

use super::resolver::ResolvConf;
use std::net::SocketAddr;

/// Largest reply read over UDP (EDNS-sized; classic DNS stops at 512).
pub const MAX_REPLY: usize = 4096;

/// Response codes of the header (RFC 1035 4.1.1).
pub const NXDOMAIN: u8 = 3;

/// A standard query for `name` with recursion desired; `None` when the
/// name cannot be encoded (a label over 63 bytes, a name over 255).
pub fn build_query(id: u16, name: &str, class: u16, rtype: u16) -> Option<Vec<u8>> {
    let mut msg = Vec::with_capacity(18 + name.len());
    msg.extend_from_slice(&id.to_be_bytes());
    // Flags: RD. One question, no other records.
    msg.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut encoded = 0;
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            msg.push(label.len() as u8);
            msg.extend_from_slice(label.as_bytes());
            encoded += label.len() + 1;
        }
    }
    if encoded + 1 > 255 {
        return None;
    }
    msg.push(0);
    msg.extend_from_slice(&rtype.to_be_bytes());
    msg.extend_from_slice(&class.to_be_bytes());
    Some(msg)
}

/// The reply's id, response code and answer count; `None` when too short.
pub fn header(msg: &[u8]) -> Option<(u16, u8, u16)> {
    if msg.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let rcode = msg[3] & 0x0f;
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    Some((id, rcode, answers))
}

/// The names to ask, in order: `name` alone, or (`search`) with the
/// target's search domains the way glibc's `res_search` tries them: a name
/// with at least `ndots` dots is tried as is first, one ending in `.` only
/// as is, others with each domain first and as is last.
pub fn candidates(name: &str, search: bool, conf: &ResolvConf) -> Vec<String> {
    if !search || name.ends_with('.') {
        return vec![name.to_owned()];
    }
    let domains: Vec<String> = conf
        .config
        .search()
        .iter()
        .map(|d| d.to_string())
        .chain(conf.config.domain().map(|d| d.to_string()))
        .map(|d| d.trim_end_matches('.').to_owned())
        .filter(|d| !d.is_empty())
        .fold(Vec::new(), |mut acc, d| {
            if !acc.contains(&d) {
                acc.push(d);
            }
            acc
        });
    let with_domains = domains.iter().map(|d| format!("{name}.{d}"));
    let dots = name.matches('.').count();
    if dots >= conf.opts.ndots {
        std::iter::once(name.to_owned())
            .chain(with_domains)
            .collect()
    } else {
        with_domains
            .chain(std::iter::once(name.to_owned()))
            .collect()
    }
}

/// Where the target's nameservers listen (UDP).
pub fn servers(conf: &ResolvConf) -> Vec<SocketAddr> {
    conf.config
        .name_servers()
        .iter()
        .map(|ns| {
            let port = ns.connections.first().map_or(53, |c| c.port);
            SocketAddr::new(ns.ip, port)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_encodes_labels_type_and_class() {
        let q = build_query(0x1234, "db.shop.", 1, 16).unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(
            &q[12..],
            &[2, b'd', b'b', 4, b's', b'h', b'o', b'p', 0, 0, 16, 0, 1]
        );
        assert!(build_query(1, &"a".repeat(64), 1, 1).is_none());
        assert_eq!(header(&q), Some((0x1234, 0, 0)));
    }

    #[test]
    fn search_follows_ndots_like_glibc() {
        let conf = ResolvConf::parse(
            Some(b"nameserver 10.0.0.10\nsearch shop.svc.cluster.local svc.cluster.local\noptions ndots:2\n"),
            1,
        );
        assert_eq!(
            candidates("db", true, &conf),
            ["db.shop.svc.cluster.local", "db.svc.cluster.local", "db"]
        );
        assert_eq!(
            candidates("a.b.c", true, &conf),
            [
                "a.b.c",
                "a.b.c.shop.svc.cluster.local",
                "a.b.c.svc.cluster.local"
            ]
        );
        assert_eq!(candidates("x.", true, &conf), ["x."]);
        assert_eq!(candidates("db", false, &conf), ["db"]);
        assert_eq!(
            servers(&conf),
            ["10.0.0.10:53".parse::<SocketAddr>().unwrap()]
        );
    }
}
