//! DNS queries the way the target's `/etc/resolv.conf` says (servers, search
//! list, ndots), with hickory. The resolver and its sockets live on the
//! network thread, so queries leave from the target's network namespace.

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use remora_protocol::dns::{AddrFamily, LookupReply};
use remora_protocol::{ErrorCode, RemoteError, RemoteResult};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Per-query timeout. The C library default is 5 s with 2 attempts; the agent
/// answers a remote caller, who must hear "temporary failure" quickly rather
/// than hang when the target's nameserver is unreachable.
pub const DNS_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts per nameserver.
pub const DNS_ATTEMPTS: usize = 1;

/// The target's resolver configuration, tagged with a generation so the
/// network thread rebuilds its resolver only when the file changed.
#[derive(Debug, Clone)]
pub struct ResolvConf {
    pub generation: u64,
    pub config: ResolverConfig,
    pub opts: ResolverOpts,
}

impl ResolvConf {
    /// Parse `/etc/resolv.conf` content; `None` (no file) or a file without
    /// nameservers means the C library default: a server on 127.0.0.1.
    pub fn parse(data: Option<&[u8]>, generation: u64) -> Self {
        let parsed = data.and_then(|data| {
            hickory_resolver::system_conf::parse_resolv_conf(data)
                .inspect_err(
                    |e| tracing::debug!(error = %e, "unusable resolv.conf, using defaults"),
                )
                .ok()
        });
        let (config, mut opts) = parsed.unwrap_or_else(|| {
            let server = NameServerConfig::udp_and_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST));
            (
                ResolverConfig::from_parts(None, Vec::new(), vec![server]),
                ResolverOpts::default(),
            )
        });
        opts.timeout = if opts.timeout.is_zero() {
            DNS_QUERY_TIMEOUT
        } else {
            opts.timeout.min(DNS_QUERY_TIMEOUT)
        };
        opts.attempts = DNS_ATTEMPTS;
        // The agent reads the target's hosts file itself (hickory would read
        // the agent's), and answers from a fresh view each time.
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        ResolvConf {
            generation,
            config,
            opts,
        }
    }

    /// Build a resolver for this configuration.
    ///
    /// Must be called, and the resolver used, on the network thread: hickory
    /// spawns its background tasks on the current runtime.
    pub fn build(&self) -> Result<TokioResolver, NetError> {
        TokioResolver::builder_with_config(self.config.clone(), TokioRuntimeProvider::default())
            .with_options(self.opts.clone())
            .build()
    }
}

/// Forward lookup through DNS.
pub async fn lookup(
    resolver: &TokioResolver,
    name: &str,
    family: AddrFamily,
) -> RemoteResult<LookupReply> {
    let parsed = Name::from_str_relaxed(name).map_err(|e| {
        RemoteError::new(
            ErrorCode::NameNotResolved,
            format!("invalid name {name:?}: {e}"),
        )
    })?;
    let lookup = match family {
        AddrFamily::V4 => resolver.ipv4_lookup(parsed).await,
        AddrFamily::V6 => resolver.ipv6_lookup(parsed).await,
        AddrFamily::Any => resolver.lookup_ip(parsed).await.map(Into::into),
    }
    .map_err(|e| map_error(name, &e))?;
    let mut canonical_name = None;
    let mut addresses = Vec::new();
    for record in lookup.answers() {
        if let Some(ip) = record.data.ip_addr() {
            canonical_name.get_or_insert_with(|| display_name(&record.name));
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    if addresses.is_empty() {
        return Err(not_found(name));
    }
    Ok(LookupReply {
        canonical_name,
        addresses,
    })
}

/// Reverse lookup (PTR) through DNS.
pub async fn reverse(resolver: &TokioResolver, addr: IpAddr) -> RemoteResult<Vec<String>> {
    let query = Name::from(addr);
    let lookup = resolver
        .reverse_lookup(query)
        .await
        .map_err(|e| map_error(&addr.to_string(), &e))?;
    let names: Vec<String> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::PTR(ptr) => Some(display_name(&ptr.0)),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        return Err(not_found(&addr.to_string()));
    }
    Ok(names)
}

fn display_name(name: &Name) -> String {
    let text = name.to_utf8();
    text.strip_suffix('.').map(str::to_owned).unwrap_or(text)
}

pub(crate) fn not_found(name: &str) -> RemoteError {
    RemoteError::new(
        ErrorCode::NameNotResolved,
        format!("{name} not found in the target's hosts file or DNS"),
    )
}

/// "Does not exist" is final (`EAI_NONAME`); everything else (timeouts,
/// unreachable or failing servers) is worth a retry (`EAI_AGAIN`).
pub fn map_error(name: &str, err: &NetError) -> RemoteError {
    if err.is_nx_domain() || err.is_no_records_found() {
        not_found(name)
    } else {
        RemoteError::new(
            ErrorCode::TemporaryNameFailure,
            format!("resolving {name} from the target failed: {err}"),
        )
    }
}

#[cfg(test)]
mod tests;
