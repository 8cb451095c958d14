//! The local platform: targets are processes on this machine (`pid/<PID>`),
//! the agent is a local privileged process, and both background processes are
//! started here.
//!
//! Process tree: `remora run` starts `remora intproxy --detach`, which starts
//! the real intproxy in its own session and exits at once, so the intproxy is
//! never a child of the user's command (a `wait()` there must not wait for
//! remora). The intproxy starts the agent as its own child and stops it when
//! it exits.

use crate::error::{Error, Result};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ChildStdout;
use std::sync::mpsc;

/// Environment variable overriding where the agent binary is.
pub use remora_operator::platform::local::AGENT_BIN_ENV;
/// Environment variable overriding where the layer library is.
pub const LAYER_PATH_ENV: &str = "REMORA_LAYER_PATH";
/// Prefix of the line an intproxy prints when it could not start.
pub const FAILED_PREFIX: &str = "REMORA_INTPROXY_FAILED";

/// Find a file shipped next to the `remora` binary (or named by `env`).
pub fn find_component(file_name: &str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        if path.exists() {
            return Ok(path);
        }
        return Err(Error::MissingComponent {
            what: file_name.into(),
            looked: path.display().to_string(),
            env: env.into(),
        });
    }
    let exe = std::env::current_exe().map_err(|e| Error::Io(format!("locating remora: {e}")))?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // cargo puts test binaries one level deeper (target/debug/deps).
    let candidates = [dir.join(file_name), dir.join("..").join(file_name)];
    for c in &candidates {
        if c.exists() {
            return Ok(c.clone());
        }
    }
    Err(Error::MissingComponent {
        what: file_name.into(),
        looked: dir.display().to_string(),
        env: env.into(),
    })
}

/// Fail fast and clearly when the target process does not exist.
pub fn check_target(pid: u32, target: &str) -> Result<()> {
    if Path::new(&format!("/proc/{pid}")).exists() {
        Ok(())
    } else {
        Err(Error::TargetNotFound {
            target: target.into(),
        })
    }
}

/// Root, or the three capabilities the agent needs.
pub fn check_privileges(target: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    const NEEDED: u64 = (1 << 21) | (1 << 12) | (1 << 19); // SYS_ADMIN, NET_ADMIN, SYS_PTRACE
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if eff & NEEDED == NEEDED {
        Ok(())
    } else {
        Err(Error::NotPrivileged {
            target: target.into(),
        })
    }
}

/// How many stdout lines of a background process may wait to be read.
const LINES_CAPACITY: usize = 64;

/// The lines of `stdout`, read by a thread; the channel closes at EOF.
///
/// reader thread --line--> the caller waiting for the process to be ready
pub fn lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (line_tx, line_rx) = mpsc::sync_channel(LINES_CAPACITY);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line.trim_end().to_string()).is_err() {
                break;
            }
        }
    });
    line_rx
}

/// Parse `PREFIX addr`.
pub fn parse_ready(line: &str, prefix: &str) -> Option<SocketAddr> {
    line.strip_prefix(prefix)?.trim().parse().ok()
}
