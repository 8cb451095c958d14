//! Where targets live and how their agents start: the [`Platform`] seam.
//!
//! The operator only needs two things from a platform: turn a target string
//! into something an agent can be started for ([`Platform::resolve`]), and
//! start that agent ([`Platform::start_agent`]), getting back where it listens,
//! the token it accepts and a handle to stop it. [`local::LocalPlatform`]
//! spawns `remora-agent` processes on this machine; Kubernetes comes later.

pub mod local;

use crate::error::Result;
use futures::future::BoxFuture;
use remora_protocol::SessionToken;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A target the platform knows how to serve, under its canonical name
/// (`pid/4242`): sessions naming the same target share one agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResolvedTarget {
    /// Canonical name, also what the agent is told in the handshake.
    pub name: String,
}

/// A running agent, as started by a platform.
#[derive(Debug)]
pub struct StartedAgent {
    /// Where the agent accepts clients.
    pub addr: SocketAddr,
    /// The token it accepts.
    pub token: SessionToken,
    /// Stops it.
    pub handle: Box<dyn AgentHandle>,
}

/// Controls one agent started by a platform.
pub trait AgentHandle: Send + Sync + std::fmt::Debug {
    /// Whether the agent still runs (it exits on its own when its target
    /// exits or after its last client left).
    fn is_running(&mut self) -> bool;

    /// Stop the agent and wait until it is gone (its traffic rules removed).
    ///
    /// # Guarantees
    /// Idempotent with the agent exiting by itself; returns once the agent
    /// process no longer runs.
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Where targets live: resolves them and starts their agents.
pub trait Platform: Send + Sync + std::fmt::Debug + 'static {
    /// Short name (`local`, `kubernetes`), for logs.
    fn name(&self) -> &'static str;

    /// Check `target` and give its canonical name.
    ///
    /// # Errors
    /// [`crate::Error::Target`] with a user-facing reason.
    fn resolve(&self, target: &str) -> Result<ResolvedTarget>;

    /// Start an agent for `target` and wait until it accepts clients.
    ///
    /// # Errors
    /// [`crate::Error::AgentStart`] with a user-facing reason.
    fn start_agent(&self, target: &ResolvedTarget) -> BoxFuture<'static, Result<StartedAgent>>;

    /// The labels of `target`'s object, for policies that select targets
    /// by label; `None` when the platform has none or they cannot be read
    /// now (such policies then apply whatever the labels).
    fn target_labels(
        &self,
        _target: &ResolvedTarget,
    ) -> BoxFuture<'static, Option<BTreeMap<String, String>>> {
        Box::pin(async { None })
    }

    /// A command for `program` (a database client) whose connections leave
    /// from `target`'s network, so addresses mean what they mean to the
    /// target. `target` is a canonical name; when the target is gone the
    /// command runs from the operator's own network. Spawn it on the thread
    /// that waits for it: the local platform's command dies with the thread
    /// that spawned it (so with a killed operator).
    fn dial(&self, target: &str, program: &str) -> std::process::Command;
}
