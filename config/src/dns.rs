//! DNS policy: whether a name is resolved by the target or locally, from
//! `network.dns`.

use crate::outgoing::check_dns_name;
use crate::route_filter::RouteFilter;
use crate::{DnsConfig, Issues, Result, Route};

/// One parsed name of a DNS filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMatch {
    /// Exactly this name, lowercase without the trailing dot.
    Exact(String),
    /// `*.example.com`: names strictly under the suffix (stored as `.example.com`).
    Suffix(String),
}

impl NameMatch {
    /// Parses `name` or `*.suffix`.
    ///
    /// # Errors
    /// A message naming the entry and the accepted forms.
    pub fn parse(entry: &str) -> std::result::Result<NameMatch, String> {
        let (name, wildcard) = match entry.strip_prefix("*.") {
            Some(suffix) => (suffix, true),
            None => (entry, false),
        };
        check_dns_name(name).map_err(|why| {
            format!(
                "invalid name {entry:?}: {why} (expected a name like \"db\" or \"*.example.com\")"
            )
        })?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        Ok(if wildcard {
            NameMatch::Suffix(format!(".{name}"))
        } else {
            NameMatch::Exact(name)
        })
    }

    /// Whether `name` (any case, trailing dot or not) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self {
            NameMatch::Exact(want) => name.eq_ignore_ascii_case(want),
            NameMatch::Suffix(suffix) => {
                name.len() > suffix.len()
                    && name
                        .get(name.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

/// [`DnsConfig`] compiled for the layer: decide with [`DnsPolicy::decide`].
#[derive(Debug, Clone)]
pub struct DnsPolicy {
    enabled: bool,
    filter: RouteFilter<NameMatch>,
}

impl DnsPolicy {
    /// Parses the filter names.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] naming every bad entry
    /// (`network.dns.filter.local[0]: ...`), or both lists being set.
    pub fn new(config: &DnsConfig) -> Result<DnsPolicy> {
        let mut issues = Issues::default();
        let key = "network.dns.filter";
        let filter = RouteFilter::build(
            key,
            &config.filter.remote,
            &config.filter.local,
            NameMatch::parse,
            "remote: only those names are resolved by the target; local: all but those are",
            &mut issues,
        );
        issues.into_result(DnsPolicy {
            enabled: config.enabled,
            filter,
        })
    }

    /// Decides where `name` is resolved.
    pub fn decide(&self, name: &str) -> Route {
        if !self.enabled {
            return Route::Local;
        }
        self.filter.route(|m| m.matches(name))
    }
}

#[cfg(test)]
mod tests;
