//! A `remora-operator` daemon for a test or a benchmark: started on a free
//! loopback port with its own token, stopped (SIGTERM, then SIGKILL) on drop.

use crate::error::{Error, Result};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the operator may take to announce its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `remora-operator serve --platform local`.
#[derive(Debug)]
pub struct OperatorProcess {
    child: Child,
    addr: SocketAddr,
    token: String,
}

impl OperatorProcess {
    /// Start the workspace's operator, with `policy` as its policy file.
    ///
    /// # Errors
    /// The binary is missing, or it did not announce its address in time.
    pub fn start(policy: Option<&Path>) -> Result<OperatorProcess> {
        Self::start_with(policy, &[])
    }

    /// Like [`OperatorProcess::start`], with more `serve` arguments
    /// (`--state-dir DIR`).
    ///
    /// # Errors
    /// As [`OperatorProcess::start`].
    pub fn start_with(policy: Option<&Path>, extra: &[&str]) -> Result<OperatorProcess> {
        Self::start_with_env(policy, extra, &[])
    }

    /// Like [`OperatorProcess::start_with`], with `env` added to the
    /// operator's environment.
    ///
    /// # Errors
    /// As [`OperatorProcess::start`].
    pub fn start_with_env(
        policy: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<OperatorProcess> {
        let bin = crate::bin_path("remora-operator")?;
        let token = format!("test-token-{}-{}", std::process::id(), unique());
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--platform", "local", "--listen", "127.0.0.1:0"]);
        if let Some(policy) = policy {
            cmd.arg("--policy").arg(policy);
        }
        cmd.args(extra);
        cmd.envs(env.iter().copied());
        if std::env::var_os("REMORA_OPERATOR_LOG").is_none() {
            cmd.env("REMORA_OPERATOR_LOG", "warn");
        }
        let mut child = cmd
            .env("REMORA_OPERATOR_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                what: "the operator".into(),
                program: bin.display().to_string(),
                source,
            })?;
        let stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            if let Some(stdout) = stdout {
                let _ = BufReader::new(stdout).read_line(&mut line);
            }
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let addr = line
            .trim()
            .strip_prefix("REMORA_OPERATOR_LISTENING")
            .and_then(|a| a.trim().parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout {
                what: format!("the operator's ready line (got {line:?})"),
                after: START_TIMEOUT,
            });
        };
        Ok(OperatorProcess { child, addr, token })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its token (for tests that speak the protocol themselves).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `remora <args>` set up to reach this operator as `user`
    /// (`REMORA_OPERATOR`, `REMORA_OPERATOR_TOKEN`, `REMORA_USER`).
    ///
    /// # Errors
    /// The `remora` binary is missing.
    pub fn remora(&self, user: &str) -> Result<Command> {
        let mut cmd = Command::new(crate::bin_path("remora")?);
        cmd.env("REMORA_OPERATOR", self.addr.to_string())
            .env("REMORA_OPERATOR_TOKEN", &self.token)
            .env("REMORA_USER", user);
        Ok(cmd)
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::SeqCst)
}
