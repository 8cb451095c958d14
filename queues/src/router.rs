//! The router of one split queue: it consumes the original queue and
//! forwards each message to the first session (in order of joining) whose
//! filter matches, else to the workload's temporary queue.
//!
//! * [`RouterTask`] owns the split and runs the forwarding loop
//!   ([`RouterTask::run`]); [`RouterApi`] is the cheap handle that adds and
//!   removes sessions and reads statistics.
//! * [`SplitState`] is everything a restarted operator needs to resume: it is
//!   saved through a [`StateStore`] *before* any message can reach a queue it
//!   names, so no queue with messages is ever unknown to the saved state.
//! * [`temp_queue_name`] names the temporary queues, deterministically.
//!
//! # Guarantees
//! * A message is acknowledged on the original queue only after the broker
//!   confirmed it on its destination ([`Broker::publish`] returned `Ok`). A
//!   failed forward gives the message back to the original queue
//!   ([`Consumer::requeue`]).
//! * Several forwards are in flight at once (up to [`RouterConfig::prefetch`]).
//!   They are *started* in the order the original queue delivered them, and
//!   messages with the same [`Message::order_key`] are forwarded one after the
//!   other (the next starts once the previous one is confirmed), so per-key
//!   order holds on every broker. On RabbitMQ (no order keys) the broker
//!   stores forwards in the order they were started, so each destination
//!   receives its messages in the original queue's order.
//! * A removed session's queue is emptied into the workload's queue (same
//!   confirm-then-ack rule) once its last in-flight forward completed, and
//!   deleted only when it is empty and has no consumer (RabbitMQ refuses
//!   otherwise; the router drains again and retries until it succeeds).
//! * Duplicates: none in normal operation. After a crash (or a lost
//!   connection), the messages whose forward was confirmed but whose ack did
//!   not reach the broker are delivered again and forwarded again: at most
//!   [`RouterConfig::prefetch`] per crash for the router, and at most one per
//!   crash for each queue being drained. The broker marks them redelivered.

mod drain;
mod task;

pub use drain::{move_messages, move_then_delete};
pub use task::RouterTask;

use crate::broker::{Broker, BrokerError, BrokerKind, QueueDepth, QueueName, QueueProps};
use crate::filter::{FilterError, MessageFilter, Overlap};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How many commands may wait for the router task.
pub const COMMAND_CAPACITY: usize = 16;

/// The longest session key, so every temporary name fits every broker's limit
/// (SQS: 80 characters).
pub const MAX_SESSION_KEY_LEN: usize = 40;

/// The owner name of the workload's temporary queue.
pub const WORKLOAD: &str = "workload";

/// One session of a split, as the router names it: 1 to
/// [`MAX_SESSION_KEY_LEN`] characters of `[A-Za-z0-9_-]`, not `workload`
/// (the operator uses the session id in hex).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SplitSessionKey(String);

impl SplitSessionKey {
    /// A key, if `key` is a valid one.
    ///
    /// # Errors
    /// [`RouterError::InvalidKey`] otherwise, saying why.
    pub fn new(key: impl Into<String>) -> Result<Self, RouterError> {
        let key = key.into();
        let ok = !key.is_empty()
            && key.len() <= MAX_SESSION_KEY_LEN
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && key != WORKLOAD;
        if ok {
            Ok(Self(key))
        } else {
            Err(RouterError::InvalidKey(key))
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SplitSessionKey {
    type Error = RouterError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SplitSessionKey> for String {
    fn from(key: SplitSessionKey) -> Self {
        key.0
    }
}

impl fmt::Display for SplitSessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whose temporary queue a name is for.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// The in-cluster workload (messages no session claims).
    Workload,
    /// One session.
    Session(&'a SplitSessionKey),
}

/// The name of `owner`'s temporary queue for `original`, the same every
/// time (a resumed operator finds its queues again):
///
/// * RabbitMQ, Kafka, Pub/Sub: `<original>.remora.<owner>`;
/// * SQS (names allow only `[A-Za-z0-9_-]` and a FIFO queue's must end in
///   `.fifo`): `<original>-remora-<owner>`, or
///   `<original without .fifo>-remora-<owner>.fifo`;
///
/// where `<owner>` is `workload` or the session key. When that is longer
/// than the broker allows (RabbitMQ 255 bytes, Kafka 249, SQS 80), the
/// original's part is cut and followed by `-` and 8 hex digits of a hash of
/// the whole original name, so names of different originals stay apart.
pub fn temp_queue_name(kind: BrokerKind, original: &QueueName, owner: Owner<'_>) -> QueueName {
    let owner = match owner {
        Owner::Workload => WORKLOAD,
        Owner::Session(key) => key.as_str(),
    };
    let (base, infix, fifo, max) = match kind {
        BrokerKind::Sqs => match original.0.strip_suffix(".fifo") {
            Some(base) => (base, "-remora-", ".fifo", 80),
            None => (original.0.as_str(), "-remora-", "", 80),
        },
        BrokerKind::Kafka => (original.0.as_str(), ".remora.", "", 249),
        BrokerKind::Rabbitmq | BrokerKind::Pubsub => (original.0.as_str(), ".remora.", "", 255),
    };
    let tail = format!("{infix}{owner}{fifo}");
    if base.len() + tail.len() <= max {
        return QueueName(format!("{base}{tail}"));
    }
    let hash = format!("-{:08x}", fnv1a(original.0.as_bytes()) as u32);
    let mut cut = max.saturating_sub(tail.len() + hash.len()).min(base.len());
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    QueueName(format!("{}{hash}{tail}", &base[..cut]))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Everything a restarted operator needs to resume a split.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitState {
    /// The broker the queues live on.
    pub kind: BrokerKind,
    /// The queue the workload and the developers share.
    pub original: QueueName,
    /// The original's properties, which every temporary queue copies.
    pub props: QueueProps,
    /// Where messages no session claims go.
    pub workload_queue: QueueName,
    /// The sessions, in the order they joined (the order filters are tried).
    pub sessions: Vec<SessionState>,
    /// Sessions that ended and whose queue is still being emptied into the
    /// workload's queue.
    pub draining: Vec<SessionState>,
}

impl SplitState {
    /// Every temporary queue this state names.
    pub fn temp_queues(&self) -> impl Iterator<Item = &QueueName> {
        std::iter::once(&self.workload_queue)
            .chain(self.sessions.iter().chain(&self.draining).map(|s| &s.queue))
    }
}

/// One session of a split.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionState {
    /// Who.
    pub key: SplitSessionKey,
    /// Its filter: header name to regex ([`MessageFilter::patterns`]).
    pub filter: BTreeMap<String, String>,
    /// Its temporary queue.
    pub queue: QueueName,
}

/// Where the router saves its [`SplitState`] (the operator: the split
/// resource's status).
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug + 'static {
    /// Saves `state` durably. The router routes nothing to a queue before
    /// the state naming it was saved.
    async fn save(&self, state: &SplitState) -> Result<(), StoreError>;
}

/// A [`StateStore`] failure, in the store's words.
#[derive(Debug, thiserror::Error)]
#[error("saving the split's state: {0}")]
pub struct StoreError(pub String);

/// A [`StateStore`] in memory: the last state saved, for tests, the
/// benchmark and a local operator that does not survive its own restart.
#[derive(Debug, Default)]
pub struct MemoryStore(std::sync::Mutex<Option<SplitState>>);

impl MemoryStore {
    /// The last state saved.
    pub fn load(&self) -> Option<SplitState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn save(&self, state: &SplitState) -> Result<(), StoreError> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(state.clone());
        Ok(())
    }
}

/// How the router paces itself.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Deliveries taken from the original queue and not yet acknowledged:
    /// the forwards in flight (and the most duplicates a crash can cause).
    pub prefetch: u16,
    /// How long a queue being emptied must stay silent to count as empty.
    pub drain_idle: Duration,
    /// The pause after a broker error before trying again.
    pub retry: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            prefetch: 64,
            drain_idle: Duration::from_millis(300),
            retry: Duration::from_millis(500),
        }
    }
}

/// What went wrong in a router call.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A broker call failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The state could not be saved.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A saved filter is no longer valid.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The filter could match a message another session's filter matches.
    #[error(
        "message_filter {filter} overlaps session {holder}'s {holder_filter}{}: \
         pick values no other session's filter can match",
        match .overlap {
            Overlap::Undecided { header } => format!(
                " (the patterns for {header:?} are beyond the exact overlap check, so they count as overlapping)"
            ),
            _ => String::new(),
        }
    )]
    Overlap {
        /// The refused filter.
        filter: String,
        /// The session that holds the overlapping filter.
        holder: SplitSessionKey,
        /// Its filter.
        holder_filter: String,
        /// What the check found.
        overlap: Overlap,
    },
    /// A session with this key already takes part.
    #[error("session {0} already takes part in this split")]
    DuplicateSession(SplitSessionKey),
    /// The session's queue from an earlier join is still being emptied.
    #[error("session {0} ended recently and its queue is still being emptied: retry shortly")]
    StillDraining(SplitSessionKey),
    /// No such session.
    #[error("session {0} does not take part in this split")]
    UnknownSession(SplitSessionKey),
    /// Not a valid session key.
    #[error(
        "{0:?} is not a valid split session key: 1 to {MAX_SESSION_KEY_LEN} characters of \
         A-Z, a-z, 0-9, '-' and '_', and not {WORKLOAD:?}"
    )]
    InvalidKey(String),
    /// The router task has stopped.
    #[error("the router of this split has stopped")]
    Stopped,
}

/// A request to the router task.
#[derive(Debug)]
enum Command {
    Add {
        key: SplitSessionKey,
        filter: MessageFilter,
        reply: oneshot::Sender<Result<QueueName, RouterError>>,
    },
    Remove {
        key: SplitSessionKey,
        reply: oneshot::Sender<Result<DrainReport, RouterError>>,
    },
    Snapshot {
        reply: oneshot::Sender<(SplitState, Counts)>,
    },
}

/// What the router counted so far (since it started or resumed).
#[derive(Debug, Clone, Default)]
struct Counts {
    /// Forwards confirmed and acknowledged, by destination.
    routed: BTreeMap<QueueName, u64>,
    /// Forwards that failed; the message went back to the original queue.
    requeued: u64,
    /// Forwards confirmed whose ack failed: the broker delivers the message
    /// again, so it will be forwarded twice.
    ack_failures: u64,
}

/// The end of a session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages moved to the workload's queue.
    pub moved: u64,
}

/// One temporary (or the original) queue in [`RouterStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue.
    pub queue: QueueName,
    /// Messages the router forwarded here (for the original: taken from it).
    pub routed: u64,
    /// What the broker says it holds; `None` if it could not say (the error
    /// is logged).
    pub depth: Option<QueueDepth>,
}

/// One session in [`RouterStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStats {
    /// Who.
    pub key: SplitSessionKey,
    /// Its filter, as `{header = "regex", ...}`.
    pub filter: String,
    /// Its queue.
    pub queue: QueueStats,
}

/// A split's numbers, for `remora queues ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterStats {
    /// The shared queue.
    pub original: QueueStats,
    /// The workload's temporary queue.
    pub workload: QueueStats,
    /// The sessions, in order of joining.
    pub sessions: Vec<SessionStats>,
    /// Ended sessions whose queue is still being emptied.
    pub draining: Vec<SessionStats>,
    /// Forwards that failed and went back to the original queue.
    pub requeued: u64,
    /// Forwards confirmed whose ack was lost (each is a duplicate).
    pub ack_failures: u64,
}

/// The handle to one split's [`RouterTask`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct RouterApi {
    /// api --command--> task
    cmd_tx: mpsc::Sender<Command>,
    broker: Arc<dyn Broker>,
    workload_queue: QueueName,
}

impl RouterApi {
    /// The workload's temporary queue (the value for its env var while the
    /// split lasts).
    pub fn workload_queue(&self) -> &QueueName {
        &self.workload_queue
    }

    /// Adds a session: from now on, messages its `filter` matches (and no
    /// earlier session's does) go to its temporary queue, whose name is
    /// returned (the value for the local process's env var). The queue is
    /// created like the original, and the state saved, before anything is
    /// routed to it.
    ///
    /// # Errors
    /// [`RouterError::Overlap`] naming the holder if the filter could match
    /// a message another session's filter matches;
    /// [`RouterError::DuplicateSession`], [`RouterError::StillDraining`];
    /// broker and store errors (nothing changed then).
    pub async fn add_session(
        &self,
        key: SplitSessionKey,
        filter: MessageFilter,
    ) -> Result<QueueName, RouterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Add { key, filter, reply }).await?;
        rx.await.map_err(|_| RouterError::Stopped)?
    }

    /// Removes a session: routing to it stops at once; once its in-flight
    /// forwards completed, every message left in its queue moves to the
    /// workload's queue (confirm, then ack) and the queue is deleted.
    /// Returns when that is done, which takes as long as the session's
    /// consumer stays connected (RabbitMQ gives its unacked messages back
    /// when it goes). Dropping the returned future does not stop the drain.
    ///
    /// # Errors
    /// [`RouterError::UnknownSession`]; [`RouterError::Stopped`] if the
    /// router stopped first (a resumed router drains the queue again).
    pub async fn remove_session(&self, key: &SplitSessionKey) -> Result<DrainReport, RouterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Remove {
            key: key.clone(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| RouterError::Stopped)?
    }

    /// The state as the router holds it now (as last saved).
    pub async fn state(&self) -> Result<SplitState, RouterError> {
        Ok(self.snapshot().await?.0)
    }

    /// Counts from the router and depths from the broker.
    pub async fn stats(&self) -> Result<RouterStats, RouterError> {
        let (state, counts) = self.snapshot().await?;
        let queue = |name: &QueueName, routed: u64| {
            let broker = self.broker.clone();
            let name = name.clone();
            async move {
                let depth = match broker.depth(&name).await {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!(queue = %name, error = %e, "no depth");
                        None
                    }
                };
                QueueStats {
                    queue: name,
                    routed,
                    depth,
                }
            }
        };
        let routed = |name: &QueueName| counts.routed.get(name).copied().unwrap_or(0);
        let taken = counts.routed.values().sum::<u64>();
        let mut sessions = Vec::new();
        for s in &state.sessions {
            sessions.push(SessionStats {
                key: s.key.clone(),
                filter: filter_text(&s.filter),
                queue: queue(&s.queue, routed(&s.queue)).await,
            });
        }
        let mut draining = Vec::new();
        for s in &state.draining {
            draining.push(SessionStats {
                key: s.key.clone(),
                filter: filter_text(&s.filter),
                queue: queue(&s.queue, routed(&s.queue)).await,
            });
        }
        Ok(RouterStats {
            original: queue(&state.original, taken).await,
            workload: queue(&state.workload_queue, routed(&state.workload_queue)).await,
            sessions,
            draining,
            requeued: counts.requeued,
            ack_failures: counts.ack_failures,
        })
    }

    async fn snapshot(&self) -> Result<(SplitState, Counts), RouterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Snapshot { reply }).await?;
        rx.await.map_err(|_| RouterError::Stopped)
    }

    async fn send(&self, cmd: Command) -> Result<(), RouterError> {
        self.cmd_tx
            .send(cmd)
            .await
            .map_err(|_| RouterError::Stopped)
    }
}

/// `{x-user = "^alice$"}` from saved patterns.
fn filter_text(filter: &BTreeMap<String, String>) -> String {
    match MessageFilter::new(filter.iter()) {
        Ok(f) => f.to_string(),
        Err(_) => format!("{filter:?}"),
    }
}

#[cfg(test)]
mod tests;
