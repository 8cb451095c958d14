//! Reading `/proc` for `remora ls` and `remora ci`: processes, their
//! command lines, their children, and which TCP ports they listen on.
//!
//! Hand-rolled (a few line formats) rather than a crate: the `procfs` crate
//! would be a large dependency for five small parsers. Every function takes
//! the proc root so tests run against a fake tree.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// What remora reads of `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `Z` (zombie), ...
    pub state: char,
    pub ppid: u32,
    pub pgid: u32,
    /// Start time in clock ticks after boot: with the pid, identifies a process.
    pub start: u64,
}

/// A `/proc` tree (the real one, or a fake one in tests).
#[derive(Debug, Clone)]
pub struct Proc {
    root: PathBuf,
}

impl Default for Proc {
    fn default() -> Self {
        Proc::at("/proc")
    }
}

impl Proc {
    pub fn at(root: impl Into<PathBuf>) -> Proc {
        Proc { root: root.into() }
    }

    fn path(&self, pid: u32, file: &str) -> PathBuf {
        self.root.join(pid.to_string()).join(file)
    }

    /// Every process id.
    pub fn pids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    }

    /// The command line, arguments joined by spaces (empty for kernel threads).
    pub fn cmdline(&self, pid: u32) -> Option<String> {
        let raw = std::fs::read(self.path(pid, "cmdline")).ok()?;
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some(args.join(" "))
    }

    /// The fields of `stat` remora uses.
    pub fn stat(&self, pid: u32) -> Option<Stat> {
        let stat = std::fs::read_to_string(self.path(pid, "stat")).ok()?;
        // The command name may hold spaces and parentheses: fields start after the last `)`.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(Stat {
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            pgid: fields.get(2)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
        })
    }

    /// Processes of process group `pgid` that still run (zombies left out).
    pub fn group_members(&self, pgid: u32) -> Vec<u32> {
        self.pids()
            .into_iter()
            .filter(|p| {
                self.stat(*p)
                    .is_some_and(|s| s.pgid == pgid && s.state != 'Z' && s.state != 'X')
            })
            .collect()
    }

    /// The owner's user id.
    pub fn uid(&self, pid: u32) -> Option<u32> {
        let status = std::fs::read_to_string(self.path(pid, "status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The namespace link (`net:[4026531840]`) of `kind` (`net`, `mnt`, `uts`).
    pub fn namespace(&self, pid: u32, kind: &str) -> Option<String> {
        let link = std::fs::read_link(self.path(pid, &format!("ns/{kind}"))).ok()?;
        Some(link.to_string_lossy().into_owned())
    }

    /// `pid` and every process below it.
    pub fn tree(&self, pid: u32) -> BTreeSet<u32> {
        let parents: BTreeMap<u32, u32> = self
            .pids()
            .into_iter()
            .filter_map(|p| Some((p, self.stat(p)?.ppid)))
            .collect();
        let mut tree = BTreeSet::from([pid]);
        loop {
            let before = tree.len();
            for (child, parent) in &parents {
                if tree.contains(parent) {
                    tree.insert(*child);
                }
            }
            if tree.len() == before {
                return tree;
            }
        }
    }

    /// Inodes of the sockets `pid` has open.
    pub fn socket_inodes(&self, pid: u32) -> BTreeSet<u64> {
        let Ok(entries) = std::fs::read_dir(self.path(pid, "fd")) else {
            return BTreeSet::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let link = std::fs::read_link(e.path()).ok()?;
                let link = link.to_str()?;
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// Listening TCP sockets (inode → address) of the network namespace of
    /// process `pid` (`/proc/PID/net/tcp{,6}`).
    pub fn tcp_listeners(&self, pid: u32) -> BTreeMap<u64, SocketAddr> {
        let mut out = BTreeMap::new();
        for file in ["net/tcp", "net/tcp6"] {
            if let Ok(table) = std::fs::read_to_string(self.path(pid, file)) {
                out.extend(parse_tcp_listeners(&table));
            }
        }
        out
    }

    /// The TCP addresses the processes of `pid`'s tree listen on.
    pub fn tree_listening(&self, pid: u32) -> Vec<SocketAddr> {
        let listeners = self.tcp_listeners(pid);
        let mut found = BTreeSet::new();
        for p in self.tree(pid) {
            for inode in self.socket_inodes(p) {
                if let Some(addr) = listeners.get(&inode) {
                    found.insert(*addr);
                }
            }
        }
        found.into_iter().collect()
    }

    /// The process listening on `addr` (in the namespace of process `seen_from`).
    pub fn listener_pid(&self, seen_from: u32, addr: SocketAddr) -> Option<u32> {
        let inode = self
            .tcp_listeners(seen_from)
            .into_iter()
            .find(|(_, a)| *a == addr)?
            .0;
        self.pids()
            .into_iter()
            .find(|p| self.socket_inodes(*p).contains(&inode))
    }

    /// IPv4 addresses of the network namespace of `pid` other than loopback
    /// (`/proc/PID/net/fib_trie`, `/32 host LOCAL` entries).
    pub fn addresses(&self, pid: u32) -> Vec<Ipv4Addr> {
        let Ok(trie) = std::fs::read_to_string(self.path(pid, "net/fib_trie")) else {
            return Vec::new();
        };
        parse_fib_trie_local(&trie)
    }
}

/// `inode → address` of the LISTEN (state `0A`) rows of a `/proc/net/tcp{,6}` table.
pub fn parse_tcp_listeners(table: &str) -> BTreeMap<u64, SocketAddr> {
    let mut out = BTreeMap::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let (Some(addr), Ok(inode)) = (parse_hex_addr(f[1]), f[9].parse::<u64>()) else {
            continue;
        };
        out.insert(inode, addr);
    }
    out
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + port (IPv6), as the kernel prints them.
fn parse_hex_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Local IPv4 addresses in a `fib_trie` dump, loopback excluded.
pub fn parse_fib_trie_local(trie: &str) -> Vec<Ipv4Addr> {
    let mut found = BTreeSet::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Ok(ip) = t.parse::<Ipv4Addr>() {
            last = Some(ip);
        } else if t.starts_with("/32 host LOCAL")
            && let Some(ip) = last
            && !ip.is_loopback()
        {
            found.insert(ip);
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests;
