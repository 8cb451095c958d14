//! The local platform: a target is a process on this machine (`pid/<PID>`)
//! and its agent is a `remora-agent` child process.
//!
//! [`spawn_agent`] and [`stop_agent`] are the one place that starts and stops
//! a local agent process: the operator uses them through [`LocalPlatform`],
//! and `remora intproxy` (direct mode, no operator) calls them directly.

use crate::error::{Error, Result};
use crate::platform::{AgentHandle, Platform, ResolvedTarget, StartedAgent};
use futures::future::BoxFuture;
use remora_protocol::SessionToken;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable carrying the token an agent accepts.
pub const AGENT_TOKEN_ENV: &str = "REMORA_AGENT_TOKEN";
/// Environment variable overriding where the agent binary is.
pub const AGENT_BIN_ENV: &str = "REMORA_AGENT_BIN";
/// Prefix of the agent's ready line on its stdout.
pub const AGENT_READY_PREFIX: &str = "REMORA_AGENT_LISTENING";
/// File name of the agent binary.
pub const AGENT_FILE: &str = "remora-agent";
/// How long an agent may take to start listening.
pub const AGENT_START_TIMEOUT: Duration = Duration::from_secs(20);

/// A local agent process and where it listens.
#[derive(Debug)]
pub struct LocalAgent {
    /// The `remora-agent` child.
    pub child: Child,
    /// Its listening address.
    pub addr: SocketAddr,
}

/// Start `bin --target <target> --listen 127.0.0.1:0` with `token` and wait
/// (blocking, up to `timeout`) for its ready line.
///
/// # Errors
/// A user-facing reason: the binary cannot run, the agent exited (with its
/// exit status; its own explanation went to stderr), or it said nothing in time.
pub fn spawn_agent(
    bin: &Path,
    target: &str,
    token: &str,
    timeout: Duration,
) -> std::result::Result<LocalAgent, String> {
    spawn_agent_with(bin, target, token, timeout, None)
}

/// [`spawn_agent`], also serving the local fast path (`--fd-broker`) on
/// `fd_broker.0` for layers presenting the token `fd_broker.1`.
///
/// # Errors
/// As [`spawn_agent`].
pub fn spawn_agent_with(
    bin: &Path,
    target: &str,
    token: &str,
    timeout: Duration,
    fd_broker: Option<(&Path, &str)>,
) -> std::result::Result<LocalAgent, String> {
    let mut cmd = Command::new(bin);
    if let Some((path, broker_token)) = fd_broker {
        cmd.arg("--fd-broker")
            .arg(path)
            .env(remora_protocol::broker::BROKER_TOKEN_ENV, broker_token);
    }
    cmd.args(["--target", target, "--listen", "127.0.0.1:0"])
        .env(AGENT_TOKEN_ENV, token)
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if std::env::var_os("REMORA_AGENT_LOG").is_none() {
        cmd.env("REMORA_AGENT_LOG", "warn");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err("no stdout pipe".into());
    };
    match first_line(stdout, timeout) {
        Some(Ok(line)) => match line
            .strip_prefix(AGENT_READY_PREFIX)
            .and_then(|addr| addr.trim().parse().ok())
        {
            Some(addr) => Ok(LocalAgent { child, addr }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("unexpected output {line:?}"))
            }
        },
        Some(Err(())) => {
            let status = child.wait();
            Err(match status {
                Ok(status) => format!("it exited with {status}"),
                Err(_) => "it is not responding".into(),
            })
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("no answer within {}s", timeout.as_secs()))
        }
    }
}

/// The first stdout line; `Some(Err)` at end of file, `None` on timeout.
fn first_line(stdout: ChildStdout, timeout: Duration) -> Option<Result<String, ()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let got = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(match got {
            Ok(0) | Err(_) => Err(()),
            Ok(_) => Ok(line.trim_end().to_owned()),
        });
    });
    rx.recv_timeout(timeout).ok()
}

/// Stop a local agent (blocking): give it `voluntary` to exit on its own (it
/// does once its last client left), then SIGTERM (it removes its traffic
/// rules), and SIGKILL after `grace`.
///
/// # Guarantees
/// The child is reaped when this returns.
pub fn stop_agent(mut child: Child, voluntary: Duration, grace: Duration) {
    if wait_until(&mut child, Instant::now() + voluntary) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if wait_until(&mut child, Instant::now() + grace) {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_until(child: &mut Child, deadline: Instant) -> bool {
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Find the agent binary: `explicit`, else [`AGENT_BIN_ENV`], else next to
/// the running executable (or one directory up, for cargo test binaries).
///
/// # Errors
/// [`Error::MissingAgent`] naming where it looked.
pub fn find_agent_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(Error::MissingAgent {
                looked: path.display().to_string(),
            })
        };
    }
    if let Some(path) = std::env::var_os(AGENT_BIN_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::MissingAgent {
                looked: path.display().to_string(),
            })
        };
    }
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    [dir.join(AGENT_FILE), dir.join("..").join(AGENT_FILE)]
        .into_iter()
        .find(|c| c.is_file())
        .ok_or_else(|| Error::MissingAgent {
            looked: dir.display().to_string(),
        })
}

/// Targets are local processes; agents are `remora-agent` children.
#[derive(Debug, Clone)]
pub struct LocalPlatform {
    agent_bin: PathBuf,
}

impl LocalPlatform {
    /// A local platform starting agents from `agent_bin`.
    pub fn new(agent_bin: PathBuf) -> Self {
        LocalPlatform { agent_bin }
    }
}

/// Parse `pid/<PID>`.
///
/// # Errors
/// A user-facing reason.
pub fn parse_pid_target(target: &str) -> std::result::Result<u32, String> {
    let pid = target
        .strip_prefix("pid/")
        .ok_or_else(|| format!("the local platform serves pid/<PID> targets, not {target:?}"))?;
    pid.parse::<u32>()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| format!("{pid:?} is not a process id"))
}

/// A command that runs `program args…` and dies (SIGKILL) when the
/// operator's thread that spawns it ends, so a database copy does not
/// outlive a killed operator (its successor drops the half-made branch; the
/// copy would only hold the source's connection and snapshot until it
/// finished). util-linux `setpriv --pdeathsig` arms `PR_SET_PDEATHSIG` and
/// execs the rest (the operator has no `unsafe` for a `pre_exec` of its
/// own); without `setpriv` on this machine the command runs as it is.
///
/// The signal fires when the spawning *thread* exits, not the process:
/// every caller spawns a copy's programs on the blocking thread that then
/// waits for them, so that thread lives as long as they do. It survives the
/// `exec` of `nsenter` and of the program it runs, not a fork (a server
/// that `sh` starts in the background lives on).
fn dying_with_the_operator(program: &str) -> Command {
    static SETPRIV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let have = *SETPRIV.get_or_init(|| {
        Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if have {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", program]);
        cmd
    } else {
        Command::new(program)
    }
}

impl Platform for LocalPlatform {
    fn name(&self) -> &'static str {
        "local"
    }

    fn dial(&self, target: &str, program: &str) -> Command {
        // Enter the target's network namespace only when it is not ours:
        // nsenter needs privileges the operator may lack for same-netns targets.
        let netns = parse_pid_target(target)
            .ok()
            .map(|pid| format!("/proc/{pid}/ns/net"))
            .filter(|ns| {
                let theirs = std::fs::read_link(ns).ok();
                theirs.is_some() && theirs != std::fs::read_link("/proc/self/ns/net").ok()
            });
        match netns {
            Some(ns) => {
                let mut cmd = dying_with_the_operator("nsenter");
                cmd.arg(format!("--net={ns}")).arg("--").arg(program);
                cmd
            }
            None => dying_with_the_operator(program),
        }
    }

    fn resolve(&self, target: &str) -> Result<ResolvedTarget> {
        let error = |reason: String| Error::Target {
            target: target.to_owned(),
            reason,
        };
        let pid = parse_pid_target(target).map_err(error)?;
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(error(
                "no such process (is the workload running?)".to_owned(),
            ));
        }
        Ok(ResolvedTarget {
            name: format!("pid/{pid}"),
        })
    }

    fn start_agent(&self, target: &ResolvedTarget) -> BoxFuture<'static, Result<StartedAgent>> {
        let bin = self.agent_bin.clone();
        let name = target.name.clone();
        Box::pin(async move {
            let token = crate::token::random_token().map_err(|reason| Error::AgentStart {
                target: name.clone(),
                reason,
            })?;
            let spawned = {
                let (name, token) = (name.clone(), token.clone());
                tokio::task::spawn_blocking(move || {
                    spawn_agent(&bin, &name, &token, AGENT_START_TIMEOUT)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|spawned| spawned)
            };
            let agent = spawned.map_err(|reason| Error::AgentStart {
                target: name.clone(),
                reason,
            })?;
            tracing::info!(target = %name, addr = %agent.addr, pid = agent.child.id(), "agent started");
            Ok(StartedAgent {
                addr: agent.addr,
                token: SessionToken(token),
                handle: Box::new(LocalAgentHandle { child: agent.child }),
            })
        })
    }
}

/// A local agent child process.
#[derive(Debug)]
struct LocalAgentHandle {
    child: Child,
}

impl AgentHandle for LocalAgentHandle {
    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        let child = self.child;
        Box::pin(async move {
            let pid = child.id();
            let _ = tokio::task::spawn_blocking(move || {
                stop_agent(child, Duration::ZERO, Duration::from_secs(3));
            })
            .await;
            tracing::info!(pid, "agent stopped");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_targets_parse_and_others_are_explained() {
        assert_eq!(parse_pid_target("pid/42"), Ok(42));
        assert!(parse_pid_target("pid/0").is_err());
        let err = parse_pid_target("deployment/api").unwrap_err();
        assert!(err.contains("pid/<PID>"), "{err}");
        assert!(
            parse_pid_target("pid/x")
                .unwrap_err()
                .contains("not a process id")
        );
    }

    #[test]
    fn a_missing_process_is_refused_with_a_hint() {
        let platform = LocalPlatform::new(PathBuf::from("/nonexistent"));
        let err = platform.resolve("pid/999999999").unwrap_err().to_string();
        assert!(err.contains("no such process"), "{err}");
        let me = format!("pid/{}", std::process::id());
        assert_eq!(platform.resolve(&me).unwrap().name, me);
    }
}
