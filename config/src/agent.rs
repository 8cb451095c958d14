//! The `agent.*` keys: how the agent is started on the Kubernetes platform
//! (a Job on the target's node, or an ephemeral container in the target pod).
//! The local platform ignores them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::Issues;

/// The default agent image.
pub const DEFAULT_AGENT_IMAGE: &str = "ghcr.io/remora-dev/remora-agent:0.1.0";

/// How the agent is started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMode {
    /// A Job on the target's node (default).
    #[default]
    Job,
    /// An ephemeral container injected into the target pod.
    Ephemeral,
}

/// Resource requests and limits of the agent container, as Kubernetes
/// quantities (`100m`, `64Mi`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AgentResources {
    /// Requests by resource name (`cpu`, `memory`). Default: none.
    pub requests: BTreeMap<String, String>,
    /// Limits by resource name (`cpu`, `memory`). Default: none.
    pub limits: BTreeMap<String, String>,
}

/// A toleration of the agent pod, in the Kubernetes form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentToleration {
    /// Taint key; unset with `Exists` tolerates every taint.
    pub key: Option<String>,
    /// `Equal` or `Exists`.
    pub operator: Option<String>,
    /// Taint value (with `Equal`).
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; unset: all.
    pub effect: Option<String>,
    /// With `NoExecute`: seconds the pod stays bound after the taint appears.
    pub toleration_seconds: Option<i64>,
}

/// How the agent is started on the Kubernetes platform (ignored for `pid/` targets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// The agent image. Default: `ghcr.io/remora-dev/remora-agent:0.1.0`.
    pub image: String,
    /// Namespace of the agent Job. Unset: the target's. Ephemeral containers
    /// always live in the target pod.
    pub namespace: Option<String>,
    /// Seconds a finished agent Job is kept before Kubernetes deletes it (the
    /// backstop for a CLI that could not clean up). Default: 30.
    pub ttl: u32,
    /// Seconds to wait for the agent to run (pod scheduled, image pulled,
    /// container started). Default: 60.
    pub startup_timeout: u32,
    /// Run the agent privileged instead of with only `SYS_ADMIN`,
    /// `SYS_PTRACE` and `NET_ADMIN`. Default: false.
    pub privileged: bool,
    /// Tolerations of the agent pod. Unset: tolerate every taint, so the agent
    /// runs on any node a target runs on.
    pub tolerations: Option<Vec<AgentToleration>>,
    /// Node selector of the targetless agent pod (a Job is pinned to the
    /// target's node by name). Default: none.
    pub node_selector: BTreeMap<String, String>,
    /// Resource requests and limits of the agent container. Default: none.
    pub resources: AgentResources,
    /// Extra labels on the agent's objects. Default: none.
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on the agent's objects. Default: none.
    pub annotations: BTreeMap<String, String>,
    /// Service account of the agent pod. Unset: the namespace's default, with
    /// no token mounted.
    pub service_account: Option<String>,
    /// Inject an ephemeral container into the target pod instead of starting
    /// a Job. Default: false.
    pub ephemeral: bool,
    /// Seconds the agent waits for its first client, and after its last one
    /// left, before it exits. Default: 30.
    pub idle_timeout: u32,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            image: DEFAULT_AGENT_IMAGE.to_owned(),
            namespace: None,
            ttl: 30,
            startup_timeout: 60,
            privileged: false,
            tolerations: None,
            node_selector: BTreeMap::new(),
            resources: AgentResources::default(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            service_account: None,
            ephemeral: false,
            idle_timeout: 30,
        }
    }
}

impl AgentSettings {
    /// Which way the agent starts.
    pub fn mode(&self) -> AgentMode {
        if self.ephemeral {
            AgentMode::Ephemeral
        } else {
            AgentMode::Job
        }
    }

    /// Whether every key has its default (it is then left out of the resolved config).
    pub fn is_default(&self) -> bool {
        *self == AgentSettings::default()
    }

    /// Check the keys that have rules, naming each problem's key.
    pub(crate) fn validate(&self, issues: &mut Issues) {
        if self.image.trim().is_empty() {
            issues.push("agent.image", "the agent image is empty");
        }
        if self.startup_timeout == 0 {
            issues.push(
                "agent.startup_timeout",
                "must be at least 1 second (it bounds the wait for the agent's pod)",
            );
        }
        if let Some(namespace) = &self.namespace {
            if let Err(why) = crate::target::check_name(namespace, 63, false) {
                issues.push(
                    "agent.namespace",
                    format!("invalid namespace {namespace:?}: {why}"),
                );
            }
        }
        if let Some(tolerations) = &self.tolerations {
            for (i, t) in tolerations.iter().enumerate() {
                if let Some(op) = t.operator.as_deref() {
                    if op != "Equal" && op != "Exists" {
                        issues.push(
                            format!("agent.tolerations[{i}].operator"),
                            format!("{op:?} is not a toleration operator (use Equal or Exists)"),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
