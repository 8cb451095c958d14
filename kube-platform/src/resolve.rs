//! Target resolution as kubectl users expect it, as pure functions over
//! `k8s-openapi` objects: which pod of an owner, which container of a pod, and
//! errors that say what was found.
//!
//! The thin client layer ([`crate::client`]) fetches the objects; everything
//! that decides lives here so unit tests need no cluster.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use std::collections::BTreeMap;

use crate::{Error, Result};

/// Annotation naming the container kubectl picks by default.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// Names of service-mesh sidecars, never picked unless named explicitly.
pub const MESH_SIDECARS: &[&str] = &[
    "istio-proxy",
    "istio-init",
    "linkerd-proxy",
    "linkerd-init",
    "envoy",
    "envoy-sidecar",
    "consul-dataplane",
    "kuma-sidecar",
    "cilium-envoy",
    "vault-agent",
];

/// The pod and container a target resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPod {
    /// Pod name.
    pub pod: String,
    /// Its namespace.
    pub namespace: String,
    /// The node it runs on.
    pub node: Option<String>,
    /// Its IP.
    pub pod_ip: Option<String>,
    /// The container.
    pub container: String,
    /// The container's runtime id without the scheme (`containerd://` stripped).
    pub container_id: Option<String>,
    /// The runtime scheme of the container id (`containerd`, `cri-o`, `docker`).
    pub runtime: Option<String>,
}

/// Whether a pod may be a target: Running, Ready and not terminating.
pub fn pod_is_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// A short description of why a pod is or is not ready, as `kubectl get pods`
/// would show it: `Pending: ImagePullBackOff`, `Running, not ready`, `Terminating`.
pub fn pod_state(pod: &Pod) -> String {
    if pod.metadata.deletion_timestamp.is_some() {
        return "Terminating".to_owned();
    }
    let Some(status) = &pod.status else {
        return "no status yet".to_owned();
    };
    let phase = status.phase.as_deref().unwrap_or("Unknown");
    let waiting = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let state = c.state.as_ref()?;
            if let Some(w) = &state.waiting {
                return w.reason.clone();
            }
            let t = state.terminated.as_ref()?;
            Some(
                t.reason
                    .clone()
                    .unwrap_or_else(|| format!("exit code {}", t.exit_code)),
            )
        });
    let unscheduled = status.conditions.iter().flatten().find_map(|c| {
        (c.type_ == "PodScheduled" && c.status == "False").then(|| {
            c.reason
                .clone()
                .unwrap_or_else(|| "Unschedulable".to_owned())
        })
    });
    match (phase, waiting.or(unscheduled)) {
        ("Running", _) if pod_is_ready(pod) => "Running".to_owned(),
        ("Running", Some(reason)) => format!("Running, not ready: {reason}"),
        ("Running", None) => "Running, not ready".to_owned(),
        (phase, Some(reason)) => format!("{phase}: {reason}"),
        (phase, None) => phase.to_owned(),
    }
}

fn requirement_matches(req: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// Whether `labels` match a label selector. An empty selector matches
/// nothing here: remora never targets every pod of a namespace.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exprs = selector.match_expressions.as_deref().unwrap_or_default();
    let map = selector.match_labels.as_ref();
    if exprs.is_empty() && map.is_none_or(BTreeMap::is_empty) {
        return false;
    }
    map.into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && exprs.iter().all(|r| requirement_matches(r, labels))
}

/// A selector in the `key=value,key in (a,b)` form `kubectl get -l` takes.
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in selector.match_expressions.iter().flatten() {
        let values = r.values.as_deref().unwrap_or_default().join(",");
        parts.push(match r.operator.as_str() {
            "In" => format!("{} in ({values})", r.key),
            "NotIn" => format!("{} notin ({values})", r.key),
            "Exists" => r.key.clone(),
            "DoesNotExist" => format!("!{}", r.key),
            other => format!("{} {other} ({values})", r.key),
        });
    }
    parts.join(",")
}

/// A plain `key: value` selector (Services) as a [`LabelSelector`].
pub fn map_selector(map: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(map.clone()),
        match_expressions: None,
    }
}

fn missing_selector(target: &str) -> Error {
    Error::Resolve(format!("{target} has no pod selector"))
}

/// The pod selector of a Deployment.
pub fn deployment_selector(d: &Deployment) -> Option<LabelSelector> {
    Some(d.spec.selector.clone())
}

/// The pod selector of a StatefulSet.
pub fn statefulset_selector(s: &StatefulSet) -> Option<LabelSelector> {
    Some(s.spec.selector.clone())
}

/// The pod selector of a ReplicaSet.
pub fn replicaset_selector(r: &ReplicaSet) -> Option<LabelSelector> {
    Some(r.spec.selector.clone())
}

/// The pod selector of a Job (set by the API server when the job is created).
pub fn job_selector(j: &Job) -> Option<LabelSelector> {
    j.spec.as_ref().and_then(|s| s.selector.clone())
}

/// The pod selector of a Service; `None` for a service without one
/// (its endpoints are managed by hand and name no pods).
pub fn service_selector(s: &Service) -> Option<LabelSelector> {
    let map = s.spec.as_ref()?.selector.as_ref()?;
    (!map.is_empty()).then(|| map_selector(map))
}

/// The newest job a CronJob owns, by creation time then name.
pub fn cronjob_newest_job<'a>(cronjob: &CronJob, jobs: &'a [Job]) -> Option<&'a Job> {
    let uid = cronjob.metadata.uid.as_deref();
    let name = cronjob.metadata.name.as_deref();
    jobs.iter()
        .filter(|j| {
            j.metadata.owner_references.iter().flatten().any(|o| {
                o.kind == "CronJob"
                    && (Some(o.uid.as_str()) == uid
                        || (uid.is_none() && Some(o.name.as_str()) == name))
            })
        })
        .max_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        })
}

/// Where an Argo Rollout's pods are found.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutPods {
    /// Its own `spec.selector`.
    Selector(LabelSelector),
    /// `spec.workloadRef`: the pods are those of another workload (a Deployment
    /// or ReplicaSet) whose selector is used.
    WorkloadRef {
        /// `Deployment` or `ReplicaSet`.
        kind: String,
        /// Its name.
        name: String,
    },
}

/// Read an Argo Rollout (as untyped JSON, the CRD is not ours) for where its pods are.
///
/// # Errors
/// [`Error::Resolve`] when it has neither a selector nor a `workloadRef`.
pub fn rollout_pods(target: &str, rollout: &serde_json::Value) -> Result<RolloutPods> {
    let spec = &rollout["spec"];
    if let Some(r) = spec.get("workloadRef").filter(|r| r.is_object()) {
        let kind = r["kind"].as_str().unwrap_or("Deployment").to_owned();
        let name = r["name"]
            .as_str()
            .ok_or_else(|| Error::Resolve(format!("{target} has a workloadRef without a name")))?
            .to_owned();
        return Ok(RolloutPods::WorkloadRef { kind, name });
    }
    let selector = spec
        .get("selector")
        .filter(|s| s.is_object())
        .ok_or_else(|| missing_selector(target))?;
    serde_json::from_value(selector.clone())
        .map(RolloutPods::Selector)
        .map_err(|e| Error::Resolve(format!("{target} has an invalid selector: {e}")))
}

/// The label Argo Rollouts puts on a rollout's ReplicaSets and their pods.
pub const ROLLOUT_HASH_LABEL: &str = "rollouts-pod-template-hash";

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.uid == uid)
}

/// The ReplicaSets an Argo Rollout owns (as the Argo controller creates them,
/// also for a `workloadRef`), the stable one (`status.stableRS`, a
/// pod-template hash) first, then by creation time and name.
pub fn rollout_replicasets<'a>(
    rollout: &serde_json::Value,
    sets: &'a [ReplicaSet],
) -> Vec<&'a ReplicaSet> {
    let Some(uid) = rollout["metadata"]["uid"].as_str() else {
        return Vec::new();
    };
    let stable = rollout["status"]["stableRS"].as_str();
    let mut owned: Vec<&ReplicaSet> = sets.iter().filter(|r| owned_by(&r.metadata, uid)).collect();
    let is_stable = |r: &ReplicaSet| {
        stable.is_some()
            && r.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ROLLOUT_HASH_LABEL))
                .map(String::as_str)
                == stable
    };
    owned.sort_by(|a, b| {
        (
            !is_stable(a),
            &a.metadata.creation_timestamp,
            &a.metadata.name,
        )
            .cmp(&(
                !is_stable(b),
                &b.metadata.creation_timestamp,
                &b.metadata.name,
            ))
    });
    owned
}

/// Pick the pod of an Argo Rollout: the first ready pod of its ReplicaSets
/// in [`rollout_replicasets`] order (the stable ReplicaSet's first), each
/// set's pods oldest first. Pods that only match the selector (a
/// `workloadRef`'s Deployment that was not scaled down) are not the rollout's.
///
/// # Errors
/// [`Error::NoReadyPod`] listing the rollout's pods and their states.
pub fn pick_rollout_pod<'a>(
    target: &str,
    namespace: &str,
    sets: &[&ReplicaSet],
    pods: &'a [Pod],
) -> Result<&'a Pod> {
    let mut candidates: Vec<&Pod> = Vec::new();
    for set in sets {
        let Some(uid) = set.metadata.uid.as_deref() else {
            continue;
        };
        let mut of_set: Vec<&Pod> = pods.iter().filter(|p| owned_by(&p.metadata, uid)).collect();
        of_set.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        });
        candidates.extend(of_set);
    }
    if let Some(pod) = candidates.iter().find(|p| pod_is_ready(p)) {
        return Ok(pod);
    }
    let found = if candidates.is_empty() {
        let names: Vec<&str> = sets
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        format!("its replica sets {} have no pods", names.join(", "))
    } else {
        pod_list(&candidates)
    };
    Err(Error::NoReadyPod {
        target: target.to_owned(),
        namespace: namespace.to_owned(),
        found,
    })
}

/// The ReplicaSets a Deployment owns (their `ownerReferences` name its uid),
/// as the deployment controller creates them; none when it has no uid.
pub fn deployment_replicasets<'a>(
    deployment: &Deployment,
    sets: &'a [ReplicaSet],
) -> Vec<&'a ReplicaSet> {
    let Some(uid) = deployment.metadata.uid.as_deref() else {
        return Vec::new();
    };
    sets.iter().filter(|r| owned_by(&r.metadata, uid)).collect()
}

/// Which of the pods an owner's selector matches are the owner's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners<'a> {
    /// Every pod the selector matches (a Service, which owns no pods).
    Any,
    /// Only pods whose `ownerReferences` name one of these uids: the owner
    /// itself (StatefulSet, ReplicaSet, Job) or a Deployment's ReplicaSets.
    /// Another owner's pods with the same labels (an Argo Rollout with a
    /// `workloadRef` to the Deployment) are not picked.
    Uids(&'a [&'a str]),
}

impl Owners<'_> {
    fn own(self, pod: &Pod) -> bool {
        match self {
            Owners::Any => true,
            Owners::Uids(uids) => uids.iter().any(|uid| owned_by(&pod.metadata, uid)),
        }
    }
}

/// Pick the first ready pod among those `selector` matches, ordered by creation
/// time then name (oldest first, so repeated runs pick the same pod).
///
/// # Errors
/// [`Error::NoReadyPod`] listing what was found, each pod with its state.
pub fn pick_ready_pod<'a>(
    target: &str,
    namespace: &str,
    selector: &LabelSelector,
    pods: &'a [Pod],
) -> Result<&'a Pod> {
    pick_owned_pod(target, namespace, selector, Owners::Any, pods)
}

fn pod_list(pods: &[&Pod]) -> String {
    pods.iter()
        .map(|p| {
            format!(
                "{} ({})",
                p.metadata.name.as_deref().unwrap_or("?"),
                pod_state(p)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// As [`pick_ready_pod`], among the pods of `owners` only.
///
/// # Errors
/// [`Error::NoReadyPod`] listing the owner's pods, each with its state, or
/// the pods of other owners that its selector matches.
pub fn pick_owned_pod<'a>(
    target: &str,
    namespace: &str,
    selector: &LabelSelector,
    owners: Owners<'_>,
    pods: &'a [Pod],
) -> Result<&'a Pod> {
    let (mut own, mut others): (Vec<&Pod>, Vec<&Pod>) = pods
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| selector_matches(selector, l))
        })
        .partition(|p| owners.own(p));
    for list in [&mut own, &mut others] {
        list.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        });
    }
    if let Some(pod) = own.iter().find(|p| pod_is_ready(p)) {
        return Ok(pod);
    }
    let found = match (own.is_empty(), others.is_empty()) {
        (false, _) => pod_list(&own),
        (true, true) => format!("no pod matches its selector {}", selector_string(selector)),
        (true, false) => format!(
            "none of the pods its selector {} matches is its own: {}",
            selector_string(selector),
            pod_list(&others)
        ),
    };
    Err(Error::NoReadyPod {
        target: target.to_owned(),
        namespace: namespace.to_owned(),
        found,
    })
}

/// Check a pod named directly.
///
/// # Errors
/// [`Error::NoReadyPod`] with its state when it is not Running, Ready and alive.
pub fn check_pod<'a>(target: &str, namespace: &str, pod: &'a Pod) -> Result<&'a Pod> {
    if pod_is_ready(pod) {
        return Ok(pod);
    }
    Err(Error::NoReadyPod {
        target: target.to_owned(),
        namespace: namespace.to_owned(),
        found: format!(
            "{} ({})",
            pod.metadata.name.as_deref().unwrap_or("?"),
            pod_state(pod)
        ),
    })
}

/// Pick the container: the one named, else the `default-container`
/// annotation's, else the first that is not a mesh sidecar.
///
/// # Errors
/// [`Error::UnknownContainer`] naming the pod's containers.
pub fn pick_container(pod: &Pod, explicit: Option<&str>) -> Result<String> {
    let names: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| c.name.as_str())
        .collect();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let unknown = |wanted: &str, source: &str| Error::UnknownContainer {
        pod: pod_name.clone(),
        container: wanted.to_owned(),
        origin: source.to_owned(),
        available: names.join(", "),
    };
    if let Some(name) = explicit {
        return names
            .contains(&name)
            .then(|| name.to_owned())
            .ok_or_else(|| unknown(name, "named in the target"));
    }
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION));
    if let Some(name) = annotated {
        return names
            .contains(&name.as_str())
            .then(|| name.clone())
            .ok_or_else(|| unknown(name, DEFAULT_CONTAINER_ANNOTATION));
    }
    names
        .iter()
        .find(|n| !MESH_SIDECARS.contains(n))
        .or(names.first())
        .map(|n| (*n).to_owned())
        .ok_or_else(|| unknown("(any)", "the pod has no containers"))
}

/// Describe the resolved pod and container, with the container's runtime id.
pub fn resolved(pod: &Pod, container: String) -> ResolvedPod {
    let status = pod.status.as_ref();
    let id = status
        .into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .find(|c| c.name == container)
        .and_then(|c| c.container_id.clone());
    let (runtime, container_id) = match id.as_deref().and_then(|id| id.split_once("://")) {
        Some((scheme, id)) => (Some(scheme.to_owned()), Some(id.to_owned())),
        None => (None, id),
    };
    ResolvedPod {
        pod: pod.metadata.name.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        pod_ip: status.and_then(|s| s.pod_ip.clone()),
        container,
        container_id,
        runtime,
    }
}

/// Selector of an owner, or the error naming the owner.
///
/// # Errors
/// [`Error::Resolve`] when the owner has none.
pub fn require_selector(target: &str, selector: Option<LabelSelector>) -> Result<LabelSelector> {
    selector.ok_or_else(|| missing_selector(target))
}

#[cfg(test)]
mod tests;
