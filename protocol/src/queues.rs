//! Queue splitting: a session asks the operator for its own share of the
//! target workload's registered queues (`split_queues` in the config).
//!
//! Only the operator answers these ([`crate::Capabilities::QUEUE_SPLITS`]); an
//! agent never sees them. The session's share ends with the session.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One queue id a session wants its messages of.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueWanted {
    /// The queue id the registration gives it.
    pub id: String,
    /// The broker type the session expects (`rabbitmq`, `sqs`, `kafka`).
    pub broker: String,
    /// Header (attribute) name to regex; all must match.
    pub filter: BTreeMap<String, String>,
}

/// Client → operator.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueRequest {
    /// Before a session on `target` starts (on a control connection): make
    /// the split of its workload active, so the workload's rollout onto its
    /// temporary queues is over before the session's agent picks a pod. The
    /// split waits a while for the session to join.
    Prepare { target: String },
    /// Join these queues' splits for the rest of the session.
    Split(Vec<QueueWanted>),
}

/// Replies to [`QueueRequest`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueReply {
    /// The session's variables, each naming its own temporary queue.
    Split { env: BTreeMap<String, String> },
    /// The split is active and the workload rolled out.
    Prepared,
}
