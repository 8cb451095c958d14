//! Entering the target's namespaces: the seam between the agent's logic and
//! the privileged `unshare`/`setns` calls.
//!
//! A namespace is entered by a *thread*, once, when that thread starts: the
//! network thread enters the network namespace, the namespace workers enter
//! the mount, UTS and network namespaces. Everything they do afterwards
//! happens as if inside the target.
//!
//! The namespace files are opened once when the agent starts, so a target that
//! is being torn down cannot make a late thread enter the wrong namespace.

use crate::error::{Error, Result};
use crate::target::{ProcStat, TargetPid};
use nix::errno::Errno;
use nix::sched::CloneFlags;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The target's namespaces, as seen by the threads that work inside them.
///
/// The real implementation is [`ProcessNamespaces`]; unit tests use a double
/// that stays in the current namespaces.
pub trait TargetNamespaces: Send + Sync + std::fmt::Debug + 'static {
    /// How the target is named in logs and messages (`pid/4242`).
    fn name(&self) -> String;

    /// Move the calling thread into the target's network namespace.
    ///
    /// # Errors
    /// [`Error::NotPermitted`] without the needed privileges.
    fn enter_net(&self) -> Result<()>;

    /// Move the calling thread into the target's mount, UTS and network
    /// namespaces, so paths (including absolute symlinks), the hostname and
    /// abstract unix sockets resolve as inside the target. The thread stops
    /// sharing its root and working directory with the rest of the agent first.
    ///
    /// # Errors
    /// [`Error::NotPermitted`] without the needed privileges.
    fn enter_files(&self) -> Result<()>;

    /// The target's `/proc/<PID>` directory in the agent's own view of `/proc`
    /// (where `environ` is read).
    fn proc_dir(&self) -> PathBuf;

    /// Whether the target still runs (and is still the same process). Blocking
    /// but cheap: one small read under `/proc`.
    fn is_alive(&self) -> bool;
}

/// The namespaces of a process on this machine, opened from `/proc/<PID>/ns`.
#[derive(Debug)]
pub struct ProcessNamespaces {
    pid: TargetPid,
    start_time: u64,
    net: OwnedFd,
    mnt: OwnedFd,
    uts: OwnedFd,
}

impl ProcessNamespaces {
    /// Check that `pid` runs and open its namespace files.
    ///
    /// # Errors
    /// [`Error::TargetNotFound`] when no such (live) process exists,
    /// [`Error::NotPermitted`] when its namespaces cannot be opened.
    pub fn open(pid: TargetPid) -> Result<Self> {
        let stat = match ProcStat::read(pid) {
            Ok(stat) if !stat.is_gone() => stat,
            Ok(_) => return Err(Error::TargetNotFound { target: pid }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::TargetNotFound { target: pid });
            }
            Err(source) => {
                return Err(Error::InspectTarget {
                    target: pid,
                    source,
                });
            }
        };
        let open = |kind: &'static str| -> Result<OwnedFd> {
            let path = pid.proc_dir().join("ns").join(kind);
            File::open(&path).map(OwnedFd::from).map_err(|e| {
                match e.raw_os_error().map(Errno::from_raw) {
                    Some(Errno::ENOENT | Errno::ESRCH) => Error::TargetNotFound { target: pid },
                    Some(errno @ (Errno::EPERM | Errno::EACCES)) => {
                        tracing::debug!(path = %path.display(), %errno, "cannot open a namespace");
                        Error::NotPermitted { target: pid }
                    }
                    _ => Error::InspectTarget {
                        target: pid,
                        source: e,
                    },
                }
            })
        };
        Ok(ProcessNamespaces {
            pid,
            start_time: stat.start_time,
            net: open("net")?,
            mnt: open("mnt")?,
            uts: open("uts")?,
        })
    }

    fn setns(&self, fd: &OwnedFd, flag: CloneFlags, kind: &'static str) -> Result<()> {
        nix::sched::setns(fd, flag).map_err(|errno| self.enter_error(errno, kind))
    }

    fn enter_error(&self, errno: Errno, kind: &'static str) -> Error {
        match errno {
            Errno::EPERM | Errno::EACCES => {
                tracing::debug!(kind, %errno, "setns refused");
                Error::NotPermitted { target: self.pid }
            }
            other => Error::EnterNamespace {
                target: self.pid.to_string(),
                kind,
                source: other.into(),
            },
        }
    }
}

impl TargetNamespaces for ProcessNamespaces {
    fn name(&self) -> String {
        self.pid.to_string()
    }

    fn enter_net(&self) -> Result<()> {
        self.setns(&self.net, CloneFlags::CLONE_NEWNET, "network")
    }

    fn enter_files(&self) -> Result<()> {
        // setns(CLONE_NEWNS) refuses a thread that shares its fs_struct (root,
        // cwd, umask) with other threads, and changing the mount namespace of
        // one thread must not move the agent's other threads anyway.
        nix::sched::unshare(CloneFlags::CLONE_FS)
            .map_err(|errno| self.enter_error(errno, "filesystem context"))?;
        self.setns(&self.mnt, CloneFlags::CLONE_NEWNS, "mount")?;
        self.setns(&self.uts, CloneFlags::CLONE_NEWUTS, "UTS")?;
        self.setns(&self.net, CloneFlags::CLONE_NEWNET, "network")
    }

    fn proc_dir(&self) -> PathBuf {
        self.pid.proc_dir()
    }

    fn is_alive(&self) -> bool {
        matches!(ProcStat::read(self.pid),
                 Ok(stat) if !stat.is_gone() && stat.start_time == self.start_time)
    }
}

/// No target (`remora-agent --targetless`): the agent's own namespaces (its
/// pod's) are where files, DNS and connections happen, so nothing is entered
/// and no privilege is needed. The "target" is the agent process itself.
#[derive(Debug, Default)]
pub struct OwnNamespaces;

impl TargetNamespaces for OwnNamespaces {
    fn name(&self) -> String {
        "targetless".to_owned()
    }

    fn enter_net(&self) -> Result<()> {
        Ok(())
    }

    fn enter_files(&self) -> Result<()> {
        Ok(())
    }

    fn proc_dir(&self) -> PathBuf {
        PathBuf::from("/proc/self")
    }

    fn is_alive(&self) -> bool {
        true
    }
}

/// Test double: "the target" is the test process itself, in its current
/// namespaces, so unit tests need neither root nor a second process.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct CurrentNamespaces;

#[cfg(test)]
impl TargetNamespaces for CurrentNamespaces {
    fn name(&self) -> String {
        format!("pid/{}", std::process::id())
    }

    fn enter_net(&self) -> Result<()> {
        Ok(())
    }

    fn enter_files(&self) -> Result<()> {
        Ok(())
    }

    fn proc_dir(&self) -> PathBuf {
        PathBuf::from("/proc/self")
    }

    fn is_alive(&self) -> bool {
        true
    }
}
