//! `preadv2`/`pwritev2` (and their `64v2` names) on remote files. Flags the
//! target cannot honour fail like the kernel fails unsupported flags
//! (`EOPNOTSUPP`); `RWF_NOWAIT` gets `EAGAIN`, since a remote read or write
//! always waits for the network (callers then retry without it);
//! `RWF_DSYNC`/`RWF_SYNC` sync the target's file after the write. An offset
//! of -1 means the file position, as for `readv`/`writev`.

use crate::error::set_errno;
use crate::file::ops;
use crate::guard::DetourGuard;
use crate::real::real;
use libc::{c_int, iovec, off_t, ssize_t};

/// Whether `fd` is a remote file the layer serves.
fn is_remote(fd: c_int) -> bool {
    DetourGuard::enter().is_some_and(|_g| ops::remote_handle(fd).is_some())
}

fn fail(errno: c_int) -> ssize_t {
    set_errno(errno);
    -1
}

/// Shared body of `preadv2`/`preadv64v2`.
///
/// # Safety
/// `iov` must hold `count` writable buffers; `local` must be the libc call.
unsafe fn preadv2_hook(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
    flags: c_int,
    local: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if !is_remote(fd) {
        return local();
    }
    if flags & libc::RWF_NOWAIT != 0 {
        return fail(libc::EAGAIN);
    }
    if flags & !libc::RWF_HIPRI != 0 {
        return fail(libc::EOPNOTSUPP);
    }
    // SAFETY: the caller upholds preadv2(2)'s contract; the hooks below
    // serve the remote file (libc is never reached for it).
    unsafe {
        if offset == -1 {
            super::readv(fd, iov, count)
        } else {
            super::preadv_hook(fd, iov, count, offset, || fail(libc::EBADF))
        }
    }
}

/// Shared body of `pwritev2`/`pwritev64v2`.
///
/// # Safety
/// `iov` must hold `count` readable buffers; `local` must be the libc call.
unsafe fn pwritev2_hook(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
    flags: c_int,
    local: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if !is_remote(fd) {
        return local();
    }
    if flags & libc::RWF_NOWAIT != 0 {
        return fail(libc::EAGAIN);
    }
    if flags & !(libc::RWF_HIPRI | libc::RWF_DSYNC | libc::RWF_SYNC) != 0 {
        return fail(libc::EOPNOTSUPP);
    }
    // SAFETY: the caller upholds pwritev2(2)'s contract; the hooks below
    // serve the remote file.
    let written = unsafe {
        if offset == -1 {
            super::writev(fd, iov, count)
        } else {
            super::pwritev_hook(fd, iov, count, offset, || fail(libc::EBADF))
        }
    };
    if written < 0 || flags & (libc::RWF_DSYNC | libc::RWF_SYNC) == 0 {
        return written;
    }
    let synced = if flags & libc::RWF_SYNC != 0 {
        // SAFETY: our own hook on a remote fd.
        unsafe { super::fsync(fd) }
    } else {
        // SAFETY: our own hook on a remote fd.
        unsafe { super::fdatasync(fd) }
    };
    if synced == 0 { written } else { -1 }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv2(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
    flags: c_int,
) -> ssize_t {
    let real = real!(preadv2: fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t);
    // SAFETY: preadv2(2) contract; libc gets the caller's arguments.
    unsafe {
        preadv2_hook(fd, iov, count, offset, flags, || {
            real(fd, iov, count, offset, flags)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv64v2(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
    flags: c_int,
) -> ssize_t {
    let real = real!(preadv64v2: fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t);
    // SAFETY: preadv2(2) contract; libc gets the caller's arguments.
    unsafe {
        preadv2_hook(fd, iov, count, offset, flags, || {
            real(fd, iov, count, offset, flags)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev2(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
    flags: c_int,
) -> ssize_t {
    let real = real!(pwritev2: fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t);
    // SAFETY: pwritev2(2) contract; libc gets the caller's arguments.
    unsafe {
        pwritev2_hook(fd, iov, count, offset, flags, || {
            real(fd, iov, count, offset, flags)
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev64v2(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
    flags: c_int,
) -> ssize_t {
    let real = real!(pwritev64v2: fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t);
    // SAFETY: pwritev2(2) contract; libc gets the caller's arguments.
    unsafe {
        pwritev2_hook(fd, iov, count, offset, flags, || {
            real(fd, iov, count, offset, flags)
        })
    }
}
