//! `extern "C"` shims for I/O on the placeholder fds of remote handles:
//! `read`/`write` and their positional and vectored forms, `lseek`,
//! `ftruncate`, `fsync`, `preadv2`/`pwritev2` (in `io/v2.rs`), and the kernel shortcuts (`mmap`, `copy_file_range`,
//! `sendfile`) that must not see the empty placeholder. Every other fd goes
//! straight to libc.

use super::hooks::out_slice;
use super::ops;
use crate::error::{HookError, HookResult, fail, set_errno};
use crate::guard::DetourGuard;
use crate::real::real;
use libc::{c_int, c_uint, c_void, iovec, off_t, size_t, ssize_t};

mod v2;

/// A byte count or `-1` + `errno`, as `read(2)` returns it.
fn ssize(result: HookResult<usize>) -> ssize_t {
    match result {
        Ok(n) => n as ssize_t,
        Err(e) => fail(&e) as ssize_t,
    }
}

/// The caller's input buffer as a slice.
///
/// # Safety
/// `buf` must be null or valid for reads of `len` bytes for `'a`.
unsafe fn in_slice<'a>(buf: *const c_void, len: size_t) -> HookResult<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if buf.is_null() {
        return Err(HookError::Errno(libc::EFAULT));
    }
    // SAFETY: caller guarantees len readable bytes at buf.
    Ok(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) })
}

// ---------------------------------------------------------------- fd I/O
// These sit on every read and write of the process: the fast path is one
// atomic load (`fd::maybe_managed`), before the thread-local guard.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    let real = real!(read: fn(c_int, *mut c_void, size_t) -> ssize_t);
    // The bitmap first: an fd the layer does not manage costs one atomic load,
    // not the thread-local guard as well.
    if !crate::fd::maybe_managed(fd) {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd, buf, count) };
    }
    if let Some(_g) = DetourGuard::enter() {
        if let Some(handle) = ops::remote_handle(fd) {
            // SAFETY: read(2) contract: buf has count writable bytes.
            let buf = unsafe { out_slice(buf, count) };
            return ssize(buf.and_then(|b| ops::read(&handle, b)));
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, buf, count) }
}

/// Shared body of `pread`/`pread64`.
///
/// # Safety
/// `buf` must have `count` writable bytes; `local` must be the libc call.
unsafe fn pread_hook(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    offset: off_t,
    local: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if let Some(_g) = DetourGuard::enter() {
        if let Some(handle) = ops::remote_handle(fd) {
            // SAFETY: pread(2) contract: buf has count writable bytes.
            let buf = unsafe { out_slice(buf, count) };
            return ssize(buf.and_then(|b| ops::pread(&handle, b, offset)));
        }
    }
    local()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pread(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    offset: off_t,
) -> ssize_t {
    let real = real!(pread: fn(c_int, *mut c_void, size_t, off_t) -> ssize_t);
    // SAFETY: pread(2) contract; libc gets the caller's arguments.
    unsafe { pread_hook(fd, buf, count, offset, || real(fd, buf, count, offset)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pread64(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    offset: off_t,
) -> ssize_t {
    let real = real!(pread64: fn(c_int, *mut c_void, size_t, off_t) -> ssize_t);
    // SAFETY: pread(2) contract; libc gets the caller's arguments.
    unsafe { pread_hook(fd, buf, count, offset, || real(fd, buf, count, offset)) }
}

/// The caller's iovec array.
///
/// # Safety
/// `iov` must point to `count` iovecs when `count` is positive.
unsafe fn iovecs<'a>(iov: *const iovec, count: c_int) -> HookResult<&'a [iovec]> {
    // IOV_MAX on Linux.
    if !(0..=1024).contains(&count) {
        return Err(HookError::Errno(libc::EINVAL));
    }
    if count == 0 {
        return Ok(&[]);
    }
    if iov.is_null() {
        return Err(HookError::Errno(libc::EFAULT));
    }
    // SAFETY: caller guarantees count iovecs at iov.
    Ok(unsafe { std::slice::from_raw_parts(iov, count as usize) })
}

/// Run `each` over the buffers in order, stopping at the first short one;
/// an error after progress reports the progress.
pub(super) fn vectored(
    iov: &[iovec],
    mut each: impl FnMut(&iovec) -> HookResult<usize>,
) -> HookResult<usize> {
    let mut total = 0;
    for v in iov {
        match each(v) {
            Ok(n) => {
                total += n;
                if n < v.iov_len {
                    break;
                }
            }
            Err(e) if total == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(total)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    let real = real!(readv: fn(c_int, *const iovec, c_int) -> ssize_t);
    if let Some(_g) = DetourGuard::enter() {
        if let Some(handle) = ops::remote_handle(fd) {
            // SAFETY: readv(2) contract: iov holds count valid, writable buffers.
            let result = unsafe { iovecs(iov, count) }.and_then(|iov| {
                vectored(iov, |v| {
                    // SAFETY: each iovec describes iov_len writable bytes.
                    let buf = unsafe { out_slice(v.iov_base, v.iov_len) }?;
                    ops::read(&handle, buf)
                })
            });
            return ssize(result);
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, iov, count) }
}

/// A write to a write stream's socket: without `SIGPIPE`, and a stream the
/// intproxy closed after a failed remote write reports that write's error
/// instead of `EPIPE`.
fn stream_write(
    fd: c_int,
    stream: std::net::SocketAddr,
    send: impl FnOnce() -> ssize_t,
) -> ssize_t {
    let n = send();
    if n < 0 {
        let errno = crate::error::errno();
        if errno == libc::EPIPE || errno == libc::ECONNRESET {
            return match ops::stream_sync(fd, stream, None) {
                Err(e @ (HookError::Remote(_) | HookError::Errno(_))) => fail(&e) as ssize_t,
                _ => {
                    set_errno(errno);
                    -1
                }
            };
        }
    }
    n
}

/// What a write on `fd` reaches: a remote handle, a write stream, or neither.
enum WriteTarget {
    Handle(crate::fd::Shared<super::RemoteHandle>),
    Stream(std::net::SocketAddr),
}

fn write_target(fd: c_int) -> Option<WriteTarget> {
    match crate::fd::get(fd)? {
        crate::fd::Managed::File(super::FileInfo {
            remote: Some(handle),
            ..
        }) => Some(WriteTarget::Handle(handle)),
        crate::fd::Managed::File(super::FileInfo {
            stream: Some(addr), ..
        }) => Some(WriteTarget::Stream(addr)),
        _ => None,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    let real = real!(write: fn(c_int, *const c_void, size_t) -> ssize_t);
    if !crate::fd::maybe_managed(fd) {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd, buf, count) };
    }
    if let Some(_g) = DetourGuard::enter() {
        match write_target(fd) {
            Some(WriteTarget::Handle(handle)) => {
                // SAFETY: write(2) contract: buf has count readable bytes.
                let buf = unsafe { in_slice(buf, count) };
                return ssize(buf.and_then(|b| ops::write(&handle, b)));
            }
            Some(WriteTarget::Stream(stream)) => {
                return stream_write(fd, stream, || {
                    // SAFETY: write(2) contract: buf has count readable bytes.
                    unsafe { libc::send(fd, buf, count, libc::MSG_NOSIGNAL) }
                });
            }
            None => {}
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, buf, count) }
}

/// Shared body of `pwrite`/`pwrite64`.
///
/// # Safety
/// `buf` must have `count` readable bytes; `local` must be the libc call.
unsafe fn pwrite_hook(
    fd: c_int,
    buf: *const c_void,
    count: size_t,
    offset: off_t,
    local: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if let Some(_g) = DetourGuard::enter() {
        if let Some(handle) = ops::remote_handle(fd) {
            // SAFETY: pwrite(2) contract: buf has count readable bytes.
            let buf = unsafe { in_slice(buf, count) };
            return ssize(buf.and_then(|b| ops::pwrite(&handle, b, offset)));
        }
    }
    local()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite(
    fd: c_int,
    buf: *const c_void,
    count: size_t,
    offset: off_t,
) -> ssize_t {
    let real = real!(pwrite: fn(c_int, *const c_void, size_t, off_t) -> ssize_t);
    // SAFETY: pwrite(2) contract; libc gets the caller's arguments.
    unsafe { pwrite_hook(fd, buf, count, offset, || real(fd, buf, count, offset)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite64(
    fd: c_int,
    buf: *const c_void,
    count: size_t,
    offset: off_t,
) -> ssize_t {
    let real = real!(pwrite64: fn(c_int, *const c_void, size_t, off_t) -> ssize_t);
    // SAFETY: pwrite(2) contract; libc gets the caller's arguments.
    unsafe { pwrite_hook(fd, buf, count, offset, || real(fd, buf, count, offset)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    let real = real!(writev: fn(c_int, *const iovec, c_int) -> ssize_t);
    if let Some(_g) = DetourGuard::enter() {
        match write_target(fd) {
            Some(WriteTarget::Handle(handle)) => {
                // SAFETY: writev(2) contract: iov holds count valid buffers.
                let result = unsafe { iovecs(iov, count) }.and_then(|iov| {
                    vectored(iov, |v| {
                        // SAFETY: each iovec describes iov_len readable bytes.
                        let buf = unsafe { in_slice(v.iov_base, v.iov_len) }?;
                        ops::write(&handle, buf)
                    })
                });
                return ssize(result);
            }
            Some(WriteTarget::Stream(stream)) if count >= 0 => {
                return stream_write(fd, stream, || {
                    // SAFETY: an all-zero msghdr is valid; writev's buffers as its iovecs.
                    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                    msg.msg_iov = iov.cast_mut();
                    msg.msg_iovlen = count as _;
                    // SAFETY: writev(2) contract: iov holds count valid buffers.
                    unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) }
                });
            }
            _ => {}
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, iov, count) }
}

/// Shared body of `lseek`/`lseek64`.
fn lseek_hook(fd: c_int, offset: off_t, whence: c_int, local: impl FnOnce() -> off_t) -> off_t {
    if let Some(_g) = DetourGuard::enter() {
        if let Some(handle) = ops::remote_handle(fd) {
            return match ops::seek(&handle, offset, whence) {
                Ok(pos) => pos,
                Err(e) => fail(&e) as off_t,
            };
        }
    }
    local()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn lseek(fd: c_int, offset: off_t, whence: c_int) -> off_t {
    let real = real!(lseek: fn(c_int, off_t, c_int) -> off_t);
    // SAFETY: forwarding the caller's arguments unchanged.
    lseek_hook(fd, offset, whence, || unsafe { real(fd, offset, whence) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn lseek64(fd: c_int, offset: off_t, whence: c_int) -> off_t {
    let real = real!(lseek64: fn(c_int, off_t, c_int) -> off_t);
    // SAFETY: forwarding the caller's arguments unchanged.
    lseek_hook(fd, offset, whence, || unsafe { real(fd, offset, whence) })
}

/// Shared body of `ftruncate`/`ftruncate64`.
fn ftruncate_hook(fd: c_int, len: off_t, local: impl FnOnce() -> c_int) -> c_int {
    if let Some(_g) = DetourGuard::enter() {
        if let Some(handle) = ops::remote_handle(fd) {
            return match ops::ftruncate(&handle, len) {
                Ok(()) => 0,
                Err(e) => fail(&e),
            };
        }
    }
    local()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ftruncate(fd: c_int, len: off_t) -> c_int {
    let real = real!(ftruncate: fn(c_int, off_t) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    ftruncate_hook(fd, len, || unsafe { real(fd, len) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ftruncate64(fd: c_int, len: off_t) -> c_int {
    let real = real!(ftruncate64: fn(c_int, off_t) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    ftruncate_hook(fd, len, || unsafe { real(fd, len) })
}

/// `fsync`/`fdatasync` on a remote handle or a write stream sync the target's file (an agent
/// of protocol v1 cannot: its writes were synchronous, and the call succeeds
/// as it did then); its errors reach the caller.
fn sync_hook(fd: c_int, data_only: bool, local: impl FnOnce() -> c_int) -> c_int {
    if let Some(_g) = DetourGuard::enter() {
        match write_target(fd) {
            Some(WriteTarget::Handle(handle)) => {
                return match ops::fsync(&handle, data_only) {
                    Ok(()) => 0,
                    Err(e) => fail(&e),
                };
            }
            // A write stream: its bytes written and synced in the target, or
            // the error of the first remote write that failed.
            Some(WriteTarget::Stream(stream)) => {
                return match ops::stream_sync(fd, stream, Some(data_only)) {
                    Ok(()) => 0,
                    // An intproxy too old to ask: fsync of a socket.
                    Err(HookError::Bypass(_)) => local(),
                    Err(e) => fail(&e),
                };
            }
            None => {}
        }
    }
    local()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    let real = real!(fsync: fn(c_int) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    sync_hook(fd, false, || unsafe { real(fd) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    let real = real!(fdatasync: fn(c_int) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    sync_hook(fd, true, || unsafe { real(fd) })
}

/// Shared body of `preadv`/`preadv64`.
///
/// # Safety
/// `iov` must hold `count` writable buffers; `local` must be the libc call.
unsafe fn preadv_hook(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
    local: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if let Some(_g) = DetourGuard::enter() {
        if let Some(handle) = ops::remote_handle(fd) {
            let mut at = offset;
            // SAFETY: preadv(2) contract: iov holds count valid, writable buffers.
            let result = unsafe { iovecs(iov, count) }.and_then(|iov| {
                vectored(iov, |v| {
                    // SAFETY: each iovec describes iov_len writable bytes.
                    let buf = unsafe { out_slice(v.iov_base, v.iov_len) }?;
                    let n = ops::pread(&handle, buf, at)?;
                    at += n as off_t;
                    Ok(n)
                })
            });
            return ssize(result);
        }
    }
    local()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
) -> ssize_t {
    let real = real!(preadv: fn(c_int, *const iovec, c_int, off_t) -> ssize_t);
    // SAFETY: preadv(2) contract; libc gets the caller's arguments.
    unsafe { preadv_hook(fd, iov, count, offset, || real(fd, iov, count, offset)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv64(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
) -> ssize_t {
    let real = real!(preadv64: fn(c_int, *const iovec, c_int, off_t) -> ssize_t);
    // SAFETY: preadv(2) contract; libc gets the caller's arguments.
    unsafe { preadv_hook(fd, iov, count, offset, || real(fd, iov, count, offset)) }
}

/// Shared body of `pwritev`/`pwritev64`.
///
/// # Safety
/// `iov` must hold `count` readable buffers; `local` must be the libc call.
unsafe fn pwritev_hook(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
    local: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if let Some(_g) = DetourGuard::enter() {
        if let Some(handle) = ops::remote_handle(fd) {
            let mut at = offset;
            // SAFETY: pwritev(2) contract: iov holds count valid buffers.
            let result = unsafe { iovecs(iov, count) }.and_then(|iov| {
                vectored(iov, |v| {
                    // SAFETY: each iovec describes iov_len readable bytes.
                    let buf = unsafe { in_slice(v.iov_base, v.iov_len) }?;
                    let n = ops::pwrite(&handle, buf, at)?;
                    at += n as off_t;
                    Ok(n)
                })
            });
            return ssize(result);
        }
    }
    local()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
) -> ssize_t {
    let real = real!(pwritev: fn(c_int, *const iovec, c_int, off_t) -> ssize_t);
    // SAFETY: pwritev(2) contract; libc gets the caller's arguments.
    unsafe { pwritev_hook(fd, iov, count, offset, || real(fd, iov, count, offset)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev64(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
) -> ssize_t {
    let real = real!(pwritev64: fn(c_int, *const iovec, c_int, off_t) -> ssize_t);
    // SAFETY: pwritev(2) contract; libc gets the caller's arguments.
    unsafe { pwritev_hook(fd, iov, count, offset, || real(fd, iov, count, offset)) }
}

// ---------------------------------------------------------------- kernel shortcuts
// A placeholder is an empty memfd: the kernel-side copies and mappings below
// would silently see no data (or SIGBUS). They fail instead, with the errno
// their callers already treat as "not supported here, use read/write".

/// Whether `fd` is the placeholder of a remote handle.
fn is_placeholder(fd: c_int) -> bool {
    if fd < 0 {
        return false;
    }
    DetourGuard::enter().is_some_and(|_g| ops::remote_handle(fd).is_some())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    let real = real!(mmap: fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void);
    if flags & libc::MAP_ANONYMOUS == 0 && is_placeholder(fd) {
        set_errno(libc::ENODEV);
        return libc::MAP_FAILED;
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(addr, len, prot, flags, fd, offset) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    let real = real!(mmap64: fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void);
    if flags & libc::MAP_ANONYMOUS == 0 && is_placeholder(fd) {
        set_errno(libc::ENODEV);
        return libc::MAP_FAILED;
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(addr, len, prot, flags, fd, offset) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn copy_file_range(
    fd_in: c_int,
    off_in: *mut libc::loff_t,
    fd_out: c_int,
    off_out: *mut libc::loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    let real = real!(copy_file_range: fn(c_int, *mut libc::loff_t, c_int, *mut libc::loff_t, size_t, c_uint) -> ssize_t);
    if is_placeholder(fd_in) || is_placeholder(fd_out) {
        return fail(&HookError::Errno(libc::EXDEV)) as ssize_t;
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd_in, off_in, fd_out, off_out, len, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut off_t,
    count: size_t,
) -> ssize_t {
    let real = real!(sendfile: fn(c_int, c_int, *mut off_t, size_t) -> ssize_t);
    if is_placeholder(in_fd) || is_placeholder(out_fd) {
        return fail(&HookError::Errno(libc::EINVAL)) as ssize_t;
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(out_fd, in_fd, offset, count) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut off_t,
    count: size_t,
) -> ssize_t {
    let real = real!(sendfile64: fn(c_int, c_int, *mut off_t, size_t) -> ssize_t);
    if is_placeholder(in_fd) || is_placeholder(out_fd) {
        return fail(&HookError::Errno(libc::EINVAL)) as ssize_t;
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(out_fd, in_fd, offset, count) }
}
