//! The remote/local list pair shared by `network.outgoing.filter` and
//! `network.dns.filter`: at most one list may be set; `remote` means only
//! matches go through the target, `local` means all but matches do.

use crate::{Issues, Route};

/// A compiled remote/local filter over matchers of type `M`.
#[derive(Debug, Clone)]
pub(crate) enum RouteFilter<M> {
    All,
    OnlyRemote(Vec<M>),
    OnlyLocal(Vec<M>),
}

impl<M> RouteFilter<M> {
    /// Parse both lists under `key` (`key.remote[i]`, `key.local[i]` name bad
    /// entries); `both_hint` explains the two lists when both are set.
    pub(crate) fn build(
        key: &str,
        remote: &[String],
        local: &[String],
        parse: impl Fn(&str) -> Result<M, String>,
        both_hint: &str,
        issues: &mut Issues,
    ) -> RouteFilter<M> {
        let mut parse_list = |list: &str, entries: &[String]| {
            let mut parsed = Vec::with_capacity(entries.len());
            for (i, entry) in entries.iter().enumerate() {
                match parse(entry) {
                    Ok(m) => parsed.push(m),
                    Err(message) => issues.push(format!("{key}.{list}[{i}]"), message),
                }
            }
            parsed
        };
        let remote = parse_list("remote", remote);
        let local = parse_list("local", local);
        match (remote.is_empty(), local.is_empty()) {
            (true, true) => RouteFilter::All,
            (false, true) => RouteFilter::OnlyRemote(remote),
            (true, false) => RouteFilter::OnlyLocal(local),
            (false, false) => {
                issues.push(
                    key,
                    format!("set either remote or local, not both ({both_hint})"),
                );
                RouteFilter::All
            }
        }
    }

    /// Where traffic goes, given whether a matcher matches it.
    pub(crate) fn route(&self, matches: impl Fn(&M) -> bool) -> Route {
        let any = |list: &[M]| list.iter().any(&matches);
        match self {
            RouteFilter::All => Route::Remote,
            RouteFilter::OnlyRemote(list) if any(list) => Route::Remote,
            RouteFilter::OnlyRemote(_) => Route::Local,
            RouteFilter::OnlyLocal(list) if any(list) => Route::Local,
            RouteFilter::OnlyLocal(_) => Route::Remote,
        }
    }
}
