//! One agent per target, shared by every session of that target: started on
//! the first session, stopped after the last one left.
//!
//! Each target has a slot guarded by an async mutex. Acquiring a lease starts
//! the agent when there is none (or it died); releasing the last lease stops
//! it while the slot is still locked, so a session arriving meanwhile waits
//! for the old agent to be gone (its traffic rules removed) and then starts a
//! fresh one: two agents never share a target.

use crate::error::Result;
use crate::platform::{Platform, ResolvedTarget, StartedAgent};
use remora_protocol::SessionToken;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The agents of every target.
#[derive(Debug)]
pub struct AgentPool {
    platform: Arc<dyn Platform>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

#[derive(Debug, Default)]
struct Slot {
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    agent: Option<StartedAgent>,
    leases: usize,
}

/// A session's use of its target's agent. Give it back with
/// [`AgentLease::release`] (dropping it releases it in the background).
#[derive(Debug)]
pub struct AgentLease {
    pool: Arc<AgentPool>,
    target: String,
    /// Where the agent listens.
    pub addr: SocketAddr,
    /// The token it accepts.
    pub token: SessionToken,
    /// The agent was started for this lease (it may not listen yet).
    pub fresh: bool,
    released: bool,
}

impl AgentPool {
    /// A pool starting agents on `platform`.
    pub fn new(platform: Arc<dyn Platform>) -> Arc<Self> {
        Arc::new(AgentPool {
            platform,
            slots: Mutex::default(),
        })
    }

    /// The platform agents are started on.
    pub fn platform(&self) -> &Arc<dyn Platform> {
        &self.platform
    }

    fn slot(&self, target: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(target.to_owned())
            .or_default()
            .clone()
    }

    /// Use `target`'s agent, starting it when none runs. With `restart`, an
    /// agent that is running but was found unreachable is replaced (only
    /// when no other session uses it).
    ///
    /// # Errors
    /// [`crate::Error::AgentStart`].
    pub async fn acquire(
        self: &Arc<Self>,
        target: &ResolvedTarget,
        restart: bool,
    ) -> Result<AgentLease> {
        let slot = self.slot(&target.name);
        let mut state = slot.state.lock().await;
        let alive = match state.agent.as_mut() {
            Some(agent) => agent.handle.is_running() && !(restart && state.leases == 0),
            None => false,
        };
        let fresh = !alive;
        if !alive {
            if let Some(old) = state.agent.take() {
                tracing::info!(target = %target.name, "replacing an agent that stopped");
                old.handle.stop().await;
            }
            state.agent = Some(self.platform.start_agent(target).await?);
        }
        state.leases += 1;
        let agent = state.agent.as_ref().map(|a| (a.addr, a.token.clone()));
        let Some((addr, token)) = agent else {
            unreachable!("an agent was just ensured");
        };
        Ok(AgentLease {
            pool: self.clone(),
            target: target.name.clone(),
            addr,
            token,
            fresh,
            released: false,
        })
    }

    async fn release(&self, target: &str) {
        let slot = self.slot(target);
        let mut state = slot.state.lock().await;
        state.leases = state.leases.saturating_sub(1);
        if state.leases == 0
            && let Some(agent) = state.agent.take()
        {
            tracing::info!(%target, "last session left; stopping its agent");
            agent.handle.stop().await;
        }
    }

    /// Whether an agent runs for `target` now (tests).
    pub async fn has_agent(&self, target: &str) -> bool {
        let slot = self.slot(target);
        let mut state = slot.state.lock().await;
        state
            .agent
            .as_mut()
            .is_some_and(|agent| agent.handle.is_running())
    }

    /// Stop every agent (operator shutdown).
    pub async fn stop_all(&self) {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            let mut state = slot.state.lock().await;
            if let Some(agent) = state.agent.take() {
                agent.handle.stop().await;
            }
        }
    }
}

impl AgentLease {
    /// Give the agent back; the last lease of a target stops its agent.
    pub async fn release(mut self) {
        self.released = true;
        self.pool.release(&self.target).await;
    }
}

impl Drop for AgentLease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let pool = self.pool.clone();
        let target = std::mem::take(&mut self.target);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { pool.release(&target).await });
        }
    }
}

#[cfg(test)]
mod tests;
