//! File metadata: the target's [`Metadata`] as `struct stat`/`stat64`/`statx`,
//! and the `stat` family of hooks (including glibc's `__xstat` ABI that
//! binaries built against glibc < 2.33 still call).

use super::hooks::{cstr, finish};
use super::ops;
use crate::error::{HookError, fail};
use crate::guard::DetourGuard;
use crate::real::real;
use libc::{c_char, c_int, c_uint};
use remora_protocol::fs::Metadata;

/// `S_ISDIR`.
pub fn is_dir(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFDIR
}

/// `S_ISREG`.
pub fn is_regular(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFREG
}

/// glibc's `gnu_dev_major`.
pub fn dev_major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

/// glibc's `gnu_dev_minor`.
pub fn dev_minor(dev: u64) -> u32 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
}

/// Fill the fields `stat` and `stat64` share (same names, same meaning).
macro_rules! fill_stat {
    ($ty:ty, $m:expr) => {{
        let m: &Metadata = $m;
        // SAFETY: the stat structs are plain old data; all-zero is valid and
        // clears the padding fields that cannot be named.
        let mut st: $ty = unsafe { std::mem::zeroed() };
        st.st_dev = m.dev;
        st.st_ino = m.ino;
        st.st_nlink = m.nlink as _;
        st.st_mode = m.mode;
        st.st_uid = m.uid;
        st.st_gid = m.gid;
        st.st_rdev = m.rdev;
        st.st_size = m.size as i64;
        st.st_blksize = m.blksize as _;
        st.st_blocks = m.blocks as _;
        st.st_atime = m.atime.secs;
        st.st_atime_nsec = i64::from(m.atime.nanos);
        st.st_mtime = m.mtime.secs;
        st.st_mtime_nsec = i64::from(m.mtime.nanos);
        st.st_ctime = m.ctime.secs;
        st.st_ctime_nsec = i64::from(m.ctime.nanos);
        st
    }};
}

/// `struct stat` for remote metadata.
pub fn to_stat(m: &Metadata) -> libc::stat {
    fill_stat!(libc::stat, m)
}

/// `struct stat64` for remote metadata.
pub fn to_stat64(m: &Metadata) -> libc::stat64 {
    fill_stat!(libc::stat64, m)
}

fn statx_time(t: remora_protocol::fs::Timestamp) -> libc::statx_timestamp {
    // SAFETY: plain old data; zero fills the unnamed padding.
    let mut ts: libc::statx_timestamp = unsafe { std::mem::zeroed() };
    ts.tv_sec = t.secs;
    ts.tv_nsec = t.nanos;
    ts
}

/// `struct statx` for remote metadata; `stx_mask` says the basic fields are
/// valid (the protocol has no birth time, mount id or attributes).
pub fn to_statx(m: &Metadata) -> libc::statx {
    // SAFETY: plain old data; all-zero is valid.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    st.stx_mask = libc::STATX_BASIC_STATS;
    st.stx_blksize = m.blksize as u32;
    st.stx_nlink = m.nlink as u32;
    st.stx_uid = m.uid;
    st.stx_gid = m.gid;
    st.stx_mode = m.mode as u16;
    st.stx_ino = m.ino;
    st.stx_size = m.size;
    st.stx_blocks = m.blocks;
    st.stx_atime = statx_time(m.atime);
    st.stx_ctime = statx_time(m.ctime);
    st.stx_mtime = statx_time(m.mtime);
    st.stx_rdev_major = dev_major(m.rdev);
    st.stx_rdev_minor = dev_minor(m.rdev);
    st.stx_dev_major = dev_major(m.dev);
    st.stx_dev_minor = dev_minor(m.dev);
    st
}

/// A path `stat` hook: remote metadata written to `out`, or libc.
///
/// # Safety
/// `path` must be null or NUL-terminated and `out` null or valid for a write
/// of `S` (the hooked function's contract); `local` must be the libc call.
unsafe fn stat_path<S>(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    out: *mut S,
    convert: fn(&Metadata) -> S,
    local: impl FnOnce(c_int, *const c_char) -> c_int,
) -> c_int {
    // SAFETY (stays_local): path is non-null and, by the caller's guarantee,
    // NUL-terminated.
    if path.is_null() || out.is_null() || unsafe { ops::stays_local(path, false) } {
        return local(dirfd, path);
    }
    // `fstatat(fd, "", AT_EMPTY_PATH)` (Rust's `File::metadata`, so every
    // `std::fs::read`) of an fd the layer does not manage: libc, without
    // the guard (what `ops::stat_at` would answer, from one atomic load).
    // Not `AT_FDCWD`: the working directory may be the target's.
    // SAFETY: path is non-null and NUL-terminated (the caller's guarantee).
    if flags & libc::AT_EMPTY_PATH != 0
        && dirfd >= 0
        && unsafe { *path } == 0
        && !crate::fd::maybe_managed(dirfd)
    {
        return local(dirfd, path);
    }
    // SAFETY: caller guarantees path is null or NUL-terminated.
    let Some(cpath) = (unsafe { cstr(path) }) else {
        return local(dirfd, path);
    };
    let Some(_g) = DetourGuard::enter() else {
        return local(dirfd, path);
    };
    finish(ops::stat_at(dirfd, cpath, flags), dirfd, path, local, |m| {
        // SAFETY: caller guarantees out is valid for a write of S.
        unsafe { out.write(convert(&m)) };
        0
    })
}

/// An fd `stat` hook: the recorded or remote metadata of a managed fd, or libc.
///
/// # Safety
/// `out` must be null or valid for a write of `S`; `local` must be the libc call.
unsafe fn stat_fd<S>(
    fd: c_int,
    out: *mut S,
    convert: fn(&Metadata) -> S,
    local: impl FnOnce() -> c_int,
) -> c_int {
    // An fd the layer does not manage has libc's metadata: one atomic load,
    // not the guard's thread-local accesses.
    if out.is_null() || !crate::fd::maybe_managed(fd) {
        return local();
    }
    let Some(_g) = DetourGuard::enter() else {
        return local();
    };
    match ops::fd_metadata(fd) {
        Ok(m) => {
            // SAFETY: caller guarantees out is valid for a write of S.
            unsafe { out.write(convert(&m)) };
            0
        }
        Err(HookError::Bypass(_)) => local(),
        Err(e) => fail(&e),
    }
}

type Stat = libc::stat;
type Stat64 = libc::stat64;
const NOFOLLOW: c_int = libc::AT_SYMLINK_NOFOLLOW;
const CWD: c_int = libc::AT_FDCWD;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn stat(path: *const c_char, buf: *mut Stat) -> c_int {
    let real = real!(stat: fn(*const c_char, *mut Stat) -> c_int);
    // SAFETY: stat(2) contract; libc gets the caller's arguments.
    unsafe { stat_path(CWD, path, 0, buf, to_stat, |_, p| real(p, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn stat64(path: *const c_char, buf: *mut Stat64) -> c_int {
    let real = real!(stat64: fn(*const c_char, *mut Stat64) -> c_int);
    // SAFETY: stat(2) contract; libc gets the caller's arguments.
    unsafe { stat_path(CWD, path, 0, buf, to_stat64, |_, p| real(p, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn lstat(path: *const c_char, buf: *mut Stat) -> c_int {
    let real = real!(lstat: fn(*const c_char, *mut Stat) -> c_int);
    // SAFETY: lstat(2) contract; libc gets the caller's arguments.
    unsafe { stat_path(CWD, path, NOFOLLOW, buf, to_stat, |_, p| real(p, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn lstat64(path: *const c_char, buf: *mut Stat64) -> c_int {
    let real = real!(lstat64: fn(*const c_char, *mut Stat64) -> c_int);
    // SAFETY: lstat(2) contract; libc gets the caller's arguments.
    unsafe { stat_path(CWD, path, NOFOLLOW, buf, to_stat64, |_, p| real(p, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstat(fd: c_int, buf: *mut Stat) -> c_int {
    let real = real!(fstat: fn(c_int, *mut Stat) -> c_int);
    // SAFETY: fstat(2) contract; libc gets the caller's arguments.
    unsafe { stat_fd(fd, buf, to_stat, || real(fd, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstat64(fd: c_int, buf: *mut Stat64) -> c_int {
    let real = real!(fstat64: fn(c_int, *mut Stat64) -> c_int);
    // SAFETY: fstat(2) contract; libc gets the caller's arguments.
    unsafe { stat_fd(fd, buf, to_stat64, || real(fd, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstatat(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut Stat,
    flags: c_int,
) -> c_int {
    let real = real!(fstatat: fn(c_int, *const c_char, *mut Stat, c_int) -> c_int);
    // SAFETY: fstatat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        stat_path(dirfd, path, flags, buf, to_stat, |d, p| {
            real(d, p, buf, flags)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstatat64(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut Stat64,
    flags: c_int,
) -> c_int {
    let real = real!(fstatat64: fn(c_int, *const c_char, *mut Stat64, c_int) -> c_int);
    // SAFETY: fstatat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        stat_path(dirfd, path, flags, buf, to_stat64, |d, p| {
            real(d, p, buf, flags)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: c_uint,
    buf: *mut libc::statx,
) -> c_int {
    let real = real!(statx: fn(c_int, *const c_char, c_int, c_uint, *mut libc::statx) -> c_int);
    // SAFETY: statx(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        stat_path(dirfd, path, flags, buf, to_statx, |d, p| {
            real(d, p, flags, mask, buf)
        })
    }
}

// The pre-2.33 glibc ABI: `stat` was an inline wrapper around `__xstat(ver, ...)`.
// The version argument only selects the struct layout, which is the same
// for every version on x86_64 and aarch64; it is forwarded unchanged to libc.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __xstat(ver: c_int, path: *const c_char, buf: *mut Stat) -> c_int {
    let real = real!(__xstat: fn(c_int, *const c_char, *mut Stat) -> c_int);
    // SAFETY: __xstat contract (= stat); libc gets the caller's arguments.
    unsafe { stat_path(CWD, path, 0, buf, to_stat, |_, p| real(ver, p, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __xstat64(ver: c_int, path: *const c_char, buf: *mut Stat64) -> c_int {
    let real = real!(__xstat64: fn(c_int, *const c_char, *mut Stat64) -> c_int);
    // SAFETY: __xstat64 contract (= stat64); libc gets the caller's arguments.
    unsafe { stat_path(CWD, path, 0, buf, to_stat64, |_, p| real(ver, p, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __lxstat(ver: c_int, path: *const c_char, buf: *mut Stat) -> c_int {
    let real = real!(__lxstat: fn(c_int, *const c_char, *mut Stat) -> c_int);
    // SAFETY: __lxstat contract (= lstat); libc gets the caller's arguments.
    unsafe { stat_path(CWD, path, NOFOLLOW, buf, to_stat, |_, p| real(ver, p, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __lxstat64(ver: c_int, path: *const c_char, buf: *mut Stat64) -> c_int {
    let real = real!(__lxstat64: fn(c_int, *const c_char, *mut Stat64) -> c_int);
    // SAFETY: __lxstat64 contract (= lstat64); libc gets the caller's arguments.
    unsafe {
        stat_path(CWD, path, NOFOLLOW, buf, to_stat64, |_, p| {
            real(ver, p, buf)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __fxstat(ver: c_int, fd: c_int, buf: *mut Stat) -> c_int {
    let real = real!(__fxstat: fn(c_int, c_int, *mut Stat) -> c_int);
    // SAFETY: __fxstat contract (= fstat); libc gets the caller's arguments.
    unsafe { stat_fd(fd, buf, to_stat, || real(ver, fd, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __fxstat64(ver: c_int, fd: c_int, buf: *mut Stat64) -> c_int {
    let real = real!(__fxstat64: fn(c_int, c_int, *mut Stat64) -> c_int);
    // SAFETY: __fxstat64 contract (= fstat64); libc gets the caller's arguments.
    unsafe { stat_fd(fd, buf, to_stat64, || real(ver, fd, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __fxstatat(
    ver: c_int,
    dirfd: c_int,
    path: *const c_char,
    buf: *mut Stat,
    flags: c_int,
) -> c_int {
    let real = real!(__fxstatat: fn(c_int, c_int, *const c_char, *mut Stat, c_int) -> c_int);
    // SAFETY: __fxstatat contract (= fstatat); libc gets the caller's (or absolute) arguments.
    unsafe {
        stat_path(dirfd, path, flags, buf, to_stat, |d, p| {
            real(ver, d, p, buf, flags)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __fxstatat64(
    ver: c_int,
    dirfd: c_int,
    path: *const c_char,
    buf: *mut Stat64,
    flags: c_int,
) -> c_int {
    let real = real!(__fxstatat64: fn(c_int, c_int, *const c_char, *mut Stat64, c_int) -> c_int);
    // SAFETY: __fxstatat64 contract (= fstatat64); libc gets the caller's (or absolute) arguments.
    unsafe {
        stat_path(dirfd, path, flags, buf, to_stat64, |d, p| {
            real(ver, d, p, buf, flags)
        })
    }
}
