//! Metadata changes on the target's files (`chmod`, `chown`, `utimensat`,
//! `truncate`, `link`, `symlink`) and file system figures (`statfs`,
//! `statvfs`), as requests the agent runs in the target's mount namespace.
//! The `extern "C"` shims are in [`hooks`].
//!
//! An fd-taking call (`fchmod`, `fchown`, `futimens`, `fstatfs`) on a remote
//! file acts on the path it was opened with: the protocol has no fd form.

pub mod hooks;

use super::FileInfo;
use super::ops::{self, Routed};
use crate::error::{HookError, HookResult};
use crate::fd::{self, Managed};
use crate::session;
use libc::c_int;
use remora_protocol::fs::{FsReply, FsRequest, FsStats, SetTime, Timestamp};
use std::ffi::CStr;

fn done(request: FsRequest) -> HookResult<()> {
    match ops::fs(request)? {
        FsReply::Done => Ok(()),
        other => Err(session::protocol_violation(&other)),
    }
}

/// The remote path behind a managed fd; `Local` for every other fd.
fn fd_path(fd: c_int) -> Routed<String> {
    match fd::get(fd) {
        Some(Managed::File(FileInfo { path, .. })) => Routed::Remote(path.to_string()),
        _ => Routed::Local(None),
    }
}

/// Where a `*at` metadata call acts: `AT_EMPTY_PATH` with an empty path (or
/// a null path, for `utimensat`) means `dirfd` itself.
fn target(dirfd: c_int, path: Option<&CStr>, flags: c_int) -> HookResult<Routed<String>> {
    match path {
        None => Ok(fd_path(dirfd)),
        Some(p) if p.is_empty() && flags & libc::AT_EMPTY_PATH != 0 => Ok(fd_path(dirfd)),
        Some(p) => ops::locate(dirfd, p, true),
    }
}

fn follows(flags: c_int) -> bool {
    flags & libc::AT_SYMLINK_NOFOLLOW == 0
}

/// `chmod`/`fchmodat`/`fchmod`.
pub fn set_mode(
    dirfd: c_int,
    path: Option<&CStr>,
    mode: u32,
    flags: c_int,
) -> HookResult<Routed<()>> {
    let path = match target(dirfd, path, flags)? {
        Routed::Remote(path) => path,
        Routed::Local(local) => return Ok(Routed::Local(local)),
    };
    done(FsRequest::SetMode {
        path,
        mode: mode & 0o7777,
        follow_symlinks: follows(flags),
    })
    .map(Routed::Remote)
}

/// `chown` family; `u32::MAX` (`-1`) leaves an id unchanged.
pub fn set_owner(
    dirfd: c_int,
    path: Option<&CStr>,
    uid: u32,
    gid: u32,
    flags: c_int,
) -> HookResult<Routed<()>> {
    let path = match target(dirfd, path, flags)? {
        Routed::Remote(path) => path,
        Routed::Local(local) => return Ok(Routed::Local(local)),
    };
    done(FsRequest::SetOwner {
        path,
        uid: (uid != u32::MAX).then_some(uid),
        gid: (gid != u32::MAX).then_some(gid),
        follow_symlinks: follows(flags),
    })
    .map(Routed::Remote)
}

/// One `struct timespec` of `utimensat` as the protocol's [`SetTime`].
pub fn set_time(ts: &libc::timespec) -> HookResult<SetTime> {
    match ts.tv_nsec {
        libc::UTIME_NOW => Ok(SetTime::Now),
        libc::UTIME_OMIT => Ok(SetTime::Omit),
        nanos if (0..1_000_000_000).contains(&nanos) => Ok(SetTime::At(Timestamp {
            secs: ts.tv_sec,
            nanos: nanos as u32,
        })),
        _ => Err(HookError::Errno(libc::EINVAL)),
    }
}

/// `utimensat`/`futimens`; `times` `None` means both now.
pub fn set_times(
    dirfd: c_int,
    path: Option<&CStr>,
    times: Option<[libc::timespec; 2]>,
    flags: c_int,
) -> HookResult<Routed<()>> {
    let path = match target(dirfd, path, flags)? {
        Routed::Remote(path) => path,
        Routed::Local(local) => return Ok(Routed::Local(local)),
    };
    let (atime, mtime) = match times {
        Some([a, m]) => (set_time(&a)?, set_time(&m)?),
        None => (SetTime::Now, SetTime::Now),
    };
    done(FsRequest::SetTimes {
        path,
        atime,
        mtime,
        follow_symlinks: follows(flags),
    })
    .map(Routed::Remote)
}

/// `truncate` of a path.
pub fn truncate(path: &CStr, len: i64) -> HookResult<Routed<()>> {
    let path = match ops::locate(libc::AT_FDCWD, path, true)? {
        Routed::Remote(path) => path,
        Routed::Local(local) => return Ok(Routed::Local(local)),
    };
    let len = u64::try_from(len).map_err(|_| HookError::Errno(libc::EINVAL))?;
    done(FsRequest::Truncate { path, len }).map(Routed::Remote)
}

/// Where a `link` happens: both names in the target, or both local (with
/// absolute replacements as in [`Routed::Local`]); across the two, `EXDEV`.
#[derive(Debug)]
pub enum Linked {
    Remote,
    Local(Option<std::ffi::CString>, Option<std::ffi::CString>),
}

/// `link`/`linkat`.
pub fn link(old_dirfd: c_int, old: &CStr, new_dirfd: c_int, new: &CStr) -> HookResult<Linked> {
    let side = |dirfd, path| match ops::locate(dirfd, path, true) {
        Err(HookError::Bypass(_)) => Ok(Routed::Local(None)),
        other => other,
    };
    match (side(old_dirfd, old)?, side(new_dirfd, new)?) {
        (Routed::Remote(from), Routed::Remote(to)) => {
            done(FsRequest::Link { from, to }).map(|()| Linked::Remote)
        }
        (Routed::Local(a), Routed::Local(b)) => Ok(Linked::Local(a, b)),
        _ => Err(HookError::Errno(libc::EXDEV)),
    }
}

/// `symlink`/`symlinkat`: `target` is the link's content, never resolved.
pub fn symlink(target: &CStr, dirfd: c_int, link: &CStr) -> HookResult<Routed<()>> {
    let link = match ops::locate(dirfd, link, true)? {
        Routed::Remote(path) => path,
        Routed::Local(local) => return Ok(Routed::Local(local)),
    };
    let target = target
        .to_str()
        .map_err(|_| HookError::Errno(libc::EINVAL))?
        .to_owned();
    done(FsRequest::Symlink { target, link }).map(Routed::Remote)
}

/// `statfs` of a path (`None`: of the fd `dirfd`).
pub fn stat_fs(dirfd: c_int, path: Option<&CStr>) -> HookResult<Routed<FsStats>> {
    let path = match path {
        Some(p) => ops::locate(libc::AT_FDCWD, p, false)?,
        None => fd_path(dirfd),
    };
    let path = match path {
        Routed::Remote(path) => path,
        Routed::Local(local) => return Ok(Routed::Local(local)),
    };
    match ops::fs(FsRequest::StatFs { path })? {
        FsReply::StatFs(stats) => Ok(Routed::Remote(stats)),
        other => Err(session::protocol_violation(&other)),
    }
}

/// `struct statfs` for remote figures.
pub fn to_statfs(s: &FsStats) -> libc::statfs {
    // SAFETY: a plain C struct; all-zero is a valid value.
    let mut out: libc::statfs = unsafe { std::mem::zeroed() };
    out.f_type = s.fs_type as _;
    out.f_bsize = s.block_size as _;
    out.f_frsize = s.fragment_size as _;
    out.f_blocks = s.blocks as _;
    out.f_bfree = s.blocks_free as _;
    out.f_bavail = s.blocks_available as _;
    out.f_files = s.files as _;
    out.f_ffree = s.files_free as _;
    out.f_namelen = s.name_max as _;
    out
}

/// `struct statvfs` for remote figures.
pub fn to_statvfs(s: &FsStats) -> libc::statvfs {
    // SAFETY: a plain C struct; all-zero is a valid value.
    let mut out: libc::statvfs = unsafe { std::mem::zeroed() };
    out.f_bsize = s.block_size as _;
    out.f_frsize = s.fragment_size as _;
    out.f_blocks = s.blocks as _;
    out.f_bfree = s.blocks_free as _;
    out.f_bavail = s.blocks_available as _;
    out.f_files = s.files as _;
    out.f_ffree = s.files_free as _;
    out.f_favail = s.files_free as _;
    out.f_fsid = s.fsid as _;
    out.f_flag = s.flags as _;
    out.f_namemax = s.name_max as _;
    out
}
