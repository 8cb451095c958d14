//! `extern "C"` shims for `open` and the path calls (access, links, mkdir,
//! unlink, rename, realpath, xattrs), plus the helpers every file hook
//! shares; the logic lives in [`super::ops`]. fd I/O on remote handles is in
//! [`super::io`], metadata in [`super::stat`], directory streams in
//! [`super::dir`], stdio in [`super::stdio`].

use super::ops::{self, Renamed, Routed};
use crate::error::{HookError, HookResult, errno_of, fail, set_errno};
use crate::guard::DetourGuard;
use crate::real::real;
use libc::{c_char, c_int, c_uint, c_void, mode_t, size_t, ssize_t};
use std::ffi::CStr;

const CWD: c_int = libc::AT_FDCWD;

/// The caller's C string, `None` for a null pointer.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string that outlives `'a`.
pub(super) unsafe fn cstr<'a>(p: *const c_char) -> Option<&'a CStr> {
    // SAFETY: caller guarantees NUL termination when non-null.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) })
}

/// A C return type that can report a failure as `-1` + `errno`.
pub(super) trait CRet {
    fn failed(err: &HookError) -> Self;
}

impl CRet for c_int {
    fn failed(err: &HookError) -> Self {
        fail(err)
    }
}

impl CRet for ssize_t {
    fn failed(err: &HookError) -> Self {
        fail(err) as ssize_t
    }
}

/// End a path-taking hook: turn the remote result into the C one, or call
/// libc (`local`) with the caller's `(dirfd, path)` or with `(AT_FDCWD,
/// absolute path)`, or fail with `errno`.
pub(super) fn finish<T, R: CRet>(
    result: HookResult<Routed<T>>,
    dirfd: c_int,
    path: *const c_char,
    local: impl FnOnce(c_int, *const c_char) -> R,
    remote: impl FnOnce(T) -> R,
) -> R {
    match result {
        Ok(Routed::Remote(value)) => remote(value),
        Ok(Routed::Local(None)) | Err(HookError::Bypass(_)) => local(dirfd, path),
        Ok(Routed::Local(Some(abs))) => local(CWD, abs.as_ptr()),
        Err(e) => R::failed(&e),
    }
}

/// The caller's output buffer as a slice.
///
/// # Safety
/// `buf` must be null or valid for writes of `len` bytes for `'a`.
pub(super) unsafe fn out_slice<'a>(buf: *mut c_void, len: size_t) -> HookResult<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if buf.is_null() {
        return Err(HookError::Errno(libc::EFAULT));
    }
    // SAFETY: caller guarantees len writable bytes at buf.
    Ok(unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) })
}

// ---------------------------------------------------------------- open

/// Shared body of the `open` family.
///
/// # Safety
/// `path` must be null or NUL-terminated; `local` must be the libc call.
pub(crate) unsafe fn open_at(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
    local: impl FnOnce(c_int, *const c_char) -> c_int,
) -> c_int {
    // SAFETY (stays_local): path is non-null and, by the caller's guarantee,
    // NUL-terminated.
    if !path.is_null() && !ops::opens_for_write(flags) && unsafe { ops::stays_local(path, false) } {
        let fd = local(dirfd, path);
        ops::forget_stale_unguarded(fd);
        return fd;
    }
    // SAFETY: caller guarantees path is null or NUL-terminated.
    let Some(cpath) = (unsafe { cstr(path) }) else {
        return local(dirfd, path);
    };
    let Some(_g) = DetourGuard::enter() else {
        return local(dirfd, path);
    };
    let local = |d, p| {
        let fd = local(d, p);
        // A number the kernel hands out is not a remote file, whatever a
        // missed close left in the table.
        ops::forget_stale(fd);
        fd
    };
    finish(
        ops::open(dirfd, cpath, flags, mode),
        dirfd,
        path,
        local,
        |fd| fd,
    )
}

// C's `open` is variadic; the optional mode travels in a register on the
// ABIs we support, so a fixed third argument receives it (garbage unless
// O_CREAT/O_TMPFILE is set, in which case only it is used).

#[unsafe(no_mangle)]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    let real = real!(open: fn(*const c_char, c_int, c_uint) -> c_int);
    // SAFETY: open(2) contract; libc gets the caller's arguments.
    unsafe { open_at(CWD, path, flags, mode, |_, p| real(p, flags, mode)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    let real = real!(open64: fn(*const c_char, c_int, c_uint) -> c_int);
    // SAFETY: open(2) contract; libc gets the caller's arguments.
    unsafe { open_at(CWD, path, flags, mode, |_, p| real(p, flags, mode)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    let real = real!(openat: fn(c_int, *const c_char, c_int, c_uint) -> c_int);
    // SAFETY: openat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe { open_at(dirfd, path, flags, mode, |d, p| real(d, p, flags, mode)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    let real = real!(openat64: fn(c_int, *const c_char, c_int, c_uint) -> c_int);
    // SAFETY: openat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe { open_at(dirfd, path, flags, mode, |d, p| real(d, p, flags, mode)) }
}

// `_FORTIFY_SOURCE` builds call these when the flags are not a compile-time
// constant (Debian builds its packages fortified).

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    let real = real!(__open_2: fn(*const c_char, c_int) -> c_int);
    // SAFETY: open(2) contract; libc gets the caller's arguments.
    unsafe { open_at(CWD, path, flags, 0, |_, p| real(p, flags)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    let real = real!(__open64_2: fn(*const c_char, c_int) -> c_int);
    // SAFETY: open(2) contract; libc gets the caller's arguments.
    unsafe { open_at(CWD, path, flags, 0, |_, p| real(p, flags)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    let real = real!(__openat_2: fn(c_int, *const c_char, c_int) -> c_int);
    // SAFETY: openat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe { open_at(dirfd, path, flags, 0, |d, p| real(d, p, flags)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    let real = real!(__openat64_2: fn(c_int, *const c_char, c_int) -> c_int);
    // SAFETY: openat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe { open_at(dirfd, path, flags, 0, |d, p| real(d, p, flags)) }
}

const CREAT_FLAGS: c_int = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn creat(path: *const c_char, mode: mode_t) -> c_int {
    let real = real!(creat: fn(*const c_char, mode_t) -> c_int);
    // SAFETY: creat(2) contract; libc gets the caller's arguments.
    unsafe { open_at(CWD, path, CREAT_FLAGS, mode, |_, p| real(p, mode)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn creat64(path: *const c_char, mode: mode_t) -> c_int {
    let real = real!(creat64: fn(*const c_char, mode_t) -> c_int);
    // SAFETY: creat(2) contract; libc gets the caller's arguments.
    unsafe { open_at(CWD, path, CREAT_FLAGS, mode, |_, p| real(p, mode)) }
}

// ---------------------------------------------------------------- paths

/// Shared body of the path calls that return `0` on success.
///
/// # Safety
/// `path` must be null or NUL-terminated; `local` must be the libc call.
unsafe fn path_call(
    dirfd: c_int,
    path: *const c_char,
    op: impl FnOnce(&CStr) -> HookResult<Routed<()>>,
    local: impl FnOnce(c_int, *const c_char) -> c_int,
) -> c_int {
    let Some(_g) = DetourGuard::enter() else {
        return local(dirfd, path);
    };
    // SAFETY: caller guarantees path is null or NUL-terminated.
    let Some(cpath) = (unsafe { cstr(path) }) else {
        return local(dirfd, path);
    };
    finish(op(cpath), dirfd, path, local, |()| 0)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn access(path: *const c_char, mode: c_int) -> c_int {
    let real = real!(access: fn(*const c_char, c_int) -> c_int);
    // SAFETY: access(2) contract; libc gets the caller's arguments.
    unsafe {
        path_call(
            CWD,
            path,
            |p| ops::access(CWD, p, mode),
            |_, p| real(p, mode),
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn eaccess(path: *const c_char, mode: c_int) -> c_int {
    let real = real!(eaccess: fn(*const c_char, c_int) -> c_int);
    // SAFETY: eaccess(3) contract; libc gets the caller's arguments.
    unsafe {
        path_call(
            CWD,
            path,
            |p| ops::access(CWD, p, mode),
            |_, p| real(p, mode),
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn euidaccess(path: *const c_char, mode: c_int) -> c_int {
    let real = real!(euidaccess: fn(*const c_char, c_int) -> c_int);
    // SAFETY: euidaccess(3) contract; libc gets the caller's arguments.
    unsafe {
        path_call(
            CWD,
            path,
            |p| ops::access(CWD, p, mode),
            |_, p| real(p, mode),
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn faccessat(
    dirfd: c_int,
    path: *const c_char,
    mode: c_int,
    flags: c_int,
) -> c_int {
    let real = real!(faccessat: fn(c_int, *const c_char, c_int, c_int) -> c_int);
    // SAFETY: faccessat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        path_call(
            dirfd,
            path,
            |p| ops::access(dirfd, p, mode),
            |d, p| real(d, p, mode, flags),
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkdir(path: *const c_char, mode: mode_t) -> c_int {
    let real = real!(mkdir: fn(*const c_char, mode_t) -> c_int);
    // SAFETY: mkdir(2) contract; libc gets the caller's arguments.
    unsafe {
        path_call(
            CWD,
            path,
            |p| ops::mkdir(CWD, p, mode),
            |_, p| real(p, mode),
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkdirat(dirfd: c_int, path: *const c_char, mode: mode_t) -> c_int {
    let real = real!(mkdirat: fn(c_int, *const c_char, mode_t) -> c_int);
    // SAFETY: mkdirat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        path_call(
            dirfd,
            path,
            |p| ops::mkdir(dirfd, p, mode),
            |d, p| real(d, p, mode),
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlink(path: *const c_char) -> c_int {
    let real = real!(unlink: fn(*const c_char) -> c_int);
    // SAFETY: unlink(2) contract; libc gets the caller's arguments.
    unsafe { path_call(CWD, path, |p| ops::unlink(CWD, p, 0), |_, p| real(p)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn rmdir(path: *const c_char) -> c_int {
    let real = real!(rmdir: fn(*const c_char) -> c_int);
    let flags = libc::AT_REMOVEDIR;
    // SAFETY: rmdir(2) contract; libc gets the caller's arguments.
    unsafe { path_call(CWD, path, |p| ops::unlink(CWD, p, flags), |_, p| real(p)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlinkat(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    let real = real!(unlinkat: fn(c_int, *const c_char, c_int) -> c_int);
    // SAFETY: unlinkat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        path_call(
            dirfd,
            path,
            |p| ops::unlink(dirfd, p, flags),
            |d, p| real(d, p, flags),
        )
    }
}

/// Shared body of `rename`/`renameat`.
///
/// # Safety
/// Both paths must be null or NUL-terminated; `local` must be the libc call.
unsafe fn rename_hook(
    old_dirfd: c_int,
    old: *const c_char,
    new_dirfd: c_int,
    new: *const c_char,
    flags: libc::c_uint,
    local: impl FnOnce(c_int, *const c_char, c_int, *const c_char) -> c_int,
) -> c_int {
    let Some(_g) = DetourGuard::enter() else {
        return local(old_dirfd, old, new_dirfd, new);
    };
    // SAFETY: caller guarantees both are null or NUL-terminated.
    let (Some(o), Some(n)) = (unsafe { cstr(old) }, unsafe { cstr(new) }) else {
        return local(old_dirfd, old, new_dirfd, new);
    };
    match ops::rename(old_dirfd, o, new_dirfd, n, flags) {
        Ok(Renamed::Remote) => 0,
        Ok(Renamed::Local(a, b)) => {
            let (od, op) = a.as_ref().map_or((old_dirfd, old), |a| (CWD, a.as_ptr()));
            let (nd, np) = b.as_ref().map_or((new_dirfd, new), |b| (CWD, b.as_ptr()));
            local(od, op, nd, np)
        }
        Err(HookError::Bypass(_)) => local(old_dirfd, old, new_dirfd, new),
        Err(e) => fail(&e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn rename(old: *const c_char, new: *const c_char) -> c_int {
    let real = real!(rename: fn(*const c_char, *const c_char) -> c_int);
    // SAFETY: rename(2) contract; libc gets the caller's arguments.
    unsafe { rename_hook(CWD, old, CWD, new, 0, |_, o, _, n| real(o, n)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat(
    old_dirfd: c_int,
    old: *const c_char,
    new_dirfd: c_int,
    new: *const c_char,
) -> c_int {
    let real = real!(renameat: fn(c_int, *const c_char, c_int, *const c_char) -> c_int);
    // SAFETY: renameat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        rename_hook(old_dirfd, old, new_dirfd, new, 0, |od, o, nd, n| {
            real(od, o, nd, n)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat2(
    old_dirfd: c_int,
    old: *const c_char,
    new_dirfd: c_int,
    new: *const c_char,
    flags: libc::c_uint,
) -> c_int {
    let real =
        real!(renameat2: fn(c_int, *const c_char, c_int, *const c_char, libc::c_uint) -> c_int);
    // SAFETY: renameat2(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe {
        rename_hook(old_dirfd, old, new_dirfd, new, flags, |od, o, nd, n| {
            real(od, o, nd, n, flags)
        })
    }
}

/// Copy a link target into the caller's buffer like `readlink(2)`: truncated,
/// not NUL-terminated, returning the number of bytes written.
///
/// # Safety
/// `buf` must be null or have `size` writable bytes.
pub(super) unsafe fn write_link(target: &str, buf: *mut c_char, size: size_t) -> ssize_t {
    let n = target.len().min(size);
    // SAFETY: caller guarantees size writable bytes; n <= size.
    match unsafe { out_slice(buf.cast(), n) } {
        Ok(out) => {
            out.copy_from_slice(&target.as_bytes()[..n]);
            n as ssize_t
        }
        Err(e) => fail(&e) as ssize_t,
    }
}

/// Shared body of `readlink`/`readlinkat`.
///
/// # Safety
/// `path` must be null or NUL-terminated, `buf` valid for `size` bytes;
/// `local` must be the libc call.
unsafe fn readlink_hook(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut c_char,
    size: size_t,
    local: impl FnOnce(c_int, *const c_char) -> ssize_t,
) -> ssize_t {
    let Some(_g) = DetourGuard::enter() else {
        return local(dirfd, path);
    };
    // SAFETY: caller guarantees path is null or NUL-terminated.
    let Some(cpath) = (unsafe { cstr(path) }) else {
        return local(dirfd, path);
    };
    finish(ops::readlink(dirfd, cpath), dirfd, path, local, |target| {
        // SAFETY: readlink(2) contract: buf has size writable bytes.
        unsafe { write_link(&target, buf, size) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readlink(path: *const c_char, buf: *mut c_char, size: size_t) -> ssize_t {
    let real = real!(readlink: fn(*const c_char, *mut c_char, size_t) -> ssize_t);
    // SAFETY: readlink(2) contract; libc gets the caller's arguments.
    unsafe { readlink_hook(CWD, path, buf, size, |_, p| real(p, buf, size)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readlinkat(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut c_char,
    size: size_t,
) -> ssize_t {
    let real = real!(readlinkat: fn(c_int, *const c_char, *mut c_char, size_t) -> ssize_t);
    // SAFETY: readlinkat(2) contract; libc gets the caller's (or absolute) arguments.
    unsafe { readlink_hook(dirfd, path, buf, size, |d, p| real(d, p, buf, size)) }
}

/// Hand a resolved path out the way `realpath(3)` does: into `resolved`
/// (`PATH_MAX` bytes) or, when it is null, into a `malloc`ed buffer.
///
/// # Safety
/// `resolved` must be null or have `PATH_MAX` writable bytes.
pub(super) unsafe fn write_resolved(path: &str, resolved: *mut c_char) -> *mut c_char {
    let bytes = path.as_bytes();
    if bytes.contains(&0) {
        set_errno(libc::ENOENT);
        return std::ptr::null_mut();
    }
    let out = if resolved.is_null() {
        // SAFETY: plain allocation; the caller frees it with free(3).
        let p = unsafe { libc::malloc(bytes.len() + 1) }.cast::<c_char>();
        if p.is_null() {
            set_errno(libc::ENOMEM);
            return p;
        }
        p
    } else if bytes.len() >= libc::PATH_MAX as usize {
        set_errno(libc::ENAMETOOLONG);
        return std::ptr::null_mut();
    } else {
        resolved
    };
    // SAFETY: `out` has at least len + 1 writable bytes (allocated or PATH_MAX).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.cast::<u8>(), bytes.len());
        *out.add(bytes.len()) = 0;
    }
    out
}

/// Shared body of `realpath`/`canonicalize_file_name`.
///
/// # Safety
/// `path` must be null or NUL-terminated, `resolved` null or `PATH_MAX`
/// writable bytes; `local` must be the libc call.
unsafe fn realpath_hook(
    path: *const c_char,
    resolved: *mut c_char,
    local: impl FnOnce() -> *mut c_char,
) -> *mut c_char {
    let Some(_g) = DetourGuard::enter() else {
        return local();
    };
    // SAFETY: caller guarantees path is null or NUL-terminated.
    let Some(cpath) = (unsafe { cstr(path) }) else {
        return local();
    };
    match ops::canonicalize(cpath) {
        // SAFETY: realpath(3) contract for `resolved`.
        Ok(Routed::Remote(p)) => unsafe { write_resolved(&p, resolved) },
        // glibc's realpath resolves relative to the cwd itself, so the
        // absolute replacement is not needed here.
        Ok(Routed::Local(_)) | Err(HookError::Bypass(_)) => local(),
        Err(e) => {
            set_errno(errno_of(&e));
            std::ptr::null_mut()
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char {
    let real = real!(realpath: fn(*const c_char, *mut c_char) -> *mut c_char);
    // SAFETY: realpath(3) contract; libc gets the caller's arguments.
    unsafe { realpath_hook(path, resolved, || real(path, resolved)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn canonicalize_file_name(path: *const c_char) -> *mut c_char {
    let real = real!(canonicalize_file_name: fn(*const c_char) -> *mut c_char);
    // SAFETY: same contract as realpath(path, NULL).
    unsafe { realpath_hook(path, std::ptr::null_mut(), || real(path)) }
}

// ---------------------------------------------------------------- xattrs
// The protocol carries no extended attributes: remote files have none.
// Without these, `ls -l` asks the local file system for the ACLs of remote
// paths and reports "No such file or directory" for each.

/// Shared body of the path xattr calls: `remote` for remote paths.
///
/// # Safety
/// `path` must be null or NUL-terminated; `local` must be the libc call.
unsafe fn xattr_path(
    path: *const c_char,
    remote: impl FnOnce() -> ssize_t,
    local: impl FnOnce() -> ssize_t,
) -> ssize_t {
    let Some(_g) = DetourGuard::enter() else {
        return local();
    };
    // SAFETY: caller guarantees path is null or NUL-terminated.
    let Some(cpath) = (unsafe { cstr(path) }) else {
        return local();
    };
    finish(
        ops::xattr_path(cpath),
        CWD,
        path,
        |_, _| local(),
        |()| remote(),
    )
}

fn no_attribute() -> ssize_t {
    fail(&HookError::Errno(libc::ENODATA)) as ssize_t
}

fn no_attributes() -> ssize_t {
    0
}

/// Shared body of the fd xattr calls.
fn xattr_fd(
    fd: c_int,
    remote: impl FnOnce() -> ssize_t,
    local: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if let Some(_g) = DetourGuard::enter() {
        if ops::is_remote_fd(fd) {
            return remote();
        }
    }
    local()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getxattr(
    path: *const c_char,
    name: *const c_char,
    value: *mut c_void,
    size: size_t,
) -> ssize_t {
    let real = real!(getxattr: fn(*const c_char, *const c_char, *mut c_void, size_t) -> ssize_t);
    // SAFETY: getxattr(2) contract; libc gets the caller's arguments.
    unsafe { xattr_path(path, no_attribute, || real(path, name, value, size)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn lgetxattr(
    path: *const c_char,
    name: *const c_char,
    value: *mut c_void,
    size: size_t,
) -> ssize_t {
    let real = real!(lgetxattr: fn(*const c_char, *const c_char, *mut c_void, size_t) -> ssize_t);
    // SAFETY: lgetxattr(2) contract; libc gets the caller's arguments.
    unsafe { xattr_path(path, no_attribute, || real(path, name, value, size)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fgetxattr(
    fd: c_int,
    name: *const c_char,
    value: *mut c_void,
    size: size_t,
) -> ssize_t {
    let real = real!(fgetxattr: fn(c_int, *const c_char, *mut c_void, size_t) -> ssize_t);
    // SAFETY: forwarding the caller's arguments unchanged.
    xattr_fd(fd, no_attribute, || unsafe { real(fd, name, value, size) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn listxattr(
    path: *const c_char,
    list: *mut c_char,
    size: size_t,
) -> ssize_t {
    let real = real!(listxattr: fn(*const c_char, *mut c_char, size_t) -> ssize_t);
    // SAFETY: listxattr(2) contract; libc gets the caller's arguments.
    unsafe { xattr_path(path, no_attributes, || real(path, list, size)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn llistxattr(
    path: *const c_char,
    list: *mut c_char,
    size: size_t,
) -> ssize_t {
    let real = real!(llistxattr: fn(*const c_char, *mut c_char, size_t) -> ssize_t);
    // SAFETY: llistxattr(2) contract; libc gets the caller's arguments.
    unsafe { xattr_path(path, no_attributes, || real(path, list, size)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn flistxattr(fd: c_int, list: *mut c_char, size: size_t) -> ssize_t {
    let real = real!(flistxattr: fn(c_int, *mut c_char, size_t) -> ssize_t);
    // SAFETY: forwarding the caller's arguments unchanged.
    xattr_fd(fd, no_attributes, || unsafe { real(fd, list, size) })
}

// ---------------------------------------------------------------- working directory

#[unsafe(no_mangle)]
pub unsafe extern "C" fn chdir(path: *const c_char) -> c_int {
    let real = real!(chdir: fn(*const c_char) -> c_int);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: chdir(2) contract; libc gets the caller's argument.
        return unsafe { real(path) };
    };
    // SAFETY: caller guarantees path is null or NUL-terminated.
    let Some(cpath) = (unsafe { cstr(path) }) else {
        // SAFETY: as above.
        return unsafe { real(path) };
    };
    let local = |_, p| {
        // SAFETY: chdir(2) with the caller's or an absolute path.
        let rc = unsafe { real(p) };
        if rc == 0 {
            super::cwd::clear();
        }
        rc
    };
    finish(super::cwd::chdir(cpath), CWD, path, local, |()| 0)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fchdir(fd: c_int) -> c_int {
    let real = real!(fchdir: fn(c_int) -> c_int);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: fchdir(2) contract.
        return unsafe { real(fd) };
    };
    let local = |_, _| {
        // SAFETY: fchdir(2) with the caller's fd.
        let rc = unsafe { real(fd) };
        if rc == 0 {
            super::cwd::clear();
        }
        rc
    };
    finish(super::cwd::fchdir(fd), CWD, std::ptr::null(), local, |()| 0)
}

/// Hand the remote working directory out the way `getcwd(3)` does: into
/// `buf` of `size` bytes or, when `buf` is null, into a `malloc`ed buffer
/// (of `size` bytes, or as big as needed when `size` is 0).
///
/// # Safety
/// `buf` must be null or have `size` writable bytes.
unsafe fn write_cwd(dir: &str, buf: *mut c_char, size: size_t) -> *mut c_char {
    let needed = dir.len() + 1;
    if !buf.is_null() && size == 0 {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    if size != 0 && size < needed {
        set_errno(libc::ERANGE);
        return std::ptr::null_mut();
    }
    let out = if buf.is_null() {
        // SAFETY: plain allocation; the caller frees it with free(3).
        let p = unsafe { libc::malloc(size.max(needed)) }.cast::<c_char>();
        if p.is_null() {
            set_errno(libc::ENOMEM);
            return p;
        }
        p
    } else {
        buf
    };
    // SAFETY: `out` has at least `needed` writable bytes (checked or allocated).
    unsafe {
        std::ptr::copy_nonoverlapping(dir.as_ptr(), out.cast::<u8>(), dir.len());
        *out.add(dir.len()) = 0;
    }
    out
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getcwd(buf: *mut c_char, size: size_t) -> *mut c_char {
    let real = real!(getcwd: fn(*mut c_char, size_t) -> *mut c_char);
    if let Some(_g) = DetourGuard::enter() {
        if let Some(dir) = super::cwd::remote() {
            // SAFETY: getcwd(3) contract on buf/size.
            return unsafe { write_cwd(&dir, buf, size) };
        }
    }
    // SAFETY: getcwd(3) contract; libc gets the caller's arguments.
    unsafe { real(buf, size) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn get_current_dir_name() -> *mut c_char {
    let real = real!(get_current_dir_name: fn() -> *mut c_char);
    if let Some(_g) = DetourGuard::enter() {
        if let Some(dir) = super::cwd::remote() {
            // SAFETY: a malloc'ed copy, as get_current_dir_name(3) returns.
            return unsafe { write_cwd(&dir, std::ptr::null_mut(), 0) };
        }
    }
    // SAFETY: get_current_dir_name(3) takes no arguments.
    unsafe { real() }
}
