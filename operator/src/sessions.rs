//! The operator's sessions: who runs what against which target, and the
//! channels to tell a session's relay to end or to give a port up.

use crate::access::{SessionObserver, SessionRecord};
use crate::registry::FilterRegistry;
use remora_protocol::incoming::RemotePort;
use remora_protocol::session::SessionInfo;
use remora_protocol::{ErrorCode, RemoteError, RemoteResult, SessionId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot};

/// Orders a session can have queued.
pub const COMMAND_CAPACITY: usize = 16;

/// What another part of the operator asks a session's relay.
#[derive(Debug)]
pub enum SessionCommand {
    /// End the session, telling the client `reason`.
    Kill { reason: String },
    /// Give `port` up (another session took it over with override): the
    /// relay unsubscribes it at the agent, tells its user why, and answers
    /// `done` once the agent has processed the unsubscription.
    Evict {
        port: RemotePort,
        by: String,
        done: oneshot::Sender<()>,
    },
}

#[derive(Debug)]
struct Entry {
    user: String,
    identity: Option<String>,
    target: String,
    started_at: SystemTime,
    /// others --orders--> the session's relay
    command_tx: mpsc::Sender<SessionCommand>,
}

/// Every session, and the registry of their subscriptions. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
    /// Told the table after every change.
    observer: Option<Arc<dyn SessionObserver>>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: BTreeMap<SessionId, Entry>,
    registry: FilterRegistry,
}

/// A registered session; unregisters it (and everything it holds) when dropped.
#[derive(Debug)]
pub struct SessionGuard {
    id: SessionId,
    sessions: Sessions,
}

impl SessionGuard {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut inner = self.sessions.lock();
        inner.sessions.remove(&self.id);
        inner.registry.release_session(self.id);
        drop(inner);
        self.sessions.notify();
    }
}

impl Sessions {
    /// An empty table whose every change is told to `observer`.
    pub fn observed(observer: Arc<dyn SessionObserver>) -> Self {
        Sessions {
            inner: Arc::default(),
            observer: Some(observer),
        }
    }

    /// Register a new session; its relay receives orders on the receiver.
    pub fn register(
        &self,
        user: &str,
        target: &str,
    ) -> (SessionGuard, mpsc::Receiver<SessionCommand>) {
        self.register_identified(user, None, target)
    }

    /// [`Sessions::register`], with the platform's identity of the user.
    pub fn register_identified(
        &self,
        user: &str,
        identity: Option<&str>,
        target: &str,
    ) -> (SessionGuard, mpsc::Receiver<SessionCommand>) {
        let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
        let mut inner = self.lock();
        let id = loop {
            // Short random ids: easy to type in `remora session kill`, and
            // not guessable from another session's.
            let mut bytes = [0u8; 2];
            let n = match getrandom::fill(&mut bytes) {
                Ok(()) => u64::from(u16::from_be_bytes(bytes)),
                Err(_) => inner.sessions.len() as u64 + 1,
            };
            let id = SessionId(n);
            if n != 0 && !inner.sessions.contains_key(&id) {
                break id;
            }
        };
        inner.sessions.insert(
            id,
            Entry {
                user: user.to_owned(),
                identity: identity.map(str::to_owned),
                target: target.to_owned(),
                started_at: SystemTime::now(),
                command_tx,
            },
        );
        drop(inner);
        self.notify();
        let guard = SessionGuard {
            id,
            sessions: self.clone(),
        };
        (guard, command_rx)
    }

    /// Every session, oldest first, with its granted subscriptions.
    pub fn list(&self) -> Vec<SessionInfo> {
        self.records().into_iter().map(|r| r.info).collect()
    }

    /// [`Sessions::list`] with each user's identity.
    pub fn records(&self) -> Vec<SessionRecord> {
        let inner = self.lock();
        let mut list: Vec<SessionRecord> = inner
            .sessions
            .iter()
            .map(|(id, e)| SessionRecord {
                info: SessionInfo {
                    id: *id,
                    user: e.user.clone(),
                    target: e.target.clone(),
                    subscriptions: inner.registry.subscriptions_of(*id),
                    started_at: e
                        .started_at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or_default(),
                },
                identity: e.identity.clone(),
            })
            .collect();
        list.sort_by_key(|s| (s.info.started_at, s.info.id));
        list
    }

    /// Tell the observer the table as it is now.
    fn notify(&self) {
        if let Some(observer) = &self.observer {
            observer.sessions_changed(self.records());
        }
    }

    /// Order session `id` to end with `reason`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] when there is no such session.
    pub fn kill(&self, id: SessionId, reason: String) -> RemoteResult<()> {
        let tx = self.command_tx(id).ok_or_else(|| {
            RemoteError::new(
                ErrorCode::NotFound,
                format!("no session {id} on this operator (see `remora session ls`)"),
            )
        })?;
        // Full means orders are pending; a kill still has to land.
        tokio::spawn(async move {
            let _ = tx.send(SessionCommand::Kill { reason }).await;
        });
        Ok(())
    }

    /// The order channel of session `id`.
    pub fn command_tx(&self, id: SessionId) -> Option<mpsc::Sender<SessionCommand>> {
        self.lock().sessions.get(&id).map(|e| e.command_tx.clone())
    }

    /// Work on the filter registry.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut FilterRegistry) -> R) -> R {
        let result = f(&mut self.lock().registry);
        self.notify();
        result
    }

    /// How many sessions are connected.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent, even on panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
