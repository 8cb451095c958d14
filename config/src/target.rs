//! Target strings (`pid/4242`, `deployment/api/container/app`, `targetless`)
//! parsed into [`Target`], and printed back in canonical form.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::{Config, Error, Issues, Result};

/// The forms a target may take, for error messages.
pub const TARGET_FORMS: &str = "pid/<PID>, pod/<name>[/container/<c>], \
     deployment/<name>[/container/<c>], statefulset/, replicaset/, job/, cronjob/, \
     rollout/ or service/<name>[/container/<c>], or targetless";

/// What the local process runs against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Target {
    /// A process on this machine (the local platform).
    Pid(u32),
    /// A pod, optionally one of its containers (else the first one).
    Pod {
        /// Pod name.
        name: String,
        /// Container name.
        container: Option<String>,
    },
    /// A pod of a deployment.
    Deployment {
        /// Deployment name.
        name: String,
        /// Container name.
        container: Option<String>,
    },
    /// A pod of a statefulset.
    StatefulSet {
        /// Statefulset name.
        name: String,
        /// Container name.
        container: Option<String>,
    },
    /// A pod of a replicaset.
    ReplicaSet {
        /// Replicaset name.
        name: String,
        /// Container name.
        container: Option<String>,
    },
    /// A pod of a job.
    Job {
        /// Job name.
        name: String,
        /// Container name.
        container: Option<String>,
    },
    /// A pod of the newest job of a cronjob.
    CronJob {
        /// Cronjob name.
        name: String,
        /// Container name.
        container: Option<String>,
    },
    /// A pod of an Argo rollout.
    Rollout {
        /// Rollout name.
        name: String,
        /// Container name.
        container: Option<String>,
    },
    /// A pod its selector matches.
    Service {
        /// Service name.
        name: String,
        /// Container name.
        container: Option<String>,
    },
    /// No pod: outgoing traffic and DNS go through an agent in the cluster.
    Targetless,
}

impl Target {
    /// The kind as written in target strings: `pid`, `pod`, `deployment`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Pid(_) => "pid",
            Target::Pod { .. } => "pod",
            Target::Deployment { .. } => "deployment",
            Target::StatefulSet { .. } => "statefulset",
            Target::ReplicaSet { .. } => "replicaset",
            Target::Job { .. } => "job",
            Target::CronJob { .. } => "cronjob",
            Target::Rollout { .. } => "rollout",
            Target::Service { .. } => "service",
            Target::Targetless => "targetless",
        }
    }

    /// Whether the target lives in a Kubernetes cluster (every kind but
    /// `pid/`; `targetless` needs a cluster too).
    pub fn is_kubernetes(&self) -> bool {
        !matches!(self, Target::Pid(_))
    }

    /// The workload's name and container, for the Kubernetes kinds.
    pub fn workload(&self) -> Option<(&str, Option<&str>)> {
        match self {
            Target::Pod { name, container }
            | Target::Deployment { name, container }
            | Target::StatefulSet { name, container }
            | Target::ReplicaSet { name, container }
            | Target::Job { name, container }
            | Target::CronJob { name, container }
            | Target::Rollout { name, container }
            | Target::Service { name, container } => Some((name, container.as_deref())),
            Target::Pid(_) | Target::Targetless => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.workload()) {
            (Target::Pid(pid), _) => write!(f, "pid/{pid}"),
            (_, Some((name, container))) => {
                write!(f, "{}/{name}", self.kind())?;
                match container {
                    Some(container) => write!(f, "/container/{container}"),
                    None => Ok(()),
                }
            }
            (_, None) => f.write_str(self.kind()),
        }
    }
}

impl FromStr for Target {
    type Err = Error;

    /// # Errors
    /// [`Error::Invalid`] with one issue on the key `target` saying what is wrong.
    fn from_str(s: &str) -> Result<Self> {
        parse(s).map_err(|message| {
            let mut issues = Issues::default();
            issues.push("target", message);
            Error::Invalid(issues)
        })
    }
}

impl TryFrom<String> for Target {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Target> for String {
    fn from(target: Target) -> String {
        target.to_string()
    }
}

impl Config {
    /// The parsed target; an unset target means [`Target::Targetless`].
    ///
    /// # Errors
    /// [`Error::Invalid`] when the target string does not parse.
    pub fn target(&self) -> Result<Target> {
        self.target
            .as_deref()
            .map_or(Ok(Target::Targetless), str::parse)
    }
}

fn parse(s: &str) -> std::result::Result<Target, String> {
    if s.is_empty() {
        return Err(format!("empty target (expected {TARGET_FORMS})"));
    }
    let (kind, rest) = match s.split_once('/') {
        Some((kind, rest)) => (kind, rest.split('/').collect::<Vec<_>>()),
        None => (s, Vec::new()),
    };
    match kind {
        "targetless" if rest.is_empty() => Ok(Target::Targetless),
        "targetless" => Err(format!("\"targetless\" takes no name, got {s:?}")),
        "pid" => match rest.as_slice() {
            [pid] => match pid.parse::<u32>() {
                Ok(pid) if pid > 0 => Ok(Target::Pid(pid)),
                _ => Err(format!(
                    "invalid PID {pid:?} in {s:?} (expected pid/<PID> with a positive number)"
                )),
            },
            _ => Err(format!("expected pid/<PID>, got {s:?}")),
        },
        kind => {
            let Some(kind) = canonical_kind(kind) else {
                return Err(format!(
                    "unknown target kind {kind:?} in {s:?} (expected {TARGET_FORMS})"
                ));
            };
            let (name, container) = match rest.as_slice() {
                [name] => (*name, None),
                [name, "container", container] => (*name, Some(*container)),
                _ => {
                    return Err(format!("expected {kind}/<name>[/container/<c>], got {s:?}"));
                }
            };
            check_name(name, 253, true)
                .map_err(|why| format!("invalid {kind} name {name:?} in {s:?}: {why}"))?;
            if let Some(container) = container {
                check_name(container, 63, false).map_err(|why| {
                    format!("invalid container name {container:?} in {s:?}: {why}")
                })?;
            }
            let name = name.to_owned();
            let container = container.map(str::to_owned);
            Ok(match kind {
                "pod" => Target::Pod { name, container },
                "deployment" => Target::Deployment { name, container },
                "statefulset" => Target::StatefulSet { name, container },
                "replicaset" => Target::ReplicaSet { name, container },
                "job" => Target::Job { name, container },
                "cronjob" => Target::CronJob { name, container },
                "service" => Target::Service { name, container },
                _ => Target::Rollout { name, container },
            })
        }
    }
}

/// The canonical kind for a prefix, accepting kubectl's plural and short
/// names (`deploy`, `sts`, `svc`, ...).
fn canonical_kind(prefix: &str) -> Option<&'static str> {
    Some(match prefix {
        "pod" | "pods" | "po" => "pod",
        "deployment" | "deployments" | "deploy" => "deployment",
        "statefulset" | "statefulsets" | "sts" => "statefulset",
        "replicaset" | "replicasets" | "rs" => "replicaset",
        "job" | "jobs" => "job",
        "cronjob" | "cronjobs" | "cj" => "cronjob",
        "rollout" | "rollouts" | "ro" => "rollout",
        "service" | "services" | "svc" => "service",
        _ => return None,
    })
}

/// Kubernetes object names: RFC 1123 labels (containers) or subdomains
/// (workloads, which may also contain dots).
pub(crate) fn check_name(name: &str, max: usize, dots: bool) -> std::result::Result<(), String> {
    let allowed = if dots {
        "lowercase letters, digits, '-' and '.'"
    } else {
        "lowercase letters, digits and '-'"
    };
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if name.len() > max {
        return Err(format!("longer than {max} characters"));
    }
    let valid_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    if !name.chars().all(valid_char) {
        return Err(format!("use only {allowed} (RFC 1123)"));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    // In a subdomain, every dot-separated label starts and ends alphanumeric.
    let bad_label = name
        .split('.')
        .any(|l| !alnum(l.chars().next()) || !alnum(l.chars().last()));
    if bad_label {
        let what = if dots {
            "each dot-separated part"
        } else {
            "the name"
        };
        return Err(format!(
            "{what} must start and end with a lowercase letter or digit (RFC 1123)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
