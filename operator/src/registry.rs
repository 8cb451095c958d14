//! The filter registry: which session holds which port of which target, with
//! which filter, and which new subscriptions conflict with them.
//!
//! # Rules (per target and port)
//! * Any number of sessions may hold **filtered** subscriptions; the agent
//!   routes each request to the first one whose filter matches.
//! * A filter identical to one another session holds is refused. Filters are
//!   compared after [`normalize`]: surrounding spaces trimmed, header filters
//!   compared case-insensitively (header matching is case-insensitive),
//!   methods upper-cased, `all_of`/`any_of` lists order-free.
//! * An **unfiltered** subscription (steal or mirror) is refused while
//!   another session holds anything on the port, and any subscription is
//!   refused while another session holds an unfiltered one.
//! * With *override*, the conflicting holders are removed instead (the
//!   caller ends their subscriptions and tells them).
//!
//! A claim is registered at once (before the agent confirms it), so two
//! sessions racing for the same filter cannot both pass the check.

use remora_protocol::SessionId;
use remora_protocol::incoming::{HttpFilter, IncomingMode, RemotePort};
use remora_protocol::session::PortSubscription;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// One session's subscription of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The holding session.
    pub session: SessionId,
    /// Its user.
    pub user: String,
    /// Steal or mirror.
    pub mode: IncomingMode,
    /// Its HTTP filter, if any.
    pub filter: Option<HttpFilter>,
    /// When it was claimed.
    pub since: SystemTime,
    /// Whether the agent accepted it (claims are pending until then).
    pub granted: bool,
}

/// A refused claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The sessions in the way.
    pub holders: Vec<SessionId>,
    /// What to tell the user, naming the first holder.
    pub message: String,
}

/// Every subscription of every session, by target and port.
#[derive(Debug, Default)]
pub struct FilterRegistry {
    ports: BTreeMap<(String, RemotePort), Vec<Holding>>,
}

/// A new subscription, as asked for.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// Canonical target name.
    pub target: &'a str,
    /// The target's port.
    pub port: RemotePort,
    /// The asking session.
    pub session: SessionId,
    /// Its user.
    pub user: &'a str,
    /// Steal or mirror.
    pub mode: IncomingMode,
    /// Its filter.
    pub filter: Option<&'a HttpFilter>,
    /// Take the port over from conflicting holders.
    pub take_over: bool,
}

impl FilterRegistry {
    /// Register `req`, or explain what is in the way. With `take_over`,
    /// conflicting holdings are removed and their sessions returned (the
    /// caller must end those subscriptions at the agent).
    ///
    /// # Errors
    /// [`Conflict`] naming the first holder in the way.
    pub fn claim(
        &mut self,
        req: &ClaimRequest<'_>,
        now: SystemTime,
    ) -> Result<Vec<Holding>, Conflict> {
        let key = (req.target.to_owned(), req.port);
        let holdings = self.ports.entry(key).or_default();
        // A session re-subscribing a port replaces its own holding.
        holdings.retain(|h| h.session != req.session);
        let new_key = req.filter.map(normalize);
        let in_the_way: Vec<usize> = holdings
            .iter()
            .enumerate()
            .filter(|(_, h)| match (&new_key, &h.filter) {
                (Some(new), Some(held)) => *new == normalize(held),
                _ => true,
            })
            .map(|(i, _)| i)
            .collect();
        let mut evicted = Vec::new();
        if let Some(&first) = in_the_way.first() {
            if !req.take_over {
                let message = conflict_message(req, &holdings[first], now);
                return Err(Conflict {
                    holders: in_the_way.iter().map(|&i| holdings[i].session).collect(),
                    message,
                });
            }
            for i in in_the_way.into_iter().rev() {
                evicted.push(holdings.remove(i));
            }
            evicted.reverse();
        }
        holdings.push(Holding {
            session: req.session,
            user: req.user.to_owned(),
            mode: req.mode,
            filter: req.filter.cloned(),
            since: now,
            granted: false,
        });
        Ok(evicted)
    }

    /// The agent accepted `session`'s subscription of `port`.
    pub fn confirm(&mut self, target: &str, port: RemotePort, session: SessionId) {
        if let Some(h) = self
            .ports
            .get_mut(&(target.to_owned(), port))
            .and_then(|hs| hs.iter_mut().find(|h| h.session == session))
        {
            h.granted = true;
        }
    }

    /// `session` no longer holds `port` (unsubscribed, refused by the agent,
    /// or taken over).
    pub fn release(&mut self, target: &str, port: RemotePort, session: SessionId) {
        let key = (target.to_owned(), port);
        if let Some(hs) = self.ports.get_mut(&key) {
            hs.retain(|h| h.session != session);
            if hs.is_empty() {
                self.ports.remove(&key);
            }
        }
    }

    /// Forget everything `session` holds (it ended).
    pub fn release_session(&mut self, session: SessionId) {
        self.ports.retain(|_, hs| {
            hs.retain(|h| h.session != session);
            !hs.is_empty()
        });
    }

    /// The ports `session` holds (granted ones), by port.
    pub fn subscriptions_of(&self, session: SessionId) -> Vec<PortSubscription> {
        self.ports
            .iter()
            .flat_map(|((_, port), hs)| {
                hs.iter()
                    .filter(|h| h.session == session && h.granted)
                    .map(|h| PortSubscription {
                        port: *port,
                        mode: h.mode,
                        filter: h.filter.clone(),
                    })
            })
            .collect()
    }

    /// How many holdings `target`'s `port` has (tests, benchmarks).
    pub fn holders(&self, target: &str, port: RemotePort) -> usize {
        self.ports
            .get(&(target.to_owned(), port))
            .map_or(0, Vec::len)
    }
}

fn conflict_message(req: &ClaimRequest<'_>, held: &Holding, now: SystemTime) -> String {
    let who = format!(
        "{} (session {}, {})",
        held.user,
        held.session,
        format_age(now.duration_since(held.since).unwrap_or_default())
    );
    let place = format!("port {} on {}", req.port.0, req.target);
    let what = match (req.filter, &held.filter) {
        (Some(_), Some(filter)) => format!("{} is held by {who}", describe(filter)),
        (None, Some(filter)) => format!(
            "cannot {} it without a filter while {who} holds {}",
            mode_verb(req.mode),
            describe(filter)
        ),
        (Some(_), None) => format!(
            "an unfiltered {} of it is held by {who}; filters cannot share the port with it",
            mode_noun(held.mode)
        ),
        (None, None) => format!(
            "an unfiltered {} of it is held by {who}",
            mode_noun(held.mode)
        ),
    };
    format!(
        "{place}: {what} (ask them to stop, or take it over with --override-filter / \
         network.incoming.override_filter = true)"
    )
}

fn mode_verb(mode: IncomingMode) -> &'static str {
    match mode {
        IncomingMode::Steal => "steal",
        IncomingMode::Mirror => "mirror",
    }
}

fn mode_noun(mode: IncomingMode) -> &'static str {
    match mode {
        IncomingMode::Steal => "steal",
        IncomingMode::Mirror => "mirror",
    }
}

/// `4 s`, `4 min`, `2 h`.
pub fn format_age(age: Duration) -> String {
    let secs = age.as_secs();
    if secs < 60 {
        format!("{secs} s")
    } else if secs < 3600 {
        format!("{} min", secs / 60)
    } else {
        format!("{} h", secs / 3600)
    }
}

/// How a filter is named in messages: `header filter '^x-user: alice$'`.
pub fn describe(filter: &HttpFilter) -> String {
    match filter {
        HttpFilter::Header(p) => format!("header filter '{p}'"),
        HttpFilter::Path(p) => format!("path filter '{p}'"),
        HttpFilter::Method(m) => format!("method filter '{m}'"),
        HttpFilter::AllOf(_) | HttpFilter::AnyOf(_) => format!("filter '{}'", normalize(filter)),
    }
}

/// The text filters are compared by (see the module docs).
pub fn normalize(filter: &HttpFilter) -> String {
    match filter {
        HttpFilter::Header(p) => format!("header:{}", p.trim().to_lowercase()),
        HttpFilter::Path(p) => format!("path:{}", p.trim()),
        HttpFilter::Method(m) => format!("method:{}", m.trim().to_uppercase()),
        HttpFilter::AllOf(list) | HttpFilter::AnyOf(list) => {
            let mut parts: Vec<String> = list.iter().map(normalize).collect();
            parts.sort();
            parts.dedup();
            if let [only] = parts.as_slice() {
                return only.clone();
            }
            let kind = if matches!(filter, HttpFilter::AllOf(_)) {
                "all_of"
            } else {
                "any_of"
            };
            format!("{kind}({})", parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests;
