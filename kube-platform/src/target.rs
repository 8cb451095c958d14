//! Kubernetes target strings (`deployment/api/container/app`, `targetless`)
//! parsed into [`KubeTarget`] and printed back in canonical form.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// The forms a Kubernetes target may take, for error messages.
pub const KUBE_TARGET_FORMS: &str = "pod/<name>, deployment/<name>, statefulset/<name>, \
     replicaset/<name>, job/<name>, cronjob/<name>, rollout/<name> or service/<name>, \
     each optionally followed by /container/<c>; or targetless";

/// What kind of object a target names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetKind {
    /// A pod, by name.
    Pod,
    /// A `apps/v1` Deployment.
    Deployment,
    /// A `apps/v1` StatefulSet.
    StatefulSet,
    /// A `apps/v1` ReplicaSet.
    ReplicaSet,
    /// A `batch/v1` Job.
    Job,
    /// A `batch/v1` CronJob (its newest job's pods).
    CronJob,
    /// An Argo Rollout (`argoproj.io/v1alpha1`), with a selector or a `workloadRef`.
    Rollout,
    /// A Service (the pods its selector matches).
    Service,
}

impl TargetKind {
    /// Every kind, in the order `remora ls` lists them.
    pub const ALL: [TargetKind; 8] = [
        TargetKind::Pod,
        TargetKind::Deployment,
        TargetKind::StatefulSet,
        TargetKind::ReplicaSet,
        TargetKind::Job,
        TargetKind::CronJob,
        TargetKind::Rollout,
        TargetKind::Service,
    ];

    /// The prefix of the target string (`deployment`).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Pod => "pod",
            TargetKind::Deployment => "deployment",
            TargetKind::StatefulSet => "statefulset",
            TargetKind::ReplicaSet => "replicaset",
            TargetKind::Job => "job",
            TargetKind::CronJob => "cronjob",
            TargetKind::Rollout => "rollout",
            TargetKind::Service => "service",
        }
    }

    /// The kind for a prefix, accepting kubectl's short and plural names.
    pub fn from_prefix(prefix: &str) -> Option<TargetKind> {
        Some(match prefix.to_ascii_lowercase().as_str() {
            "pod" | "pods" | "po" => TargetKind::Pod,
            "deployment" | "deployments" | "deploy" => TargetKind::Deployment,
            "statefulset" | "statefulsets" | "sts" => TargetKind::StatefulSet,
            "replicaset" | "replicasets" | "rs" => TargetKind::ReplicaSet,
            "job" | "jobs" => TargetKind::Job,
            "cronjob" | "cronjobs" | "cj" => TargetKind::CronJob,
            "rollout" | "rollouts" | "ro" => TargetKind::Rollout,
            "service" | "services" | "svc" => TargetKind::Service,
            _ => return None,
        })
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes target: an object and optionally one container of its pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KubeTarget {
    /// A pod, or an object whose pods are picked from.
    Object {
        /// What kind of object.
        kind: TargetKind,
        /// Its name.
        name: String,
        /// The container, if named.
        container: Option<String>,
    },
    /// No pod: an agent pod of its own, for outgoing traffic and DNS.
    Targetless,
}

impl KubeTarget {
    /// The object part (`deployment/api`), without the container.
    pub fn object(&self) -> String {
        match self {
            KubeTarget::Object { kind, name, .. } => format!("{kind}/{name}"),
            KubeTarget::Targetless => "targetless".to_owned(),
        }
    }
}

impl fmt::Display for KubeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeTarget::Object {
                kind,
                name,
                container,
            } => {
                write!(f, "{kind}/{name}")?;
                if let Some(container) = container {
                    write!(f, "/container/{container}")?;
                }
                Ok(())
            }
            KubeTarget::Targetless => f.write_str("targetless"),
        }
    }
}

/// Whether `name` is a valid DNS-1123 subdomain (object names) or label
/// (container names when `label` is set).
fn valid_name(name: &str, label: bool) -> bool {
    let max = if label { 63 } else { 253 };
    !name.is_empty()
        && name.len() <= max
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (!label && b == b'.')
        })
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

impl FromStr for KubeTarget {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |why: &str| Error::InvalidTarget {
            target: s.to_owned(),
            reason: format!("{why}; expected {KUBE_TARGET_FORMS}"),
        };
        if s == "targetless" {
            return Ok(KubeTarget::Targetless);
        }
        let parts: Vec<&str> = s.split('/').collect();
        let (prefix, name, container) = match parts.as_slice() {
            [prefix, name] => (*prefix, *name, None),
            [prefix, name, "container", container] => (*prefix, *name, Some(*container)),
            [_, _, other, ..] if *other != "container" => {
                return Err(invalid(&format!("unexpected `{other}` after the name")));
            }
            _ => return Err(invalid("wrong number of `/`-separated parts")),
        };
        let kind = TargetKind::from_prefix(prefix)
            .ok_or_else(|| invalid(&format!("unknown kind `{prefix}`")))?;
        if !valid_name(name, false) {
            return Err(invalid(&format!("`{name}` is not a valid object name")));
        }
        if let Some(container) = container
            && !valid_name(container, true)
        {
            return Err(invalid(&format!(
                "`{container}` is not a valid container name"
            )));
        }
        Ok(KubeTarget::Object {
            kind,
            name: name.to_owned(),
            container: container.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests;
