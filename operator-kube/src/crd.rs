//! The operator's custom resources (group `remora.dev`, version `v1alpha1`),
//! generated from these Rust types by kube's `CustomResource` derive and
//! schemars: [`RemoraSession`], [`RemoraPolicy`], [`RemoraClusterPolicy`],
//! [`queue_split::RemoraQueueSplit`] and [`db_branch::RemoraDbBranch`].
//!
//! `operator-kube/deploy/crds.yaml` is the generated YAML, checked in; a test
//! regenerates it and fails when it differs (`REMORA_BLESS=1` rewrites it).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The API group of every remora kind.
pub const GROUP: &str = "remora.dev";
/// Their version.
pub const VERSION: &str = "v1alpha1";

/// One remora session (one `remora run` through the operator), created by the
/// operator when the session starts and deleted when it ends. Deleting it
/// (`kubectl delete remorasession ID`) ends the session. It lives in the
/// target's namespace and is named after the session's id.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "remora.dev",
    version = "v1alpha1",
    kind = "RemoraSession",
    namespaced,
    status = "RemoraSessionStatus",
    shortname = "rsess",
    category = "remora",
    doc = "A remora session: a local process running as if inside a target in this namespace.",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.user"}"#,
    printcolumn = r#"{"name":"Identity","type":"string","jsonPath":".spec.identity","priority":1}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target"}"#,
    printcolumn = r#"{"name":"Ports","type":"string","jsonPath":".status.ports"}"#,
    printcolumn = r#"{"name":"Started","type":"date","jsonPath":".spec.startedAt"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RemoraSessionSpec {
    /// The operator's id of the session (what `remora session kill` takes).
    #[schemars(length(min = 1))]
    pub id: String,
    /// The display name the client gave (`REMORA_USER`): informative only.
    pub user: String,
    /// The Kubernetes user the operator authenticated (TokenReview), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The target, canonical (`deployment/api`, `pod/api-7f9c/container/app`).
    #[schemars(length(min = 1))]
    pub target: String,
    /// When the session started (RFC 3339).
    pub started_at: String,
}

/// What a session holds now, kept up to date by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoraSessionStatus {
    /// Every port the session subscribed, with its mode and filter.
    #[serde(default)]
    pub subscriptions: Vec<SessionSubscription>,
    /// The subscriptions in one line (`8080 steal, 9090 mirror`), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
}

/// One subscribed port of a session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionSubscription {
    /// The target's port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Steal or mirror.
    pub mode: SubscriptionMode,
    /// The HTTP filter, as `remora session ls` prints it; none: every connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// What happens to the port's traffic.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionMode {
    /// Matching traffic goes to the session only.
    Steal,
    /// The session gets a copy.
    Mirror,
}

impl RemoraSessionStatus {
    /// The status for these subscriptions, with its one-line summary.
    pub fn new(subscriptions: Vec<SessionSubscription>) -> Self {
        let ports = (!subscriptions.is_empty()).then(|| {
            subscriptions
                .iter()
                .map(|s| {
                    let mode = match s.mode {
                        SubscriptionMode::Steal => "steal",
                        SubscriptionMode::Mirror => "mirror",
                    };
                    match &s.filter {
                        Some(_) => format!("{} {mode} (filtered)", s.port),
                        None => format!("{} {mode}", s.port),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
        RemoraSessionStatus {
            subscriptions,
            ports,
        }
    }
}

/// What a policy may block (the TOML policies' `block` values).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BlockedAction {
    /// Any steal.
    Steal,
    /// A steal without an HTTP filter.
    StealWithoutFilter,
    /// Any mirror.
    Mirror,
    /// Any outgoing connection.
    Outgoing,
    /// Taking a port over from other sessions (`--override-filter`).
    Override,
}

/// The kinds a policy's target selector may name.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A pod.
    Pod,
    /// A Deployment.
    Deployment,
    /// A StatefulSet.
    Statefulset,
    /// A ReplicaSet.
    Replicaset,
    /// A Job.
    Job,
    /// A CronJob.
    Cronjob,
    /// An Argo Rollout.
    Rollout,
    /// A Service.
    Service,
}

/// Which targets a policy applies to: every field given must match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSelector {
    /// The target's kind; unset: any kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TargetKind>,
    /// A glob (`*`, `?`) over the target object's name (`payments-*`); unset: any name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels the target's pod must carry (all of them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements on the target's pod's labels (all of them), as in a
    /// Kubernetes label selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One `matchExpressions` requirement of a [`TargetSelector`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelectorRequirement {
    /// The label key.
    pub key: String,
    /// How the label is compared with `values`.
    pub operator: SelectorOperator,
    /// The values (for `In` and `NotIn`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A label selector operator.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    /// The label has one of the values.
    In,
    /// The label is unset or has none of the values.
    NotIn,
    /// The label is set.
    Exists,
    /// The label is unset.
    DoesNotExist,
}

/// The rules of a policy: the same as a `[[policy]]` table of the local
/// platform's TOML file, plus who and which targets they apply to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRules {
    /// The targets it applies to (any selector matching is enough).
    #[schemars(length(min = 1))]
    pub targets: Vec<TargetSelector>,
    /// Kubernetes user names it applies to; with `groups` both empty: everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Kubernetes groups it applies to (`system:serviceaccounts:ci`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// What sessions may not do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<BlockedAction>,
    /// Every subscription needs a header filter this regex matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_header_filter: Option<String>,
    /// Globs: these variables never leave the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_exclude: Vec<String>,
    /// Regexes over absolute paths that appear absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs_not_found: Vec<String>,
    /// `ip|CIDR|host|*.suffix[:port]` destinations outgoing connections may not reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outgoing_block: Vec<String>,
}

/// A policy for the targets of its namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "remora.dev",
    version = "v1alpha1",
    kind = "RemoraPolicy",
    namespaced,
    shortname = "rpol",
    category = "remora",
    doc = "What remora sessions on the targets of this namespace may not do.",
    printcolumn = r#"{"name":"Block","type":"string","jsonPath":".spec.block"}"#,
    printcolumn = r#"{"name":"Users","type":"string","jsonPath":".spec.users","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RemoraPolicySpec {
    /// The rules.
    #[serde(flatten)]
    pub rules: PolicyRules,
}

/// A policy for targets in every namespace (or those named).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "remora.dev",
    version = "v1alpha1",
    kind = "RemoraClusterPolicy",
    shortname = "rcpol",
    category = "remora",
    doc = "What remora sessions may not do, in every namespace or those named.",
    printcolumn = r#"{"name":"Block","type":"string","jsonPath":".spec.block"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RemoraClusterPolicySpec {
    /// Globs over the target's namespace; empty: every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// The rules.
    #[serde(flatten)]
    pub rules: PolicyRules,
}

/// Every CRD of remora, in the order they are installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        RemoraSession::crd(),
        RemoraPolicy::crd(),
        RemoraClusterPolicy::crd(),
        queue_split::RemoraQueueSplit::crd(),
        db_branch::RemoraDbBranch::crd(),
    ]
}

/// [`crds`] as one multi-document YAML stream (what `deploy/crds.yaml` holds).
///
/// # Panics
/// Never: these objects always serialize.
pub fn crds_yaml() -> String {
    crate::yaml::documents(&crds())
}

pub mod db_branch;
pub mod queue_split;

#[cfg(test)]
mod tests;
