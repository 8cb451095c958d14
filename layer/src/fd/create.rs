//! Calls that create fds of kinds the layer does not manage. The kernel hands
//! out the lowest free number, which may be one the table still maps to a
//! remote handle (the app closed it behind the layer's back: a raw syscall, a
//! `close` from a library linked statically, an fd inherited and closed by a
//! forked child...). Each hook clears such a stale entry for the returned
//! number, so a socket, pipe or accept that reuses it is never routed to a
//! remote file. `open` paths do the same in [`crate::file`], `dup*` and
//! `fcntl(F_DUPFD*)` in [`crate::fd`], `accept` in [`crate::socket::hooks`].

use super::{maybe_managed, remove};
use crate::guard::DetourGuard;
use crate::real::real;
use libc::{c_char, c_int, c_uint, sigset_t};

/// `fd` was just created by the kernel: whatever the table says about it is
/// stale. Dropping the entry may release a remote handle (a round trip), so
/// it happens outside the table lock and only outside layer code.
pub fn created(fd: c_int) {
    if !maybe_managed(fd) {
        return;
    }
    if let Some(_g) = DetourGuard::enter() {
        drop(remove(fd));
    }
}

/// As [`created`] for the two fds of `pipe`/`socketpair`.
///
/// # Safety
/// `fds` points at two initialised `c_int`s.
unsafe fn created_pair(ret: c_int, fds: *const c_int) {
    if ret == 0 && !fds.is_null() {
        // SAFETY: the caller's array of two fds, just filled by the kernel.
        unsafe {
            created(*fds);
            created(*fds.add(1));
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    let fd = unsafe { real!(socket: fn(c_int, c_int, c_int) -> c_int)(domain, ty, protocol) };
    created(fd);
    fd
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn socketpair(
    domain: c_int,
    ty: c_int,
    protocol: c_int,
    sv: *mut c_int,
) -> c_int {
    let real = real!(socketpair: fn(c_int, c_int, c_int, *mut c_int) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged; sv is filled on success.
    unsafe {
        let ret = real(domain, ty, protocol, sv);
        created_pair(ret, sv);
        ret
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipe(fds: *mut c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged; fds is filled on success.
    unsafe {
        let ret = real!(pipe: fn(*mut c_int) -> c_int)(fds);
        created_pair(ret, fds);
        ret
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipe2(fds: *mut c_int, flags: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged; fds is filled on success.
    unsafe {
        let ret = real!(pipe2: fn(*mut c_int, c_int) -> c_int)(fds, flags);
        created_pair(ret, fds);
        ret
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventfd(initval: c_uint, flags: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    let fd = unsafe { real!(eventfd: fn(c_uint, c_int) -> c_int)(initval, flags) };
    created(fd);
    fd
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memfd_create(name: *const c_char, flags: c_uint) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    let fd = unsafe { real!(memfd_create: fn(*const c_char, c_uint) -> c_int)(name, flags) };
    created(fd);
    fd
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn signalfd(fd: c_int, mask: *const sigset_t, flags: c_int) -> c_int {
    let real = real!(signalfd: fn(c_int, *const sigset_t, c_int) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    let ret = unsafe { real(fd, mask, flags) };
    // With fd != -1 it updates an existing signalfd: nothing was created.
    if fd == -1 {
        created(ret);
    }
    ret
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn timerfd_create(clockid: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    let fd = unsafe { real!(timerfd_create: fn(c_int, c_int) -> c_int)(clockid, flags) };
    created(fd);
    fd
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    let fd = unsafe { real!(epoll_create: fn(c_int) -> c_int)(size) };
    created(fd);
    fd
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    let fd = unsafe { real!(epoll_create1: fn(c_int) -> c_int)(flags) };
    created(fd);
    fd
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn inotify_init() -> c_int {
    // SAFETY: no arguments.
    let fd = unsafe { real!(inotify_init: fn() -> c_int)() };
    created(fd);
    fd
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn inotify_init1(flags: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    let fd = unsafe { real!(inotify_init1: fn(c_int) -> c_int)(flags) };
    created(fd);
    fd
}
