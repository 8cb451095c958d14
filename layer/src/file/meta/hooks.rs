//! `extern "C"` shims for the metadata calls; the logic is in [`super`].

use super::Linked;
use crate::error::{HookError, HookResult, fail};
use crate::file::hooks::cstr;
use crate::file::ops::Routed;
use crate::guard::DetourGuard;
use crate::real::real;
use libc::{c_char, c_int, gid_t, mode_t, off_t, uid_t};
use std::ffi::CStr;

const CWD: c_int = libc::AT_FDCWD;

/// End a metadata hook: `0` when done remotely, libc for local paths (with
/// the absolute replacement path when there is one), `-1` + `errno` on failure.
fn finish<T>(
    result: HookResult<Routed<T>>,
    local: impl FnOnce(Option<&CStr>) -> c_int,
    remote: impl FnOnce(T) -> c_int,
) -> c_int {
    match result {
        Ok(Routed::Remote(value)) => remote(value),
        Ok(Routed::Local(None)) | Err(HookError::Bypass(_)) => local(None),
        Ok(Routed::Local(Some(abs))) => local(Some(&abs)),
        Err(e) => fail(&e),
    }
}

/// Run `op` inside the layer with the caller's path, or call `bypass`.
///
/// # Safety
/// `path` must be null or NUL-terminated.
unsafe fn with_path(
    path: *const c_char,
    bypass: impl FnOnce() -> c_int,
    op: impl FnOnce(Option<&CStr>) -> c_int,
) -> c_int {
    let Some(_g) = DetourGuard::enter() else {
        return bypass();
    };
    // SAFETY: caller guarantees path is null or NUL-terminated.
    op(unsafe { cstr(path) })
}

/// The pointer to give libc: the absolute replacement, or the caller's path.
fn ptr(abs: Option<&CStr>, path: *const c_char) -> *const c_char {
    abs.map_or(path, CStr::as_ptr)
}

/// The dirfd to give libc with [`ptr`]'s path.
fn dir(abs: Option<&CStr>, dirfd: c_int) -> c_int {
    if abs.is_some() { CWD } else { dirfd }
}

// ---------------------------------------------------------------- chmod

#[unsafe(no_mangle)]
pub unsafe extern "C" fn chmod(path: *const c_char, mode: mode_t) -> c_int {
    let real = real!(chmod: fn(*const c_char, mode_t) -> c_int);
    // SAFETY: chmod(2) contract; libc gets the caller's (or absolute) path.
    unsafe {
        with_path(
            path,
            || real(path, mode),
            |p| match p {
                None => real(path, mode),
                Some(p) => finish(
                    super::set_mode(CWD, Some(p), mode, 0),
                    |a| real(ptr(a, path), mode),
                    |()| 0,
                ),
            },
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fchmodat(
    dirfd: c_int,
    path: *const c_char,
    mode: mode_t,
    flags: c_int,
) -> c_int {
    let real = real!(fchmodat: fn(c_int, *const c_char, mode_t, c_int) -> c_int);
    // SAFETY: fchmodat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        with_path(
            path,
            || real(dirfd, path, mode, flags),
            |p| match p {
                None => real(dirfd, path, mode, flags),
                Some(p) => finish(
                    super::set_mode(dirfd, Some(p), mode, flags),
                    |a| real(dir(a, dirfd), ptr(a, path), mode, flags),
                    |()| 0,
                ),
            },
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fchmod(fd: c_int, mode: mode_t) -> c_int {
    let real = real!(fchmod: fn(c_int, mode_t) -> c_int);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd, mode) };
    };
    // SAFETY: as above.
    finish(
        super::set_mode(fd, None, mode, 0),
        |_| unsafe { real(fd, mode) },
        |()| 0,
    )
}

// ---------------------------------------------------------------- chown

#[unsafe(no_mangle)]
pub unsafe extern "C" fn chown(path: *const c_char, uid: uid_t, gid: gid_t) -> c_int {
    let real = real!(chown: fn(*const c_char, uid_t, gid_t) -> c_int);
    // SAFETY: chown(2) contract; libc gets the caller's (or absolute) path.
    unsafe {
        with_path(
            path,
            || real(path, uid, gid),
            |p| match p {
                None => real(path, uid, gid),
                Some(p) => finish(
                    super::set_owner(CWD, Some(p), uid, gid, 0),
                    |a| real(ptr(a, path), uid, gid),
                    |()| 0,
                ),
            },
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn lchown(path: *const c_char, uid: uid_t, gid: gid_t) -> c_int {
    let real = real!(lchown: fn(*const c_char, uid_t, gid_t) -> c_int);
    let nofollow = libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: lchown(2) contract; libc gets the caller's (or absolute) path.
    unsafe {
        with_path(
            path,
            || real(path, uid, gid),
            |p| match p {
                None => real(path, uid, gid),
                Some(p) => finish(
                    super::set_owner(CWD, Some(p), uid, gid, nofollow),
                    |a| real(ptr(a, path), uid, gid),
                    |()| 0,
                ),
            },
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fchownat(
    dirfd: c_int,
    path: *const c_char,
    uid: uid_t,
    gid: gid_t,
    flags: c_int,
) -> c_int {
    let real = real!(fchownat: fn(c_int, *const c_char, uid_t, gid_t, c_int) -> c_int);
    // SAFETY: fchownat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        with_path(
            path,
            || real(dirfd, path, uid, gid, flags),
            |p| match p {
                None => real(dirfd, path, uid, gid, flags),
                Some(p) => finish(
                    super::set_owner(dirfd, Some(p), uid, gid, flags),
                    |a| real(dir(a, dirfd), ptr(a, path), uid, gid, flags),
                    |()| 0,
                ),
            },
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fchown(fd: c_int, uid: uid_t, gid: gid_t) -> c_int {
    let real = real!(fchown: fn(c_int, uid_t, gid_t) -> c_int);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd, uid, gid) };
    };
    // SAFETY: as above.
    finish(
        super::set_owner(fd, None, uid, gid, 0),
        |_| unsafe { real(fd, uid, gid) },
        |()| 0,
    )
}

// ---------------------------------------------------------------- times

/// The caller's `times[2]`, `None` for a null pointer.
///
/// # Safety
/// `times` must be null or point to two timespecs.
unsafe fn read_times(times: *const libc::timespec) -> Option<[libc::timespec; 2]> {
    // SAFETY: caller guarantees two readable timespecs when non-null.
    (!times.is_null()).then(|| unsafe { [*times, *times.add(1)] })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn utimensat(
    dirfd: c_int,
    path: *const c_char,
    times: *const libc::timespec,
    flags: c_int,
) -> c_int {
    let real = real!(utimensat: fn(c_int, *const c_char, *const libc::timespec, c_int) -> c_int);
    // SAFETY: utimensat(2) contract: times is null or two timespecs.
    let parsed = unsafe { read_times(times) };
    // SAFETY: utimensat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        with_path(
            path,
            || real(dirfd, path, times, flags),
            |p| {
                finish(
                    super::set_times(dirfd, p, parsed, flags),
                    |a| real(dir(a, dirfd), ptr(a, path), times, flags),
                    |()| 0,
                )
            },
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn futimens(fd: c_int, times: *const libc::timespec) -> c_int {
    let real = real!(futimens: fn(c_int, *const libc::timespec) -> c_int);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd, times) };
    };
    // SAFETY: futimens(3) contract: times is null or two timespecs.
    let parsed = unsafe { read_times(times) };
    // SAFETY: forwarding the caller's arguments unchanged.
    finish(
        super::set_times(fd, None, parsed, 0),
        |_| unsafe { real(fd, times) },
        |()| 0,
    )
}

// ---------------------------------------------------------------- truncate

#[unsafe(no_mangle)]
pub unsafe extern "C" fn truncate(path: *const c_char, len: off_t) -> c_int {
    let real = real!(truncate: fn(*const c_char, off_t) -> c_int);
    // SAFETY: truncate(2) contract; libc gets the caller's (or absolute) path.
    unsafe {
        with_path(
            path,
            || real(path, len),
            |p| match p {
                None => real(path, len),
                Some(p) => finish(super::truncate(p, len), |a| real(ptr(a, path), len), |()| 0),
            },
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn truncate64(path: *const c_char, len: off_t) -> c_int {
    let real = real!(truncate64: fn(*const c_char, off_t) -> c_int);
    // SAFETY: truncate(2) contract; libc gets the caller's (or absolute) path.
    unsafe {
        with_path(
            path,
            || real(path, len),
            |p| match p {
                None => real(path, len),
                Some(p) => finish(super::truncate(p, len), |a| real(ptr(a, path), len), |()| 0),
            },
        )
    }
}

// ---------------------------------------------------------------- links

/// Shared body of `link`/`linkat`.
///
/// # Safety
/// Both paths null or NUL-terminated; `local` must be the libc call.
unsafe fn link_at(
    old_dirfd: c_int,
    old: *const c_char,
    new_dirfd: c_int,
    new: *const c_char,
    local: impl FnOnce(c_int, *const c_char, c_int, *const c_char) -> c_int,
) -> c_int {
    let Some(_g) = DetourGuard::enter() else {
        return local(old_dirfd, old, new_dirfd, new);
    };
    // SAFETY: caller guarantees both are null or NUL-terminated.
    let (Some(o), Some(n)) = (unsafe { cstr(old) }, unsafe { cstr(new) }) else {
        return local(old_dirfd, old, new_dirfd, new);
    };
    match super::link(old_dirfd, o, new_dirfd, n) {
        Ok(Linked::Remote) => 0,
        Ok(Linked::Local(a, b)) => {
            let (od, op) = a.as_ref().map_or((old_dirfd, old), |a| (CWD, a.as_ptr()));
            let (nd, np) = b.as_ref().map_or((new_dirfd, new), |b| (CWD, b.as_ptr()));
            local(od, op, nd, np)
        }
        Err(HookError::Bypass(_)) => local(old_dirfd, old, new_dirfd, new),
        Err(e) => fail(&e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn link(old: *const c_char, new: *const c_char) -> c_int {
    let real = real!(linkat: fn(c_int, *const c_char, c_int, *const c_char, c_int) -> c_int);
    // SAFETY: link(2) contract; linkat with AT_FDCWD and no flags is link.
    unsafe { link_at(CWD, old, CWD, new, |od, op, nd, np| real(od, op, nd, np, 0)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn linkat(
    old_dirfd: c_int,
    old: *const c_char,
    new_dirfd: c_int,
    new: *const c_char,
    flags: c_int,
) -> c_int {
    let real = real!(linkat: fn(c_int, *const c_char, c_int, *const c_char, c_int) -> c_int);
    // SAFETY: linkat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        link_at(old_dirfd, old, new_dirfd, new, |od, op, nd, np| {
            real(od, op, nd, np, flags)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn symlinkat(
    target: *const c_char,
    dirfd: c_int,
    link: *const c_char,
) -> c_int {
    let real = real!(symlinkat: fn(*const c_char, c_int, *const c_char) -> c_int);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(target, dirfd, link) };
    };
    // SAFETY: symlinkat(2) contract: both are NUL-terminated when non-null.
    let (Some(t), Some(l)) = (unsafe { cstr(target) }, unsafe { cstr(link) }) else {
        // SAFETY: as above.
        return unsafe { real(target, dirfd, link) };
    };
    finish(
        super::symlink(t, dirfd, l),
        // SAFETY: libc gets the caller's (or absolute) arguments.
        |a| unsafe { real(target, dir(a, dirfd), ptr(a, link)) },
        |()| 0,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn symlink(target: *const c_char, link: *const c_char) -> c_int {
    // SAFETY: symlink(2) is symlinkat(2) relative to the working directory.
    unsafe { symlinkat(target, CWD, link) }
}

// ---------------------------------------------------------------- statfs

/// Shared body of the `statfs`/`statvfs` family: `path` `None` means `fd`.
///
/// # Safety
/// `path` null or NUL-terminated; `buf` a valid `T`; `local` the libc call.
unsafe fn stat_fs<T>(
    fd: c_int,
    path: Option<*const c_char>,
    buf: *mut T,
    convert: fn(&remora_protocol::fs::FsStats) -> T,
    local: impl FnOnce(Option<&CStr>) -> c_int,
) -> c_int {
    let Some(_g) = DetourGuard::enter() else {
        return local(None);
    };
    let cpath = match path {
        // SAFETY: caller guarantees path is null or NUL-terminated.
        Some(p) => match unsafe { cstr(p) } {
            Some(c) => Some(c),
            None => return local(None),
        },
        None => None,
    };
    finish(super::stat_fs(fd, cpath), local, |stats| {
        if buf.is_null() {
            return fail(&HookError::Errno(libc::EFAULT));
        }
        // SAFETY: caller guarantees buf points to a writable T.
        unsafe { buf.write(convert(&stats)) };
        0
    })
}

// `struct statfs64`/`statvfs64` have the layout of `statfs`/`statvfs` on
// the 64-bit ABIs we support, so the `64` variants share the conversion.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn statfs(path: *const c_char, buf: *mut libc::statfs) -> c_int {
    let real = real!(statfs: fn(*const c_char, *mut libc::statfs) -> c_int);
    // SAFETY: statfs(2) contract.
    unsafe {
        stat_fs(CWD, Some(path), buf, super::to_statfs, |a| {
            real(ptr(a, path), buf)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn statfs64(path: *const c_char, buf: *mut libc::statfs) -> c_int {
    let real = real!(statfs64: fn(*const c_char, *mut libc::statfs) -> c_int);
    // SAFETY: statfs(2) contract.
    unsafe {
        stat_fs(CWD, Some(path), buf, super::to_statfs, |a| {
            real(ptr(a, path), buf)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstatfs(fd: c_int, buf: *mut libc::statfs) -> c_int {
    let real = real!(fstatfs: fn(c_int, *mut libc::statfs) -> c_int);
    // SAFETY: fstatfs(2) contract.
    unsafe { stat_fs(fd, None, buf, super::to_statfs, |_| real(fd, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstatfs64(fd: c_int, buf: *mut libc::statfs) -> c_int {
    let real = real!(fstatfs64: fn(c_int, *mut libc::statfs) -> c_int);
    // SAFETY: fstatfs(2) contract.
    unsafe { stat_fs(fd, None, buf, super::to_statfs, |_| real(fd, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn statvfs(path: *const c_char, buf: *mut libc::statvfs) -> c_int {
    let real = real!(statvfs: fn(*const c_char, *mut libc::statvfs) -> c_int);
    // SAFETY: statvfs(3) contract.
    unsafe {
        stat_fs(CWD, Some(path), buf, super::to_statvfs, |a| {
            real(ptr(a, path), buf)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn statvfs64(path: *const c_char, buf: *mut libc::statvfs) -> c_int {
    let real = real!(statvfs64: fn(*const c_char, *mut libc::statvfs) -> c_int);
    // SAFETY: statvfs(3) contract.
    unsafe {
        stat_fs(CWD, Some(path), buf, super::to_statvfs, |a| {
            real(ptr(a, path), buf)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstatvfs(fd: c_int, buf: *mut libc::statvfs) -> c_int {
    let real = real!(fstatvfs: fn(c_int, *mut libc::statvfs) -> c_int);
    // SAFETY: fstatvfs(3) contract.
    unsafe { stat_fs(fd, None, buf, super::to_statvfs, |_| real(fd, buf)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstatvfs64(fd: c_int, buf: *mut libc::statvfs) -> c_int {
    let real = real!(fstatvfs64: fn(c_int, *mut libc::statvfs) -> c_int);
    // SAFETY: fstatvfs(3) contract.
    unsafe { stat_fs(fd, None, buf, super::to_statvfs, |_| real(fd, buf)) }
}
