//! Processes inside a pod: [`PodCommand`] builds an `nsenter` into the pause process's
//! namespaces, [`PodProcess`] kills its process group on drop, and namespace scans find
//! every process left in a pod's network or mount namespace.

use std::{
    ffi::OsStr,
    fs,
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};

use crate::{
    cmd,
    error::{Error, Result},
};

/// How long teardown waits for SIGKILLed processes to disappear.
pub(crate) const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// A command that will run inside a pod: its network, mount and UTS namespaces, with
/// exactly the pod's environment (plus whatever [`env`](Self::env) adds).
///
/// Defaults: stdin and stdout are `/dev/null`, stderr is inherited (so failures show in
/// the test output); [`output`](Self::output) captures stdout and stderr.
#[derive(Debug)]
pub struct PodCommand {
    cmd: Command,
    pod: String,
}

impl PodCommand {
    pub(crate) fn new(
        pod: &str,
        pause_pid: u32,
        env: &[(String, String)],
        program: &OsStr,
    ) -> PodCommand {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(pause_pid.to_string())
            .args(["--net", "--mount", "--uts", "--"])
            .arg(program)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Own process group, so dropping the handle also kills what it forked.
            .process_group(0);
        PodCommand {
            cmd,
            pod: pod.to_owned(),
        }
    }

    /// Appends one argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Adds or overrides one environment variable on top of the pod's environment.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(key, value);
        self
    }

    /// Sets stdin.
    pub fn stdin(&mut self, stdio: impl Into<Stdio>) -> &mut Self {
        self.cmd.stdin(stdio);
        self
    }

    /// Sets stdout.
    pub fn stdout(&mut self, stdio: impl Into<Stdio>) -> &mut Self {
        self.cmd.stdout(stdio);
        self
    }

    /// Sets stderr.
    pub fn stderr(&mut self, stdio: impl Into<Stdio>) -> &mut Self {
        self.cmd.stderr(stdio);
        self
    }

    /// The underlying `nsenter ... -- program args` command, for anything not forwarded.
    pub fn as_command_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Starts the process; the returned handle kills its process group when dropped.
    ///
    /// # Errors
    /// [`Error::Spawn`] when `nsenter` cannot be started.
    pub fn spawn(&mut self) -> Result<PodProcess> {
        let child = self.cmd.spawn().map_err(|source| Error::Spawn {
            what: format!("starting a process in pod {}", self.pod),
            program: "nsenter".to_owned(),
            source,
        })?;
        Ok(PodProcess {
            shown: cmd::describe(&self.cmd),
            child,
            reaped: false,
        })
    }

    /// Runs to completion capturing stdout and stderr; a non-zero exit is *not* an error
    /// here (check `status`), only failing to run is.
    ///
    /// # Errors
    /// [`Error::Spawn`] when `nsenter` cannot be started.
    pub fn output(&mut self) -> Result<Output> {
        self.cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| Error::Spawn {
                what: format!("running a process in pod {}", self.pod),
                program: "nsenter".to_owned(),
                source,
            })
    }
}

/// A process running inside a pod.
///
/// # Guarantees
/// Dropping the handle (also while unwinding from a panic) SIGKILLs the process's whole
/// process group and reaps the process, unless it was already reaped through
/// [`try_wait`](Self::try_wait) / [`wait`](Self::wait). Anything that escaped the
/// group is still killed when its pod is torn down (namespace scan).
#[derive(Debug)]
pub struct PodProcess {
    child: Child,
    shown: String,
    reaped: bool,
}

impl PodProcess {
    /// PID of the process (as seen from the host: the pod shares the host PID namespace).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `nsenter ...` command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.shown
    }

    /// The child, to take piped stdin/stdout/stderr.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Exit status if it has exited (reaping it), `None` while it runs.
    ///
    /// # Errors
    /// [`Error::Io`] when `waitpid` fails.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = self
            .child
            .try_wait()
            .map_err(|e| Error::io("waiting for", &self.shown, e))?;
        self.reaped |= status.is_some();
        Ok(status)
    }

    /// Waits for it to exit on its own.
    ///
    /// # Errors
    /// [`Error::Io`] when `waitpid` fails.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        let status = self
            .child
            .wait()
            .map_err(|e| Error::io("waiting for", &self.shown, e))?;
        self.reaped = true;
        Ok(status)
    }

    /// SIGKILLs the process group and reaps the process; idempotent.
    ///
    /// # Errors
    /// [`Error::Io`] when reaping fails.
    pub fn kill(&mut self) -> Result<()> {
        if self.reaped {
            // The PID may already belong to someone else: never signal it again.
            return Ok(());
        }
        // The unreaped leader keeps its PID (= PGID) reserved, so this cannot hit a
        // stranger; ESRCH only means the group is already empty.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        self.wait().map(drop)
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("remora-tests: killing `{}`: {e}", self.shown);
        }
    }
}

/// Inode of `/proc/PID/ns/KIND` (`net`, `mnt`, ...), `None` if the process is gone.
pub(crate) fn ns_inode(pid: u32, kind: &str) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    let text = link.to_str()?;
    text.strip_prefix(kind)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// PIDs (never this process, never PID 1) whose network namespace is `net` or whose mount
/// namespace is `mnt`.
pub(crate) fn pids_in_namespaces(net: Option<u64>, mnt: Option<u64>) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && pid != 1)
        .filter(|&pid| {
            (net.is_some() && ns_inode(pid, "net") == net)
                || (mnt.is_some() && ns_inode(pid, "mnt") == mnt)
        })
        .collect()
}

/// SIGKILLs `pids` and polls until none is alive (zombies count as gone).
///
/// Returns the PIDs still alive at the deadline.
pub(crate) fn kill_all(pids: &[u32], deadline: Duration) -> Vec<u32> {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let until = Instant::now() + deadline;
    let mut delay = Duration::from_millis(1);
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&pid| super::naming::process_alive(pid))
            .collect();
        if alive.is_empty() || Instant::now() >= until {
            return alive;
        }
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_namespace_inodes() {
        let me = std::process::id();
        assert!(ns_inode(me, "net").is_some());
        assert!(ns_inode(me, "mnt").is_some());
        assert_eq!(ns_inode(u32::MAX, "net"), None);
    }

    #[test]
    fn scan_never_returns_self_or_init() {
        let me = std::process::id();
        let pids = pids_in_namespaces(ns_inode(me, "net"), None);
        assert!(!pids.contains(&me));
        assert!(!pids.contains(&1));
    }

    #[test]
    fn kill_all_reports_nothing_left_for_a_killed_child() {
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        let left = kill_all(&[child.id()], KILL_DEADLINE);
        child.wait().unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}
