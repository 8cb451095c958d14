//! Address leases: each pod gets its own /30 of [`POOL`]; host side `.1`, pod side `.2`.
//!
//! A lease is a file `LEASE_DIR/<network address>` whose content is the owning pod's
//! name. It is claimed atomically across processes by hard-linking a fully written temp
//! file to that path (`link` fails if the path exists), so no lock is needed and a lease
//! is never seen half-written.

use std::{
    fs,
    hash::{DefaultHasher, Hash, Hasher},
    io::ErrorKind,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use super::{STATE_ROOT, naming::ObjectName};
use crate::{
    cmd,
    error::{Error, Result},
};

/// The private range pods are carved from.
pub const POOL: &str = "10.213.0.0/16";
const POOL_BASE: u32 = u32::from_be_bytes([10, 213, 0, 0]);
const SUBNETS: u32 = 1 << 14; // /16 split into /30s
const PREFIX_LEN: u8 = 30;

/// Directory holding one file per leased /30.
pub fn lease_dir() -> PathBuf {
    Path::new(STATE_ROOT).join("leases")
}

/// One leased /30, released explicitly by teardown (or by the sweeper once the owner died).
#[derive(Debug)]
pub(crate) struct Lease {
    network: u32,
    path: PathBuf,
}

impl Lease {
    /// Claims a free /30 for `name` that does not overlap any address on the host.
    pub(crate) fn acquire(name: ObjectName) -> Result<Lease> {
        let dir = lease_dir();
        fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let taken = host_networks()?;
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        // Start at a name-dependent index so parallel processes rarely race for one file.
        let start = (hasher.finish() % u64::from(SUBNETS)) as u32;
        let tmp = dir.join(format!("tmp-{name}"));
        fs::write(&tmp, format!("{name}\n")).map_err(|e| Error::io("writing", &tmp, e))?;
        let claimed = (0..SUBNETS)
            .map(|k| POOL_BASE + ((start + k) % SUBNETS) * 4)
            .filter(|&network| !taken.iter().any(|&(net, len)| overlaps(network, net, len)))
            .find_map(|network| {
                let path = dir.join(Ipv4Addr::from(network).to_string());
                match fs::hard_link(&tmp, &path) {
                    Ok(()) => Some(Ok(Lease { network, path })),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => None,
                    Err(e) => Some(Err(Error::io("claiming lease", path, e))),
                }
            });
        let _ = fs::remove_file(&tmp);
        claimed.unwrap_or(Err(Error::AddressPoolExhausted { pool: POOL, dir }))
    }

    /// Address of the host side of the veth pair.
    pub(crate) fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// Address of the pod side of the veth pair.
    pub(crate) fn pod_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 2)
    }

    pub(crate) fn prefix_len(&self) -> u8 {
        PREFIX_LEN
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the lease file; a lease already gone is fine.
    pub(crate) fn release(&self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(Error::io("releasing lease", &self.path, e))
            }
            _ => Ok(()),
        }
    }
}

/// Owner recorded in a lease (or `tmp-` file), if it names one of ours.
pub(crate) fn lease_owner(path: &Path) -> Option<ObjectName> {
    let name = path.file_name()?.to_str()?;
    if let Some(tmp) = name.strip_prefix("tmp-") {
        return ObjectName::parse(tmp);
    }
    ObjectName::parse(fs::read_to_string(path).ok()?.trim())
}

/// Every IPv4 network configured on the host, as (network, prefix length).
fn host_networks() -> Result<Vec<(u32, u8)>> {
    let out = cmd::run(
        "listing host addresses",
        Command::new("ip").args(["-o", "-4", "addr"]),
    )?;
    Ok(parse_networks(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_networks(ip_o_addr: &str) -> Vec<(u32, u8)> {
    ip_o_addr
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|&w| w == "inet")?;
            let (addr, len) = words.next()?.split_once('/')?;
            Some((u32::from(addr.parse::<Ipv4Addr>().ok()?), len.parse().ok()?))
        })
        .collect()
}

/// Whether the /30 at `candidate` and `net/len` share any address.
fn overlaps(candidate: u32, net: u32, len: u8) -> bool {
    let len = len.min(PREFIX_LEN);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    candidate & mask == net & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_o_addr_output() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                    4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n";
        assert_eq!(
            parse_networks(text),
            vec![
                (u32::from(Ipv4Addr::new(127, 0, 0, 1)), 8),
                (u32::from(Ipv4Addr::new(192, 0, 2, 2)), 24)
            ]
        );
    }

    #[test]
    fn overlap_is_detected_both_ways() {
        let sub = u32::from(Ipv4Addr::new(10, 213, 1, 4));
        assert!(overlaps(sub, u32::from(Ipv4Addr::new(10, 213, 1, 6)), 30));
        assert!(overlaps(sub, u32::from(Ipv4Addr::new(10, 213, 1, 7)), 32));
        assert!(overlaps(sub, u32::from(Ipv4Addr::new(10, 0, 0, 1)), 8));
        assert!(!overlaps(sub, u32::from(Ipv4Addr::new(10, 213, 1, 9)), 30));
        assert!(!overlaps(sub, u32::from(Ipv4Addr::new(192, 0, 2, 2)), 24));
    }

    #[test]
    fn host_and_pod_addresses_sit_in_the_pool() {
        let lease = Lease {
            network: POOL_BASE + 4 * 300,
            path: PathBuf::new(),
        };
        assert_eq!(lease.host_ip(), Ipv4Addr::new(10, 213, 4, 177));
        assert_eq!(lease.pod_ip(), Ipv4Addr::new(10, 213, 4, 178));
    }
}
