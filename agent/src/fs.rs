//! File operations inside the target's filesystem, for one client: its handle
//! table, and the hand-off of every blocking operation to a namespace worker.

pub mod fd_table;
pub mod meta;
pub mod ops;
pub mod policy;

use crate::pool::NsPool;
use fd_table::FdTable;
use policy::FsPolicy;
use remora_protocol::fs::{FsReply, FsRequest};
use remora_protocol::{ErrorCode, RemoteError, RemoteResult};
use std::sync::{Arc, Mutex, RwLock};

/// One client's view of the target's files. Its handles are closed by
/// [`FsApi::close_all`] when the client goes away (and at the latest when the
/// last clone is dropped).
#[derive(Debug, Clone)]
pub struct FsApi {
    pool: NsPool,
    fds: Arc<Mutex<FdTable>>,
    /// The operator's file policies for this session, checked on the worker.
    policy: Arc<RwLock<Option<Arc<FsPolicy>>>>,
}

impl FsApi {
    pub fn new(pool: NsPool) -> Self {
        FsApi {
            pool,
            fds: Arc::default(),
            policy: Arc::default(),
        }
    }

    /// Enforce `policy` on every later request (replacing the previous one).
    pub fn set_policy(&self, policy: FsPolicy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(policy));
    }

    /// Perform `request` on a namespace worker.
    ///
    /// Requests run concurrently and are answered as they complete; a client
    /// that needs one to happen after another waits for the first reply (as
    /// the layer does, one call at a time per thread).
    pub async fn handle(&self, request: FsRequest) -> RemoteResult<FsReply> {
        let fds = self.fds.clone();
        let policy = self
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.pool
            .run(move || {
                if let Some(policy) = policy {
                    policy.check(&request)?;
                }
                ops::execute(&fds, request)
            })
            .await
            .map_err(|e| RemoteError::new(ErrorCode::Unavailable, e.to_string()))?
    }

    /// Number of handles the client holds open.
    pub fn open_handles(&self) -> usize {
        self.table().len()
    }

    /// Close every handle of the client; returns how many were open.
    pub fn close_all(&self) -> usize {
        self.table().close_all()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, FdTable> {
        // Poisoning cannot leave the map half-updated (see `ops::table`).
        self.fds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The target's hostname, from a worker inside its UTS namespace.
pub async fn hostname(pool: &NsPool) -> RemoteResult<String> {
    pool.run(nix::unistd::gethostname)
        .await
        .map_err(|e| RemoteError::new(ErrorCode::Unavailable, e.to_string()))?
        .map(|name| name.to_string_lossy().into_owned())
        .map_err(|e| ops::errno_err("gethostname", e))
}

#[cfg(test)]
mod tests;
