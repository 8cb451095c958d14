//! `RemoraQueueSplit`: a platform team's registration of a workload's
//! queues for splitting (see docs/queues.md). The spec says which workload,
//! which queues, where it learns each queue's name and how to reach the
//! broker; the status is the operator's record of the split in progress,
//! enough for a restarted operator to resume without losing messages.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The workload kinds whose queues can be split: the ones with a pod
/// template the operator can patch and roll.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `argoproj.io/v1alpha1` Rollout (its own template, or the one its
    /// `workloadRef` names).
    Rollout,
}

/// The workload whose queues are split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its name, in the split's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// The broker type of one queue.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueBroker {
    /// RabbitMQ (AMQP 0-9-1).
    Rabbitmq,
    /// Amazon SQS or compatible.
    Sqs,
    /// Kafka protocol.
    Kafka,
    /// Google Cloud Pub/Sub (designed for; not served yet).
    Pubsub,
}

/// Where the workload learns a queue's name: an environment variable of
/// its pod template, whose value comes from `value`, a ConfigMap key
/// (`valueFrom.configMapKeyRef`) or `envFrom` a ConfigMap. The operator
/// reads the name from there and, while the split is active, sets the
/// variable to the workload's temporary queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueNameSource {
    /// The variable's name.
    #[schemars(length(min = 1))]
    pub env: String,
    /// The container that has it; unset: every container of the template
    /// that has the variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// A key of a Secret in the split's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    /// The Secret's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The key in its data.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// How the operator reaches the broker of one queue.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerEndpoint {
    /// RabbitMQ: `amqp://host:5672/vhost` (credentials from the secret keys
    /// below, or in the URL); SQS: the endpoint URL (unset: the region's
    /// AWS endpoint); Kafka: `host:port[,host:port]` bootstrap servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The URL from a Secret instead (it holds credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<SecretKey>,
    /// SQS: the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// User name (RabbitMQ, Kafka SASL) or access key id (SQS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_from: Option<SecretKey>,
    /// Password (RabbitMQ, Kafka SASL) or secret access key (SQS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_from: Option<SecretKey>,
    /// Kafka: the consumer group the workload reads the topic with. The
    /// router reads the original topic from this group's offsets and
    /// commits there, and a temporary topic counts as empty once this
    /// group has read it all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// One registered queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SplitQueueSpec {
    /// The broker type; a session's `split_queues.<id>.type` must agree.
    #[serde(rename = "type")]
    pub broker: QueueBroker,
    /// Where the workload learns the queue's (topic's) name.
    pub name_from: QueueNameSource,
    /// How to reach the broker.
    pub broker_endpoint: BrokerEndpoint,
}

/// Registration of a workload's queues for splitting.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "remora.dev",
    version = "v1alpha1",
    kind = "RemoraQueueSplit",
    namespaced,
    status = "RemoraQueueSplitStatus",
    shortname = "rqs",
    category = "remora",
    doc = "A workload's queues, registered for remora queue splitting: each session consumes only the messages its filter matches.",
    printcolumn = r#"{"name":"Workload","type":"string","jsonPath":".spec.workload.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Sessions","type":"integer","jsonPath":".status.sessionCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RemoraQueueSplitSpec {
    /// The workload that consumes the queues.
    pub workload: WorkloadRef,
    /// Queue id (what sessions name in `split_queues`) to its registration.
    #[schemars(length(min = 1))]
    pub queues: BTreeMap<String, SplitQueueSpec>,
    /// How long the workload may take to drain its temporary queue after
    /// the last session, before what is left is moved back to the original
    /// (`90s`, `5m`). Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// How long the split stays set up after its last session, so the next
    /// session needs no rollout (`10m`). Default `0s`: torn down at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_warm_ttl: Option<String>,
}

/// Where a split is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SplitPhase {
    /// No temporary queues; the workload consumes its queues itself.
    #[default]
    Idle,
    /// Temporary queues exist, the workload is patched, the router runs.
    Active,
    /// Kept set up after the last session until the keep-warm TTL ends.
    Warm,
    /// The workload is restored and its temporary queues are being drained
    /// and removed.
    Draining,
}

/// One session's share of a split queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SplitSessionStatus {
    /// The operator's session id.
    pub session: String,
    /// Its user.
    pub user: String,
    /// Its filter, as `remora queues ls` prints it.
    pub filter: String,
    /// Its temporary queue.
    pub queue: String,
}

/// The state of one registered queue's split.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SplitQueueStatus {
    /// The original queue (what the workload's variable named).
    pub original: String,
    /// The workload's temporary queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_queue: Option<String>,
    /// The sessions, in the order their filters are tried.
    #[serde(default)]
    pub sessions: Vec<SplitSessionStatus>,
    /// The router's saved state (JSON, opaque): what a restarted operator
    /// resumes from. Written before any message can reach a queue it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_state: Option<String>,
}

/// The operator's record of a split, kept up to date as it changes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoraQueueSplitStatus {
    /// Where the split is in its life.
    #[serde(default)]
    pub phase: SplitPhase,
    /// Sessions holding any queue of the split.
    #[serde(default)]
    pub session_count: u32,
    /// Per queue id.
    #[serde(default)]
    pub queues: BTreeMap<String, SplitQueueStatus>,
    /// The workload's variables as they were before the operator patched
    /// them (JSON of each container's EnvVar, by `container/VAR`), restored
    /// when the split ends.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub saved_env: BTreeMap<String, String>,
    /// When the last session left (RFC 3339), for the keep-warm TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<String>,
    /// What went wrong last, if the split is stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
