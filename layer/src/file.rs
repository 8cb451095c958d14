//! Files: reads of the target's files (and writes in `write` mode).
//!
//! Every path-taking call is made absolute (relative paths against the
//! working directory, or against a remote directory's placeholder fd for the
//! `*at` calls) and routed by [`remora_config::FsPolicy::decide`]: local paths
//! go to libc untouched, `NotFound` fails with `ENOENT`, remote ones are served
//! by the agent inside the target's mount namespace.
//!
//! # Remote files become real descriptors
//! * **The target's file itself**, on the local fast path
//!   ([`crate::broker`]): a read-only open of a regular file that this run
//!   can never write remotely is opened by the agent inside the target's
//!   mount namespace and handed over (`SCM_RIGHTS`); nothing is recorded or
//!   hooked for it afterwards.
//! * **Snapshots.** A read-only open of a regular remote file of at most
//!   [`ops::SNAPSHOT_LIMIT`] bytes is copied into a `memfd` (inline in the open
//!   reply when it fits one frame, else with a few 1 MiB `Pread`s) that is
//!   reopened read-only in place of the application's fd. From then on
//!   `read`/`pread`/`mmap`/`sendfile`/`dup`/`fork`/stdio are plain kernel
//!   operations; only `fstat` & co. are rewritten so they report the target's
//!   metadata.
//! * **Remote handles.** Bigger files and opens for writing keep the agent's
//!   handle ([`RemoteHandle`]); the application gets an empty `memfd`
//!   *placeholder* so its fd number is really taken, and the hooks in
//!   [`io`] forward `read`/`write`/`pread`/`pwrite`/`readv`/`writev`/
//!   `lseek`/`ftruncate` on it. `fopen` of such a file returns a
//!   `fopencookie` stream instead (glibc's stdio reads through internal
//!   symbols that interposition cannot see), whose `fileno` is a placeholder.
//! * **Directories** (`open(O_DIRECTORY)`, or a read-only open that turns out
//!   to be one) get a placeholder that remembers the path, so `fstat`,
//!   `openat(dirfd, ...)` and `fdopendir` work; `opendir` returns a fake `DIR`
//!   ([`dir`]) that pages entries with `ReadDirBatch`.
//!
//! # Limits
//! Placeholders only behave while the layer is loaded in the same process:
//! after `exec` they read as empty files (snapshots keep working). On a
//! placeholder `mmap` fails with `ENODEV`, `copy_file_range` with `EXDEV` and
//! `sendfile` with `EINVAL` (callers fall back to `read`/`write`); `splice`
//! sees the empty `memfd`. A forked child reuses the parent's remote handles over its own
//! intproxy session and never closes them remotely (the parent owns them).
//! glibc's own `scandir`, `glob`, `ftw`/`nftw` and `fts_*` open directories
//! through its internal `opendir`, so they list the local file system
//! (gnulib's `fts`, used by `find`, `du`, `grep -r`, goes through
//! `openat` + `fdopendir` and sees the target). `chdir` into a remote
//! directory makes it the base of relative paths ([`cwd`]); the kernel's
//! working directory stays local.
//!
//! # Replies expected from the agent
//! `Open`/`OpenDir` → `Opened`; `Read`/`Pread`/`ReadDirBatch` → `Data`/
//! `DirEntries`; `Write`/`Pwrite` → `Written`; `Seek` → `Position`;
//! `Stat`/`Fstat` → `Metadata`; `ReadLink`/`Canonicalize` → `Path`; the rest
//! → `Done`.

pub mod cwd;
pub mod dir;
pub mod hooks;
pub mod io;
pub mod local_paths;
pub mod meta;
pub mod ops;
pub mod read_mode;
pub mod stat;
pub mod stdio;
pub mod streams;

use crate::fd::Shared;
use crate::guard::DetourGuard;
use remora_protocol::RemoteFd;
use remora_protocol::fs::{FsRequest, Metadata};
use std::sync::Arc;

/// What the layer knows about a managed file descriptor. Cheap to clone: the
/// `read`/`write` hooks copy it out of the fd table on every call.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Absolute path of the file in the target.
    pub path: Arc<str>,
    /// The target's metadata at open time (what `fstat` reports for snapshots
    /// and directories).
    pub metadata: Metadata,
    /// The agent's open handle behind a placeholder fd, shared by every
    /// duplicate; `None` for snapshots (the fd holds the content) and for
    /// directories.
    pub remote: Option<Shared<RemoteHandle>>,
    /// For a write stream (a write-only remote file behind a local socket):
    /// the intproxy's end of it, which names the stream in `StreamSync`.
    pub stream: Option<std::net::SocketAddr>,
}

impl FileInfo {
    /// Whether this fd stands for a remote directory (usable as a `dirfd`).
    pub fn is_dir(&self) -> bool {
        stat::is_dir(self.metadata.mode)
    }
}

/// A file handle opened by the agent on this process's behalf.
///
/// # Guarantees
/// Dropping the last reference sends `FsRequest::Close` (best effort: a lost
/// intproxy is ignored), but only in the process that opened it: a forked
/// child's copies must not close the parent's handle.
#[derive(Debug)]
pub struct RemoteHandle {
    pub fd: RemoteFd,
    owner_pid: u32,
}

impl RemoteHandle {
    /// Take ownership of a remote handle opened by this process.
    pub fn new(fd: RemoteFd) -> Self {
        RemoteHandle {
            fd,
            owner_pid: std::process::id(),
        }
    }
}

impl Drop for RemoteHandle {
    fn drop(&mut self) {
        if std::process::id() != self.owner_pid {
            return;
        }
        // Usually already inside the layer (close hook); enter if not.
        let _g = DetourGuard::enter();
        let _ = ops::fs(FsRequest::Close { fd: self.fd });
    }
}

#[cfg(test)]
mod tests;
