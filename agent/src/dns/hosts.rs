//! The target's `/etc/hosts`, parsed: the first source of every lookup, as in
//! the usual `hosts: files dns` order.

use remora_protocol::dns::AddrFamily;
use std::net::IpAddr;

/// One line of a hosts file: an address and its names, canonical name first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsEntry {
    pub addr: IpAddr,
    pub names: Vec<String>,
}

/// A parsed hosts file, lines in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostsFile {
    entries: Vec<HostsEntry>,
}

/// What a hosts file says about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsMatch {
    /// The first name of the first matching line.
    pub canonical_name: String,
    /// Every matching address in file order, without duplicates.
    pub addresses: Vec<IpAddr>,
}

impl HostsFile {
    /// Parse a hosts file. Comments (`#` to the end of the line), blank lines
    /// and lines whose first field is not an address are skipped, as the C
    /// library does. A zone suffix (`fe80::1%eth0`) is dropped.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .filter_map(|line| {
                let line = line.split('#').next().unwrap_or_default();
                let mut fields = line.split_ascii_whitespace();
                let addr_field = fields.next()?;
                let addr_field = addr_field.split('%').next().unwrap_or(addr_field);
                let addr: IpAddr = addr_field.parse().ok()?;
                let names: Vec<String> = fields.map(str::to_owned).collect();
                (!names.is_empty()).then_some(HostsEntry { addr, names })
            })
            .collect();
        HostsFile { entries }
    }

    /// Lines in file order.
    pub fn entries(&self) -> &[HostsEntry] {
        &self.entries
    }

    /// Addresses for `name` (case-insensitive, one trailing dot ignored) in
    /// the wanted family, or `None` when the file has none, so that the
    /// lookup goes on to DNS.
    pub fn lookup(&self, name: &str, family: AddrFamily) -> Option<HostsMatch> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut found: Option<HostsMatch> = None;
        for entry in &self.entries {
            let wanted = match family {
                AddrFamily::Any => true,
                AddrFamily::V4 => entry.addr.is_ipv4(),
                AddrFamily::V6 => entry.addr.is_ipv6(),
            };
            if !wanted || !entry.names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                continue;
            }
            let hit = found.get_or_insert_with(|| HostsMatch {
                // `parse` keeps only lines with at least one name.
                canonical_name: entry.names[0].clone(),
                addresses: Vec::new(),
            });
            if !hit.addresses.contains(&entry.addr) {
                hit.addresses.push(entry.addr);
            }
        }
        found
    }

    /// The names of the first line with `addr` (primary name first), empty
    /// when no line has it. An IPv4-mapped IPv6 address matches its IPv4 line.
    pub fn reverse(&self, addr: IpAddr) -> Vec<String> {
        let addr = addr.to_canonical();
        self.entries
            .iter()
            .find(|entry| entry.addr.to_canonical() == addr)
            .map(|entry| entry.names.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
