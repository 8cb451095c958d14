//! The Kubernetes platform in the CLI: which cluster and agent settings a
//! session uses ([`KubeLaunch`], from the config), handed to the intproxy in
//! [`KUBE_LAUNCH_ENV`]; the intproxy then starts the agent through
//! [`remora_kube::KubePlatform`] ([`start_agent`]), reports each phase on its
//! stdout for the CLI's spinner, and deletes the agent when the run ends.

use crate::error::{Error, Result};
use remora_config::{AgentSettings, Config};
use remora_intproxy::{AgentDialer, AgentStream, DialFuture, IntProxy, IntProxyConfig};
use remora_kube::platform::{AgentForward, DirectAgent};
use remora_kube::{ClientOptions, KubePlatform};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Environment variable carrying a [`KubeLaunch`] (JSON) to the intproxy.
pub const KUBE_LAUNCH_ENV: &str = "REMORA_INTPROXY_KUBE";
/// Prefix of the intproxy's progress lines (before its ready line).
pub const PROGRESS_PREFIX: &str = "REMORA_INTPROXY_PROGRESS";
/// Time the CLI allows beyond `agent.startup_timeout` for connecting,
/// resolving, creating the Job and the port-forward.
const START_MARGIN: Duration = Duration::from_secs(60);
/// How long a cluster agent whose container runs may take to answer.
const AGENT_LISTEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the intproxy checks, while starting, that the CLI still waits.
const CALLER_CHECK: Duration = Duration::from_millis(200);

/// How a session reaches its cluster and starts its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubeLaunch {
    /// kubeconfig, context, namespace.
    pub options: ClientOptions,
    /// The `agent.*` keys.
    pub settings: AgentSettings,
}

impl KubeLaunch {
    /// The settings a resolved config gives.
    pub fn from_config(config: &Config) -> KubeLaunch {
        KubeLaunch {
            options: ClientOptions {
                kubeconfig: config.kubeconfig.clone(),
                context: config.context.clone(),
                namespace: config.namespace.clone(),
            },
            settings: config.agent.clone(),
        }
    }

    /// As the value of [`KUBE_LAUNCH_ENV`].
    pub fn to_env_value(&self) -> String {
        // Cannot fail: plain strings, numbers and string maps.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Read [`KUBE_LAUNCH_ENV`].
    ///
    /// # Errors
    /// [`Error::IntproxyStart`] when it is missing or not a launch's JSON.
    pub fn from_env() -> Result<KubeLaunch> {
        let value = std::env::var(KUBE_LAUNCH_ENV).map_err(|_| Error::IntproxyStart {
            reason: format!("--kube needs {KUBE_LAUNCH_ENV}"),
        })?;
        serde_json::from_str(&value).map_err(|e| Error::IntproxyStart {
            reason: format!("{KUBE_LAUNCH_ENV}: {e}"),
        })
    }

    /// How long the CLI waits for the intproxy to be ready.
    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.settings.startup_timeout)) + START_MARGIN
    }
}

/// Start the agent for `target` (in the intproxy's runtime), to be reached
/// through [`dialer`]: each phase goes
/// to stdout as a [`PROGRESS_PREFIX`] line; the start is cancelled (and what
/// it created deleted) when the CLI stops waiting (its end of stdout closes:
/// Ctrl-C, SIGTERM, SIGKILL) or the intproxy gets SIGTERM, SIGINT or SIGHUP.
///
/// # Errors
/// The platform's reason, as a user-facing line.
pub async fn start_agent(launch: &KubeLaunch, target: &str) -> Result<DirectAgent> {
    let platform = KubePlatform {
        options: launch.options.clone(),
        settings: launch.settings.clone(),
    };
    let cancel = CancellationToken::new();
    let watcher = tokio::spawn(watch_caller(cancel.clone()));
    let report = |phase: &remora_kube::platform::Phase| progress(&phase.to_string());
    let started = platform.start_direct(target, &report, &cancel).await;
    watcher.abort();
    // The CLI names the target (`Error::KubeStart`).
    started.map_err(|e| Error::Io(e.to_string()))
}

/// The intproxy's way to the agent: each connection is a port-forward
/// WebSocket of its own that carries the remora protocol in its payloads
/// (no local socket and relay in between).
pub fn dialer(forward: Arc<AgentForward>) -> AgentDialer {
    AgentDialer {
        describe: format!(
            "pod {} port {} (through the API server's port-forward)",
            forward.pod(),
            remora_kube::manifest::AGENT_PORT
        ),
        dial: Arc::new(move || -> DialFuture {
            let forward = forward.clone();
            Box::pin(async move {
                let opened = forward
                    .open()
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok(Box::new(opened.into_stream()) as Box<dyn AgentStream>)
            })
        }),
    }
}

/// Connect the intproxy to a cluster agent whose container runs but may
/// not listen yet: a refused or closed first connection through the
/// port-forward is retried (short waits, doubling) for [`AGENT_LISTEN_TIMEOUT`].
///
/// # Errors
/// The last connection error once the time is up; any other error at once.
pub async fn connect_when_listening(config: IntProxyConfig) -> Result<IntProxy> {
    let deadline = tokio::time::Instant::now() + AGENT_LISTEN_TIMEOUT;
    let mut delay = Duration::from_millis(20);
    loop {
        match IntProxy::start(config.clone()).await {
            Err(
                e @ (remora_intproxy::Error::AgentConnect { .. }
                | remora_intproxy::Error::Handshake { .. }),
            ) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "the agent does not answer yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            other => return Ok(other?),
        }
    }
}

/// Print one progress line for the CLI.
pub fn progress(message: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PROGRESS_PREFIX} {message}");
    let _ = out.flush();
}

/// Cancel when the reader of stdout is gone or a terminating signal arrives.
async fn watch_caller(cancel: CancellationToken) {
    let mut tick = tokio::time::interval(CALLER_CHECK);
    let signal = crate::intproxy_cmd::terminating_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if stdout_reader_gone() {
                    tracing::warn!("remora stopped waiting: cancelling the agent's start");
                    break;
                }
            }
            name = &mut signal => {
                tracing::warn!("the intproxy received {name}: cancelling the agent's start");
                break;
            }
        }
    }
    cancel.cancel();
}

/// Whether stdout is a pipe whose reading end is closed.
fn stdout_reader_gone() -> bool {
    use std::os::fd::AsFd;
    reader_gone(std::io::stdout().as_fd())
}

/// Whether `fd` is the writing end of a pipe whose reading end is closed.
fn reader_gone(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
