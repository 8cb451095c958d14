//! Validation of a merged [`Config`]: every problem is reported with its key
//! path and a hint, and a valid config compiles into the layer's [`Policies`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::fs::regex_message;
use crate::outgoing::check_dns_name;
use crate::target::check_name;
use crate::{
    Config, DnsPolicy, EnvPolicy, Error, FsPolicy, HttpFilter, IncomingConfig, Issues,
    OutgoingPolicy, Result, Target,
};

/// Everything the layer decides with, compiled once from a valid [`Config`].
#[derive(Debug, Clone)]
pub struct Policies {
    /// The parsed target.
    pub target: Target,
    /// Environment selection.
    pub env: EnvPolicy,
    /// File operations.
    pub fs: FsPolicy,
    /// Outgoing connections.
    pub outgoing: OutgoingPolicy,
    /// Name resolution.
    pub dns: DnsPolicy,
}

impl Config {
    /// Checks every key.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing every problem, each with its key path
    /// (`fs.read_only[2]`) and how to fix it.
    pub fn validate(&self) -> Result<()> {
        self.policies().map(drop)
    }

    /// Validates and compiles the decision policies.
    ///
    /// # Errors
    /// As [`Config::validate`].
    pub fn policies(&self) -> Result<Policies> {
        let mut issues = Issues::default();
        let target = issues.absorb("target", self.target());
        if let Some(namespace) = &self.namespace {
            if let Err(why) = check_name(namespace, 63, false) {
                issues.push(
                    "namespace",
                    format!("invalid namespace {namespace:?}: {why}"),
                );
            }
        }
        if self.layer.reply_timeout_secs == Some(0) {
            issues.push(
                "layer.reply_timeout_secs",
                "a reply timeout of 0 s fails every remote call; set a number of seconds \
                 above 0 or remove the key for the default (120)"
                    .to_owned(),
            );
        }
        // `kube[:NAMESPACE[/SERVICE]]` names the operator installed in the
        // cluster (reached through the API server); its parts are checked
        // where it is used (remora_kube::operator_link).
        let in_cluster = |o: &str| o == "kube" || o.starts_with("kube:");
        if let Some(operator) = self.operator.as_ref().filter(|o| !in_cluster(o)) {
            if let Err(why) = check_host_port(operator) {
                issues.push(
                    "operator",
                    format!(
                        "invalid address {operator:?}: {why} (expected host:port, e.g. \
                         \"127.0.0.1:8443\", or kube[:NAMESPACE[/SERVICE]] for the operator \
                         installed in the cluster)"
                    ),
                );
            }
        }
        let env = issues.absorb("env", EnvPolicy::new(&self.env));
        let fs = issues.absorb("fs", FsPolicy::new(&self.fs));
        check_incoming(&self.network.incoming, &mut issues);
        crate::db_branches::check(&self.db_branches, &mut issues);
        crate::split_queues::check(&self.split_queues, &mut issues);
        self.agent.validate(&mut issues);
        if let Some(context) = &self.context {
            if context.trim().is_empty() {
                issues.push("context", "the context name is empty");
            }
        }
        let outgoing = issues.absorb(
            "network.outgoing",
            OutgoingPolicy::new(&self.network.outgoing),
        );
        let dns = issues.absorb("network.dns", DnsPolicy::new(&self.network.dns));
        match (target, env, fs, outgoing, dns) {
            (Some(target), Some(env), Some(fs), Some(outgoing), Some(dns))
                if issues.0.is_empty() =>
            {
                Ok(Policies {
                    target,
                    env,
                    fs,
                    outgoing,
                    dns,
                })
            }
            _ => Err(Error::Invalid(issues)),
        }
    }
}

fn check_incoming(incoming: &IncomingConfig, issues: &mut Issues) {
    for (i, port) in incoming.ports.iter().enumerate() {
        if *port == 0 {
            issues.push(
                format!("network.incoming.ports[{i}]"),
                "port 0 is not valid (use 1-65535)",
            );
        }
    }
    let mut locals = BTreeMap::new();
    let mut remotes = BTreeMap::new();
    for (i, [local, remote]) in incoming.port_mapping.iter().enumerate() {
        let key = format!("network.incoming.port_mapping[{i}]");
        if *local == 0 || *remote == 0 {
            issues.push(
                &key,
                format!("[{local}, {remote}]: port 0 is not valid (use [local, remote] with ports 1-65535)"),
            );
            continue;
        }
        if let Some(first) = locals.insert(*local, i) {
            issues.push(
                &key,
                format!(
                    "local port {local} is already mapped by port_mapping[{first}] (map each \
                     local port once)"
                ),
            );
        }
        if let Some(first) = remotes.insert(*remote, i) {
            issues.push(
                &key,
                format!(
                    "remote port {remote} is already mapped by port_mapping[{first}] (map each \
                     remote port once)"
                ),
            );
        }
    }
    if let Some(filter) = &incoming.http_filter {
        check_http_filter("network.incoming.http_filter", filter, issues);
    }
}

fn check_http_filter(key: &str, filter: &HttpFilter, issues: &mut Issues) {
    match filter.keys_set() {
        0 => issues.push(
            key,
            "empty filter (set one of header, path, method, all_of or any_of, or remove it)",
        ),
        1 => {}
        _ => issues.push(
            key,
            "set only one of header, path, method, all_of or any_of at one level (combine \
             filters with all_of = [{ header = \"..\" }, { path = \"..\" }])",
        ),
    }
    for (name, pattern) in [("header", &filter.header), ("path", &filter.path)] {
        if let Some(pattern) = pattern {
            if let Err(err) = regex::Regex::new(pattern) {
                issues.push(format!("{key}.{name}"), regex_message(pattern, &err));
            }
        }
    }
    if let Some(method) = &filter.method {
        if method.is_empty() || !method.bytes().all(is_token_byte) {
            issues.push(
                format!("{key}.method"),
                format!("invalid method {method:?} (expected an HTTP method like GET or POST)"),
            );
        }
    }
    for (name, list) in [("all_of", &filter.all_of), ("any_of", &filter.any_of)] {
        for (i, inner) in list.iter().enumerate() {
            check_http_filter(&format!("{key}.{name}[{i}]"), inner, issues);
        }
    }
}

/// RFC 9110 `tchar`: what an HTTP method may contain.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `host:port`, `ip:port` or `[ipv6]:port`, port 1-65535.
fn check_host_port(address: &str) -> std::result::Result<(), String> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or("missing \"]:port\" after an IPv6 address")?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        (host, port)
    } else {
        let (host, port) = address.rsplit_once(':').ok_or("missing \":port\"")?;
        if host.contains(':') {
            return Err("put an IPv6 address in brackets: [::1]:8443".to_owned());
        }
        if host.parse::<IpAddr>().is_err() {
            check_dns_name(host)?;
        }
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 && !host.is_empty() => Ok(()),
        _ => Err(format!("invalid port {port:?} (use 1-65535)")),
    }
}

#[cfg(test)]
mod tests;
