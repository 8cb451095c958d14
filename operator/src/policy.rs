//! Policies: what sessions on some targets may not do, from a TOML file that
//! is reloaded when it changes.
//!
//! ```toml
//! [[policy]]
//! targets = ["pid/*", "deployment/payments*"]  # globs over canonical target names
//! block = ["steal-without-filter"]             # steal, steal-without-filter, mirror, outgoing, override
//! require_header_filter = "^x-user: .+$"       # see below
//! env_exclude = ["DB_PASSWORD", "AWS_*"]       # globs: removed from every environment reply
//! fs_not_found = ["^/var/run/secrets/"]        # regexes: these paths appear absent
//! outgoing_block = ["10.0.0.0/8:5432"]         # ip|CIDR|host|*.suffix [:port]
//! ```
//!
//! Every policy whose `targets` match applies; a refusal names the file and
//! the policy's index (`policy #1 in /etc/remora/policy.toml`).
//!
//! * `require_header_filter`: enforced by [`Policies::constrain_filter`]:
//!   the filter the agent gets is `all_of(header(<policy regex>), <the
//!   session's filter>)`, so whatever the session's filter says, only
//!   requests carrying a matching header reach it (`x-user: a|.*` cannot
//!   widen `^x-user: .+$`). Before that, as advice, a subscription is
//!   refused unless its filter is a header filter (or an `all_of` with one
//!   directly in it) whose pattern, with one leading `^` and one trailing
//!   `$` stripped, the policy regex matches: `^x-user: alice$` passes
//!   `^x-user: .+$`; an unfiltered steal or a path filter does not.
//! * `fs_not_found`, and `env_exclude` for `/proc/<pid>/environ` and the
//!   like: sent to the agent as the session's
//!   [`SessionPolicy`](remora_protocol::session::SessionPolicy)
//!   ([`Policies::session_policy`]); the agent decides on each path as the
//!   target resolves it (`//`, `..`, symlinks).
//! * `outgoing_block`: IP and CIDR entries match the destination of an
//!   outgoing connection; host names (`db`, `*.internal`) match names the
//!   session resolves through the target, and then the addresses they
//!   resolved to. No port: every port.

pub mod labels;

use crate::error::{Error, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};
use ipnet::IpNet;
pub use labels::{LabelOperator, LabelRequirement, LabelSelector};
use regex::{Regex, RegexBuilder};
use remora_protocol::RemoteAddr;
use remora_protocol::incoming::{HttpFilter, IncomingMode};
use remora_protocol::session::{PathRule, SessionPolicy};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the policy file is checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    policy: Vec<PolicySpec>,
}

/// One policy's rules, as a `[[policy]]` table or a policy object says them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Globs over canonical target names.
    pub targets: Vec<String>,
    /// Targets selected by name globs *and* labels (policy objects'
    /// `matchLabels` / `matchExpressions`). Not a key of the TOML file.
    #[serde(skip)]
    pub labelled_targets: Vec<LabelledTargets>,
    /// Platform user names it applies to; with `groups` both empty: everyone.
    /// Not a key of the TOML file (the local platform has no identities).
    #[serde(skip)]
    pub users: Vec<String>,
    /// Platform groups it applies to.
    #[serde(skip)]
    pub groups: Vec<String>,
    /// What it blocks.
    #[serde(default)]
    pub block: Vec<Block>,
    /// The header filter every subscription needs.
    #[serde(default)]
    pub require_header_filter: Option<String>,
    /// Variables withheld.
    #[serde(default)]
    pub env_exclude: Vec<String>,
    /// Paths that appear absent.
    #[serde(default)]
    pub fs_not_found: Vec<String>,
    /// Destinations outgoing connections may not reach.
    #[serde(default)]
    pub outgoing_block: Vec<String>,
}

/// Target name globs that select a target only when its labels match too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelledTargets {
    /// Globs over canonical target names.
    pub globs: Vec<String>,
    /// What the target object's labels must meet.
    pub labels: LabelSelector,
}

/// Whom a session runs as, for policies naming users or groups, and the
/// labels of its target, for policies selecting targets by label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// The platform's user name.
    pub user: Option<String>,
    /// Its groups.
    pub groups: Vec<String>,
    /// The target object's labels; `None` when unknown (then a selector
    /// with labels applies whatever they are: it restricts more, never less).
    pub target_labels: Option<BTreeMap<String, String>>,
}

/// What a policy's `block` list may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Block {
    /// Any steal.
    Steal,
    /// A steal without an HTTP filter.
    StealWithoutFilter,
    /// Any mirror.
    Mirror,
    /// Any outgoing connection.
    Outgoing,
    /// Taking a port over from another session (`--override-filter`).
    Override,
}

impl Block {
    fn name(self) -> &'static str {
        match self {
            Block::Steal => "steal",
            Block::StealWithoutFilter => "steal-without-filter",
            Block::Mirror => "mirror",
            Block::Outgoing => "outgoing",
            Block::Override => "override",
        }
    }
}

/// One `outgoing_block` entry.
#[derive(Debug, Clone)]
pub struct Destination {
    host: DestHost,
    port: Option<u16>,
    text: String,
}

#[derive(Debug, Clone)]
enum DestHost {
    Net(IpNet),
    /// Lower-case name, or `*.suffix`.
    Name(String),
}

impl Destination {
    /// Parse `ip|CIDR|host|*.suffix[:port]` (IPv6 with a port in brackets:
    /// `[fd00::/8]:5432`).
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn parse(text: &str) -> std::result::Result<Destination, String> {
        let trimmed = text.trim();
        let (host, port) = if let Some(rest) = trimmed.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: missing ']'"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("{text:?}: expected ':PORT' after ']'")),
            };
            (host, port)
        } else {
            match trimmed.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                _ => (trimmed, None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("{text:?}: invalid port {p:?}"))
            })
            .transpose()?;
        let host = if let Ok(net) = host.parse::<IpNet>() {
            DestHost::Net(net)
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            DestHost::Net(IpNet::from(ip))
        } else {
            let name = host.to_ascii_lowercase();
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            let valid = !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
            if !valid {
                return Err(format!(
                    "{text:?}: expected an IP address, a CIDR, a host name or *.suffix"
                ));
            }
            DestHost::Name(name)
        };
        Ok(Destination {
            host,
            port,
            text: trimmed.to_owned(),
        })
    }

    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    fn matches_ip(&self, ip: IpAddr, port: u16) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        matches!(&self.host, DestHost::Net(net) if net.contains(&ip)) && self.port_matches(port)
    }

    /// Whether this entry names `name` (a host-name entry).
    pub fn matches_name(&self, name: &str) -> bool {
        let DestHost::Name(pattern) = &self.host else {
            return false;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => name.ends_with(&format!(".{suffix}")),
            None => name == *pattern,
        }
    }

    /// The port this entry is limited to.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

/// An address a session resolved a blocked host name to.
#[derive(Debug, Clone)]
pub struct LearnedBlock {
    /// The address.
    pub ip: IpAddr,
    /// The name that resolved to it.
    pub name: String,
    /// The `outgoing_block` entry naming it.
    pub dest: Destination,
    /// `policy #N in FILE`.
    pub label: String,
}

/// One compiled `[[policy]]`.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `policy #N in FILE`.
    pub label: String,
    targets: GlobSet,
    labelled: Vec<(GlobSet, LabelSelector)>,
    users: Vec<String>,
    groups: Vec<String>,
    block: Vec<Block>,
    require_header_filter: Option<(String, Regex)>,
    env_exclude: GlobSet,
    fs_not_found: Vec<Regex>,
    outgoing_block: Vec<Destination>,
}

impl Policy {
    fn compile(spec: PolicySpec, label: String) -> std::result::Result<Policy, String> {
        let glob_set = |globs: &[String], key: &str| {
            let mut builder = GlobSetBuilder::new();
            for glob in globs {
                builder.add(
                    Glob::new(glob).map_err(|e| format!("{key}: invalid glob {glob:?}: {e}"))?,
                );
            }
            builder.build().map_err(|e| format!("{key}: {e}"))
        };
        if spec.targets.is_empty() && spec.labelled_targets.is_empty() {
            return Err("targets is empty: name at least one target glob (\"*\" for all)".into());
        }
        let targets = glob_set(&spec.targets, "targets")?;
        let labelled = spec
            .labelled_targets
            .iter()
            .map(|t| Ok((glob_set(&t.globs, "targets")?, t.labels.clone())))
            .collect::<std::result::Result<_, String>>()?;
        let env_exclude = glob_set(&spec.env_exclude, "env_exclude")?;
        let require_header_filter = spec
            .require_header_filter
            .map(|re| {
                RegexBuilder::new(&re)
                    .case_insensitive(true)
                    .build()
                    .map(|compiled| (re.clone(), compiled))
                    .map_err(|e| format!("require_header_filter: invalid regex {re:?}: {e}"))
            })
            .transpose()?;
        let fs_not_found = spec
            .fs_not_found
            .iter()
            .map(|re| {
                Regex::new(re).map_err(|e| format!("fs_not_found: invalid regex {re:?}: {e}"))
            })
            .collect::<std::result::Result<_, _>>()?;
        let outgoing_block = spec
            .outgoing_block
            .iter()
            .map(|d| Destination::parse(d).map_err(|e| format!("outgoing_block: {e}")))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Policy {
            label,
            targets,
            labelled,
            users: spec.users,
            groups: spec.groups,
            block: spec.block,
            require_header_filter,
            env_exclude,
            fs_not_found,
            outgoing_block,
        })
    }

    fn applies_to(&self, target: &str) -> bool {
        self.targets.is_match(target) || self.labelled.iter().any(|(g, _)| g.is_match(target))
    }

    /// This policy for a target with `labels`: its selectors whose labels
    /// do not match are dropped (`None` when nothing selects any more).
    fn for_labels(&self, labels: &BTreeMap<String, String>) -> Option<Policy> {
        let mut policy = self.clone();
        policy
            .labelled
            .retain(|(_, selector)| selector.matches(labels));
        (!policy.targets.is_empty() || !policy.labelled.is_empty()).then_some(policy)
    }

    /// Whether it applies to sessions of `subject` (a policy naming no
    /// users or groups applies to everyone).
    fn applies_to_subject(&self, subject: &Subject) -> bool {
        (self.users.is_empty() && self.groups.is_empty())
            || subject
                .user
                .as_ref()
                .is_some_and(|u| self.users.contains(u))
            || subject.groups.iter().any(|g| self.groups.contains(g))
    }
}

/// A subscription, as the policies see it.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeCheck<'a> {
    /// Canonical target name.
    pub target: &'a str,
    /// The target's port.
    pub port: u16,
    /// Steal or mirror.
    pub mode: IncomingMode,
    /// The session's filter.
    pub filter: Option<&'a HttpFilter>,
    /// Whether it asks to take the port over.
    pub take_over: bool,
}

/// Every policy of one version of the file.
#[derive(Debug, Default)]
pub struct Policies {
    list: Vec<Arc<Policy>>,
}

impl Policies {
    /// Parse and compile a policy file's text; `path` only names it in messages.
    ///
    /// # Errors
    /// The first problem, naming the policy's index.
    pub fn parse(text: &str, path: &Path) -> std::result::Result<Policies, String> {
        let spec: FileSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        let list = spec
            .policy
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let label = format!("policy #{} in {}", i + 1, path.display());
                Policy::compile(spec, label.clone())
                    .map(Arc::new)
                    .map_err(|e| format!("{label}: {e}"))
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(Policies { list })
    }

    /// Compile policies from another source (policy objects), each with the
    /// label refusals name (`RemoraPolicy shop/payments`). An invalid one is
    /// left out, and its error returned beside the others.
    pub fn from_specs(specs: Vec<(String, PolicySpec)>) -> (Policies, Vec<String>) {
        let mut errors = Vec::new();
        let list = specs
            .into_iter()
            .filter_map(|(label, spec)| match Policy::compile(spec, label.clone()) {
                Ok(policy) => Some(Arc::new(policy)),
                Err(e) => {
                    errors.push(format!("{label}: {e}"));
                    None
                }
            })
            .collect();
        (Policies { list }, errors)
    }

    /// The policies that apply to sessions of `subject`.
    pub fn for_subject(&self, subject: &Subject) -> Policies {
        Policies {
            list: self
                .list
                .iter()
                .filter(|p| p.applies_to_subject(subject))
                .filter_map(|p| match &subject.target_labels {
                    Some(labels) if !p.labelled.is_empty() => p.for_labels(labels).map(Arc::new),
                    _ => Some(p.clone()),
                })
                .collect(),
        }
    }

    /// Read and parse `path`.
    ///
    /// # Errors
    /// [`Error::Policy`].
    pub fn load(path: &Path) -> Result<Policies> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Policy {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Policies::parse(&text, path).map_err(|reason| Error::Policy {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// How many policies there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn applying<'a>(&'a self, target: &str) -> impl Iterator<Item = &'a Policy> + 'a {
        let matching: Vec<&'a Policy> = self
            .list
            .iter()
            .map(|p| &**p)
            .filter(|p| p.applies_to(target))
            .collect();
        matching.into_iter()
    }

    /// May this subscription go ahead?
    ///
    /// # Errors
    /// Which policy refused what.
    pub fn check_subscribe(&self, req: &SubscribeCheck<'_>) -> std::result::Result<(), String> {
        let what = match req.mode {
            IncomingMode::Steal => "stealing",
            IncomingMode::Mirror => "mirroring",
        };
        let place = format!("port {} on {}", req.port, req.target);
        for policy in self.applying(req.target) {
            for block in &policy.block {
                let refused = match block {
                    Block::Steal => req.mode == IncomingMode::Steal,
                    Block::StealWithoutFilter => {
                        req.mode == IncomingMode::Steal && req.filter.is_none()
                    }
                    Block::Mirror => req.mode == IncomingMode::Mirror,
                    Block::Override => req.take_over,
                    Block::Outgoing => false,
                };
                if refused {
                    let act = match block {
                        Block::Override => format!("taking over {place} from other sessions"),
                        Block::StealWithoutFilter => {
                            format!("{what} {place} without an HTTP filter")
                        }
                        _ => format!("{what} {place}"),
                    };
                    return Err(format!(
                        "{act} is blocked by {} (block = [\"{}\"])",
                        policy.label,
                        block.name()
                    ));
                }
            }
            if let Some((text, regex)) = &policy.require_header_filter
                && !header_filter_passes(req.filter, regex)
            {
                return Err(format!(
                    "{what} {place} needs a header filter matching {text:?} \
                     (require_header_filter of {}); use e.g. --http-header-filter \
                     '^x-user: <you>$'",
                    policy.label
                ));
            }
        }
        Ok(())
    }

    /// May the session connect to `remote` (resolved names it looked up:
    /// `resolved`, each with the entry that blocks it)?
    ///
    /// # Errors
    /// Which policy refused which destination.
    pub fn check_outgoing(
        &self,
        target: &str,
        remote: &RemoteAddr,
        learned: &[LearnedBlock],
    ) -> std::result::Result<(), String> {
        for policy in self.applying(target) {
            if policy.block.contains(&Block::Outgoing) {
                return Err(format!(
                    "outgoing connections from {target} (here to {remote}) are blocked by {} \
                     (block = [\"outgoing\"])",
                    policy.label
                ));
            }
            if let RemoteAddr::Ip(addr) = remote {
                if let Some(dest) = policy
                    .outgoing_block
                    .iter()
                    .find(|d| d.matches_ip(addr.ip(), addr.port()))
                {
                    return Err(format!(
                        "connecting to {addr} from {target} is blocked by {} \
                         (outgoing_block {:?})",
                        policy.label, dest.text
                    ));
                }
            }
        }
        if let RemoteAddr::Ip(addr) = remote
            && let Some(hit) = learned
                .iter()
                .find(|l| l.ip == addr.ip() && l.dest.port_matches(addr.port()))
        {
            return Err(format!(
                "connecting to {addr} ({}) from {target} is blocked by {} (outgoing_block {:?})",
                hit.name, hit.label, hit.dest.text
            ));
        }
        Ok(())
    }

    /// The host-name `outgoing_block` entries matching `name` on `target`,
    /// with their policy's label.
    pub fn blocked_name(&self, target: &str, name: &str) -> Vec<(String, Destination)> {
        self.applying(target)
            .flat_map(|p| {
                p.outgoing_block
                    .iter()
                    .filter(|d| d.matches_name(name))
                    .map(|d| (p.label.clone(), d.clone()))
            })
            .collect()
    }

    /// The policy hiding variable `name` from sessions on `target`.
    pub fn env_excluded(&self, target: &str, name: &str) -> Option<&str> {
        self.applying(target)
            .find(|p| p.env_exclude.is_match(name))
            .map(|p| p.label.as_str())
    }

    /// What the agent enforces for a session on `target`: every
    /// `fs_not_found` rule, and whether process environments are hidden
    /// (any `env_exclude`).
    pub fn session_policy(&self, target: &str) -> SessionPolicy {
        let mut policy = SessionPolicy::default();
        for p in self.applying(target) {
            policy
                .fs_not_found
                .extend(p.fs_not_found.iter().map(|re| PathRule {
                    pattern: re.as_str().to_owned(),
                    label: p.label.clone(),
                }));
            if policy.hide_process_env.is_none() && !p.env_exclude.is_empty() {
                policy.hide_process_env = Some(p.label.clone());
            }
        }
        policy
    }

    /// The filter a subscription on `target` really gets: `filter`, within
    /// every `require_header_filter` that applies (`all_of` of them all), so
    /// no filter text can widen the requirement.
    pub fn constrain_filter(&self, target: &str, filter: Option<HttpFilter>) -> Option<HttpFilter> {
        let required: Vec<HttpFilter> = self
            .applying(target)
            .filter_map(|p| p.require_header_filter.as_ref())
            .map(|(text, _)| HttpFilter::Header(text.clone()))
            .collect();
        if required.is_empty() {
            return filter;
        }
        let mut all = required;
        all.extend(filter);
        Some(HttpFilter::AllOf(all))
    }

    /// The policy (and pattern) making `path` appear absent on `target`.
    pub fn fs_hidden(&self, target: &str, path: &str) -> Option<(&str, &str)> {
        self.applying(target).find_map(|p| {
            p.fs_not_found
                .iter()
                .find(|re| re.is_match(path))
                .map(|re| (p.label.as_str(), re.as_str()))
        })
    }
}

/// See the module docs for the rule.
fn header_filter_passes(filter: Option<&HttpFilter>, regex: &Regex) -> bool {
    let header_ok = |pattern: &str| {
        let p = pattern.trim();
        let p = p.strip_prefix('^').unwrap_or(p);
        let p = p.strip_suffix('$').unwrap_or(p);
        regex.is_match(p)
    };
    match filter {
        Some(HttpFilter::Header(p)) => header_ok(p),
        Some(HttpFilter::AllOf(list)) => list
            .iter()
            .any(|f| matches!(f, HttpFilter::Header(p) if header_ok(p))),
        _ => false,
    }
}

/// The current policies, reloaded in the background when the file changes.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PolicyStore {
    current: Arc<RwLock<Arc<Policies>>>,
    path: Option<PathBuf>,
    /// The file's content when it was loaded: the watcher's first reference.
    loaded: Option<Vec<u8>>,
    /// Only the policies applying to this subject are seen (a session's view).
    subject: Option<Arc<Subject>>,
}

impl PolicyStore {
    /// No policies at all.
    pub fn empty() -> Self {
        PolicyStore::default()
    }

    /// These policies, never reloaded (tests, embedding).
    pub fn fixed(policies: Policies) -> Self {
        PolicyStore {
            current: Arc::new(RwLock::new(Arc::new(policies))),
            path: None,
            loaded: None,
            subject: None,
        }
    }

    /// Replace the policies in force (a source other than a file: policy
    /// objects). Every view of this store sees the new ones at once.
    pub fn replace(&self, policies: Policies) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policies);
    }

    /// This store as seen by sessions of `subject`: policies naming other
    /// users and groups are left out.
    pub fn for_subject(&self, subject: Subject) -> PolicyStore {
        PolicyStore {
            subject: Some(Arc::new(subject)),
            ..self.clone()
        }
    }

    /// Load `path` now (an error here stops the operator from starting).
    ///
    /// # Errors
    /// [`Error::Policy`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::Policy {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let policies =
            Policies::parse(&String::from_utf8_lossy(&bytes), path).map_err(|reason| {
                Error::Policy {
                    path: path.to_path_buf(),
                    reason,
                }
            })?;
        tracing::info!(path = %path.display(), policies = policies.len(), "policies loaded");
        Ok(PolicyStore {
            current: Arc::new(RwLock::new(Arc::new(policies))),
            path: Some(path.to_path_buf()),
            loaded: Some(bytes),
            subject: None,
        })
    }

    /// The policies in force now (for this store's subject, if it has one).
    pub fn current(&self) -> Arc<Policies> {
        let all = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match &self.subject {
            Some(subject) => Arc::new(all.for_subject(subject)),
            None => all,
        }
    }

    /// Check the file every `interval` until `cancel`; a changed file that
    /// parses replaces the policies, a broken one is logged and the old
    /// policies stay in force.
    pub async fn watch(self, interval: Duration, cancel: tokio_util::sync::CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let mut last = self.loaded.clone();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(&path))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
            };
            if now == last {
                continue;
            }
            last = now.clone();
            let Some(bytes) = now else {
                tracing::error!(path = %path.display(), "policy file unreadable; keeping the current policies");
                continue;
            };
            match Policies::parse(&String::from_utf8_lossy(&bytes), &path) {
                Ok(policies) => {
                    tracing::info!(path = %path.display(), policies = policies.len(), "policies reloaded");
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policies);
                }
                Err(reason) => tracing::error!(
                    path = %path.display(),
                    %reason,
                    "policy file is invalid; keeping the current policies"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests;
