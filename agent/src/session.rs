//! The registry of connected clients: what `remora session ls` lists and what
//! `remora session kill` ends, and the count the agent's lifetime depends on.

use remora_protocol::session::SessionInfo;
use remora_protocol::{ErrorCode, RemoteError, RemoteResult, SessionId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// Kill orders a session can have pending; one is enough to end it.
pub const KILL_CAPACITY: usize = 1;

/// How many sessions are connected now, and how many ever were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCount {
    pub active: usize,
    /// Never decreases, so a session that came and went between two looks
    /// at the count is still noticed.
    pub total: u64,
}

/// Every accepted session of this agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionRegistry {
    inner: Arc<Mutex<Inner>>,
    /// registry --session counts--> agent supervisor
    count_tx: Arc<watch::Sender<SessionCount>>,
}

#[derive(Debug, Default)]
struct Inner {
    last_id: u64,
    sessions: BTreeMap<SessionId, Entry>,
}

impl Inner {
    fn count(&self) -> SessionCount {
        SessionCount {
            active: self.sessions.len(),
            // Session ids count up from 1, one per registration.
            total: self.last_id,
        }
    }
}

#[derive(Debug)]
struct Entry {
    info: SessionInfo,
    /// killer --reason--> the session's client task
    kill_tx: mpsc::Sender<String>,
}

/// A registered session; unregisters it when dropped.
#[derive(Debug)]
pub struct SessionGuard {
    id: SessionId,
    registry: SessionRegistry,
}

impl SessionGuard {
    pub fn id(&self) -> SessionId {
        self.id
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.sessions.remove(&self.id);
        let count = inner.count();
        drop(inner);
        self.registry.count_tx.send_replace(count);
    }
}

impl Default for SessionRegistry {
    fn default() -> Self {
        SessionRegistry {
            inner: Arc::default(),
            count_tx: Arc::new(watch::Sender::new(SessionCount::default())),
        }
    }
}

impl SessionRegistry {
    /// Register a new session of `user` on `target`. The receiver gets the
    /// reason when someone kills it.
    pub fn register(&self, user: &str, target: &str) -> (SessionGuard, mpsc::Receiver<String>) {
        let (kill_tx, kill_rx) = mpsc::channel(KILL_CAPACITY);
        let mut inner = self.lock();
        inner.last_id += 1;
        let id = SessionId(inner.last_id);
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let info = SessionInfo {
            id,
            user: user.to_owned(),
            target: target.to_owned(),
            subscriptions: Vec::new(),
            started_at,
        };
        inner.sessions.insert(id, Entry { info, kill_tx });
        let count = inner.count();
        drop(inner);
        self.count_tx.send_replace(count);
        let guard = SessionGuard {
            id,
            registry: self.clone(),
        };
        (guard, kill_rx)
    }

    /// Every session, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        self.lock()
            .sessions
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    /// Tell session `id` to close with `reason`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] when no such session is connected.
    pub fn kill(&self, id: SessionId, reason: String) -> RemoteResult<()> {
        let inner = self.lock();
        let entry = inner.sessions.get(&id).ok_or_else(|| {
            RemoteError::new(
                ErrorCode::NotFound,
                format!("no session {id} on this agent"),
            )
        })?;
        // Full means a kill is already pending: the session ends either way.
        let _ = entry.kill_tx.try_send(reason);
        Ok(())
    }

    /// Watch the number of connected sessions.
    pub fn subscribe_count(&self) -> watch::Receiver<SessionCount> {
        self.count_tx.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the map consistent, even on panic.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests;
