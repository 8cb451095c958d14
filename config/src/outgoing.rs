//! Outgoing policy: whether a connection (or UDP send) to an address goes
//! through the target or stays local, from `network.outgoing`.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::route_filter::RouteFilter;
use crate::{Issues, OutgoingConfig, Result};

/// Transport protocol of an outgoing socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// `SOCK_STREAM`.
    Tcp,
    /// `SOCK_DGRAM`.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Where a network operation happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The local libc function, on this machine.
    Local,
    /// In the target, through the agent.
    Remote,
}

/// Which hosts an [`AddrFilter`] matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host (`:5432`, `*:5432`, `tcp://:80`).
    Any,
    /// A DNS name, lowercase without the trailing dot.
    Name(String),
    /// `*.example.com`: names strictly under the suffix (stored as `.example.com`).
    Suffix(String),
    /// One address.
    Ip(IpAddr),
    /// A network (`10.0.0.0/8`), with host bits cleared.
    Net(IpNet),
}

/// One parsed `[proto://]host|ip|cidr[:port]` entry of an outgoing filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrFilter {
    /// `None`: TCP and UDP.
    pub proto: Option<Proto>,
    /// Which hosts.
    pub host: HostMatch,
    /// `None` (absent or `0`): any port.
    pub port: Option<u16>,
}

impl AddrFilter {
    /// Parses one entry; the error says what is wrong with it.
    ///
    /// # Errors
    /// A message naming the entry and the accepted forms.
    pub fn parse(entry: &str) -> std::result::Result<AddrFilter, String> {
        let fail = |why: &str| {
            format!(
                "invalid address {entry:?}: {why} (expected [tcp://|udp://]host|ip|cidr[:port], \
                 e.g. \"db:5432\", \"*.svc.cluster.local\", \"10.0.0.0/8\", \"[::1]:80\")"
            )
        };
        let (proto, rest) = match entry.split_once("://") {
            None => (None, entry),
            Some((p, rest)) if p.eq_ignore_ascii_case("tcp") => (Some(Proto::Tcp), rest),
            Some((p, rest)) if p.eq_ignore_ascii_case("udp") => (Some(Proto::Udp), rest),
            Some((p, _)) => return Err(fail(&format!("unknown protocol {p:?}, use tcp or udp"))),
        };
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let Some((inside, after)) = bracketed.split_once(']') else {
                return Err(fail("missing ']'"));
            };
            match after {
                "" => (inside, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (inside, Some(port)),
                    None => return Err(fail("expected :port after ']'")),
                },
            }
        } else if rest.matches(':').count() > 1 {
            // A bare IPv6 address; its port would be ambiguous, hence the brackets.
            (rest, None)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) => None,
                Ok(p) => Some(p),
                Err(_) => return Err(fail(&format!("invalid port {p:?} (use 0-65535)"))),
            },
        };
        let bracketed = rest.starts_with('[');
        let host = if host.is_empty() || host == "*" {
            if host.is_empty() && port.is_none() && proto.is_none() {
                return Err(fail("empty"));
            }
            HostMatch::Any
        } else if host.contains('/') {
            match host.parse::<IpNet>() {
                Ok(net) => HostMatch::Net(net.trunc()),
                Err(_) => return Err(fail(&format!("invalid CIDR {host:?}"))),
            }
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            HostMatch::Ip(ip.to_canonical())
        } else if bracketed {
            return Err(fail(&format!("{host:?} is not an IPv6 address")));
        } else if let Some(suffix) = host.strip_prefix("*.") {
            check_dns_name(suffix).map_err(|why| fail(&why))?;
            HostMatch::Suffix(format!(
                ".{}",
                suffix.trim_end_matches('.').to_ascii_lowercase()
            ))
        } else {
            check_dns_name(host).map_err(|why| fail(&why))?;
            HostMatch::Name(host.trim_end_matches('.').to_ascii_lowercase())
        };
        Ok(AddrFilter { proto, host, port })
    }

    /// Whether this entry matches a destination. `hostname` is the name the
    /// process resolved to get `addr`, when the layer knows it.
    pub fn matches(&self, proto: Proto, addr: SocketAddr, hostname: Option<&str>) -> bool {
        if self.proto.is_some_and(|p| p != proto) || self.port.is_some_and(|p| p != addr.port()) {
            return false;
        }
        let ip = addr.ip().to_canonical();
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Ip(want) => *want == ip,
            HostMatch::Net(net) => net.contains(&ip),
            HostMatch::Name(name) => {
                hostname.is_some_and(|h| h.trim_end_matches('.').eq_ignore_ascii_case(name))
            }
            HostMatch::Suffix(suffix) => hostname.is_some_and(|h| {
                let h = h.trim_end_matches('.');
                h.len() > suffix.len()
                    && h.get(h.len() - suffix.len()..)
                        .is_some_and(|s| s.eq_ignore_ascii_case(suffix))
            }),
        }
    }
}

/// [`OutgoingConfig`] compiled for the layer: decide with [`OutgoingPolicy::decide`].
#[derive(Debug, Clone)]
pub struct OutgoingPolicy {
    tcp: bool,
    udp: bool,
    ignore_localhost: bool,
    filter: RouteFilter<AddrFilter>,
}

impl OutgoingPolicy {
    /// Parses the filter entries.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] naming every bad entry
    /// (`network.outgoing.filter.remote[1]: ...`), or both lists being set.
    pub fn new(config: &OutgoingConfig) -> Result<OutgoingPolicy> {
        let mut issues = Issues::default();
        let key = "network.outgoing.filter";
        let filter = RouteFilter::build(
            key,
            &config.filter.remote,
            &config.filter.local,
            AddrFilter::parse,
            "remote: only those go through the target; local: all but those do",
            &mut issues,
        );
        issues.into_result(OutgoingPolicy {
            tcp: config.tcp,
            udp: config.udp,
            ignore_localhost: config.ignore_localhost,
            filter,
        })
    }

    /// Decides one outgoing connection or datagram destination.
    pub fn decide(&self, proto: Proto, addr: SocketAddr, hostname: Option<&str>) -> Route {
        let enabled = match proto {
            Proto::Tcp => self.tcp,
            Proto::Udp => self.udp,
        };
        if !enabled {
            return Route::Local;
        }
        let ip = addr.ip().to_canonical();
        if self.ignore_localhost && (ip.is_loopback() || ip.is_unspecified()) {
            return Route::Local;
        }
        self.filter.route(|m| m.matches(proto, addr, hostname))
    }
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, each at
/// most 63 characters, 253 in all; one trailing dot allowed.
pub(crate) fn check_dns_name(name: &str) -> std::result::Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err("empty host name".to_owned());
    }
    if trimmed.len() > 253 {
        return Err(format!("host name {name:?} is longer than 253 characters"));
    }
    for label in trimmed.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "{name:?} is not a valid host name (labels of letters, digits, '-' and '_', \
                 separated by dots; a wildcard is only allowed as a leading \"*.\")"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
