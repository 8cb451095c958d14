//! The remote working directory: `chdir`/`fchdir` into a directory of the
//! target make it the base of every relative path (`AT_FDCWD` calls), and
//! `getcwd` reports it. The kernel's working directory stays where it was
//! (it cannot point into another mount namespace).
//!
//! Children inherit it: a forked child copies this process's state, and an
//! exec'd one gets [`REMOTE_CWD_ENV`] (added by [`crate::exec`]), read back
//! when its layer starts.
//!
//! # Cost
//! Local calls never look here. A relative path pays one atomic load; the
//! lock is taken only while a remote working directory is set, to clone an
//! `Arc`.

use super::ops::{self, Routed};
use super::stat;
use crate::error::{HookError, HookResult};
use crate::fd::{self, Managed};
use libc::c_int;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Environment variable carrying the remote working directory to exec'd children.
pub const REMOTE_CWD_ENV: &str = "REMORA_REMOTE_CWD";

/// Whether [`REMOTE_CWD`] holds a directory (checked without the lock).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The target's directory that relative paths resolve against, when set.
static REMOTE_CWD: Mutex<Option<Arc<str>>> = Mutex::new(None);

/// The remote working directory, `None` (one atomic load) when it is local.
pub fn remote() -> Option<Arc<str>> {
    if !ACTIVE.load(Ordering::Acquire) {
        return None;
    }
    REMOTE_CWD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

fn set(dir: Option<Arc<str>>) {
    let mut slot = REMOTE_CWD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    ACTIVE.store(dir.is_some(), Ordering::Release);
    *slot = dir;
}

/// The working directory is local again (after a successful local `chdir`).
pub fn clear() {
    if ACTIVE.load(Ordering::Acquire) {
        set(None);
    }
}

/// Take the remote working directory a parent passed in the environment.
pub fn init_from_env() {
    if let Ok(dir) = std::env::var(REMOTE_CWD_ENV) {
        if dir.starts_with('/') {
            set(Some(dir.into()));
        }
    }
}

/// `path` with `.` and `..` components removed, lexically (absolute input).
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len());
    for part in parts {
        out.push('/');
        out.push_str(part);
    }
    out
}

/// Make the target's directory `path` the working directory, after checking
/// that it is one.
fn enter(path: &str) -> HookResult<()> {
    let metadata = ops::stat_remote(path, true)?;
    if !stat::is_dir(metadata.mode) {
        return Err(HookError::Errno(libc::ENOTDIR));
    }
    set(Some(path.into()));
    Ok(())
}

/// `chdir`: `Remote` when the working directory is now the target's `path`;
/// `Local` to call libc (and then [`clear`] on success).
pub fn chdir(path: &CStr) -> HookResult<Routed<()>> {
    match ops::locate(libc::AT_FDCWD, path, false)? {
        Routed::Remote(abs) => enter(&normalize(&abs)).map(Routed::Remote),
        Routed::Local(local) => Ok(Routed::Local(local)),
    }
}

/// `fchdir`: `Remote` when `fd` is a remote directory's placeholder.
pub fn fchdir(fd: c_int) -> HookResult<Routed<()>> {
    match fd::get(fd) {
        Some(Managed::File(info)) if info.is_dir() => {
            set(Some(info.path));
            Ok(Routed::Remote(()))
        }
        Some(Managed::File(_)) => Err(HookError::Errno(libc::ENOTDIR)),
        _ => Ok(Routed::Local(None)),
    }
}
