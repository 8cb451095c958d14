//! The seam to queue splitting: the operator's platform side (Kubernetes:
//! `RemoraQueueSplit` objects and routers, in `remora-operator-kube`) joins
//! sessions to the splits they ask for and lets them go when they end. The
//! local platform has no workloads to re-point, so it splits no queues.

use futures::future::BoxFuture;
use remora_protocol::SessionId;
use remora_protocol::queues::{QueueReply, QueueRequest};

/// Joins sessions to queue splits.
pub trait QueueSplitter: Send + Sync + std::fmt::Debug + 'static {
    /// `session` (of `user`, on `target`, canonical) asks for its share.
    ///
    /// # Errors
    /// A user-facing reason (no registration, overlapping filter naming
    /// the holder, broker unreachable, ...); nothing of the session stays.
    fn handle(
        &self,
        target: String,
        session: SessionId,
        user: String,
        request: QueueRequest,
    ) -> BoxFuture<'static, Result<QueueReply, String>>;

    /// Before a session on `target` (canonical) starts: make its workload's
    /// split active and wait until the workload rolled onto its temporary
    /// queues, so the session's agent starts in a pod that stays.
    ///
    /// # Errors
    /// As [`QueueSplitter::handle`].
    fn prepare(&self, target: String) -> BoxFuture<'static, Result<(), String>>;

    /// The active splits, with their sessions and queue depths.
    ///
    /// # Errors
    /// A user-facing reason.
    fn list(&self) -> BoxFuture<'static, Result<QueueReply, String>>;

    /// `session` ended: its messages go back to the workload (the future
    /// ends once they did).
    fn leave(&self, session: SessionId) -> BoxFuture<'static, ()>;
}
