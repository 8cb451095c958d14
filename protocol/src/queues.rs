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
    /// The active splits, their sessions and queue depths (`remora queues ls`).
    List,
}

/// One temporary queue of a split, as listed.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempQueueInfo {
    /// The queue's name on its broker.
    pub queue: String,
    /// Its owner: `workload`, or the session id.
    pub owner: String,
    /// The owner's filter (none for the workload).
    pub filter: Option<String>,
    /// Messages waiting in it (none: the broker did not say).
    pub depth: Option<u64>,
    /// Messages the router sent it since it started.
    pub routed: u64,
}

/// One registered queue of an active split.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitQueueInfo {
    /// The queue id.
    pub id: String,
    /// `rabbitmq`, `sqs`, `kafka`.
    pub broker: String,
    /// The original queue.
    pub original: String,
    /// Messages waiting in the original (the router's lag).
    pub original_depth: Option<u64>,
    /// The workload's queue first, then the sessions' in filter order.
    #[cfg_attr(
        test,
        proptest(
            strategy = "proptest::collection::vec(proptest::prelude::any::<TempQueueInfo>(), 0..3)"
        )
    )]
    pub queues: Vec<TempQueueInfo>,
}

/// One active split.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its registration's name.
    pub name: String,
    /// The workload (`Deployment/orders-worker`).
    pub workload: String,
    /// Its queues.
    #[cfg_attr(
        test,
        proptest(
            strategy = "proptest::collection::vec(proptest::prelude::any::<SplitQueueInfo>(), 0..3)"
        )
    )]
    pub queues: Vec<SplitQueueInfo>,
}

/// Replies to [`QueueRequest`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueReply {
    /// The session's variables, each naming its own temporary queue.
    Split { env: BTreeMap<String, String> },
    /// The split is active and the workload rolled out.
    Prepared,
    /// The active splits.
    List(
        #[cfg_attr(
            test,
            proptest(
                strategy = "proptest::collection::vec(proptest::prelude::any::<SplitInfo>(), 0..3)"
            )
        )]
        Vec<SplitInfo>,
    ),
}
