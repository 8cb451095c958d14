//! `extern "C"` shims for the socket calls; the logic lives in [`super::ops`].

use super::ops;
use crate::error::{HookError, fail};
use crate::guard::DetourGuard;
use crate::real::real;
use crate::sockaddr as sa;
use libc::{c_int, c_void, msghdr, size_t, sockaddr, socklen_t, ssize_t};

mod mmsg;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let real = real!(connect: fn(c_int, *const sockaddr, socklen_t) -> c_int);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd, addr, len) };
    };
    // SAFETY: the caller passes a sockaddr of `len` bytes, as connect(2) requires.
    let Some(remote) = (unsafe { sa::read(addr, len) }) else {
        return unsafe { real(fd, addr, len) };
    };
    match super::fast::connect(fd, remote) {
        Ok(true) => {
            crate::error::set_errno(0);
            return 0;
        }
        Ok(false) => {}
        Err(e) => return fail(&e),
    }
    match ops::connect(fd, remote) {
        Ok(redirect) => {
            let target = redirect.interceptor;
            // SAFETY: `target` is a valid sockaddr of `target.len` bytes.
            let rc = unsafe { real(fd, target.as_ptr(), target.len) };
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if rc == 0 || errno == libc::EINPROGRESS {
                ops::connected(fd, redirect);
            }
            crate::error::set_errno(errno);
            rc
        }
        Err(HookError::Bypass(_)) => unsafe { real(fd, addr, len) },
        Err(e) => fail(&e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let real = real!(getpeername: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int);
    if let Some(_g) = DetourGuard::enter() {
        if let Ok((remote, family)) = ops::peer_of(fd) {
            // SAFETY: getpeername(2) contract: addr has *len writable bytes.
            unsafe { sa::write_out(remote, family, addr, len) };
            return 0;
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, addr, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let real = real!(getsockname: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int);
    if let Some(_g) = DetourGuard::enter() {
        if let Ok((local, family)) = ops::local_of(fd) {
            // SAFETY: getsockname(2) contract: addr has *len writable bytes.
            unsafe { sa::write_out(local, family, addr, len) };
            return 0;
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, addr, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    let real = real!(sendto: fn(c_int, *const c_void, size_t, c_int, *const sockaddr, socklen_t) -> ssize_t);
    if !addr.is_null() {
        if let Some(_g) = DetourGuard::enter() {
            // SAFETY: sendto(2) contract: addr has len readable bytes.
            if let Some(remote) = unsafe { sa::read(addr, len) } {
                match ops::sendto_target(fd, remote) {
                    // SAFETY: `target` is a valid sockaddr; buf/n are the caller's.
                    Ok(target) => {
                        return unsafe { real(fd, buf, n, flags, target.as_ptr(), target.len) };
                    }
                    Err(HookError::Bypass(_)) => {}
                    Err(e) => return fail(&e) as ssize_t,
                }
            }
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, buf, n, flags, addr, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    let real = real!(sendmsg: fn(c_int, *const msghdr, c_int) -> ssize_t);
    if !msg.is_null() {
        if let Some(_g) = DetourGuard::enter() {
            // SAFETY: sendmsg(2) contract: msg points to a valid msghdr.
            let m = unsafe { *msg };
            // SAFETY: msg_name has msg_namelen bytes when non-null.
            if let Some(remote) = unsafe { sa::read(m.msg_name.cast(), m.msg_namelen) } {
                match ops::sendto_target(fd, remote) {
                    Ok(target) => {
                        let mut copy = m;
                        let mut storage = target.storage;
                        copy.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
                        copy.msg_namelen = target.len;
                        // SAFETY: `copy` differs from the caller's msghdr only in its name.
                        return unsafe { real(fd, &copy, flags) };
                    }
                    Err(HookError::Bypass(_)) => {}
                    Err(e) => return fail(&e) as ssize_t,
                }
            }
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, msg, flags) }
}

/// Rewrite an interceptor source address to the remote peer it stands for.
///
/// # Safety
/// `addr`/`len` must be the caller's recvfrom out-parameters (or null), `cap`
/// the capacity the caller gave in `*len` before the call.
unsafe fn fix_source(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, cap: socklen_t) {
    if addr.is_null() || len.is_null() {
        return;
    }
    let Some(_g) = DetourGuard::enter() else {
        return;
    };
    // SAFETY: the kernel just wrote min(*len, cap) bytes of address at addr.
    let Some(source) = (unsafe { sa::read(addr, (*len).min(cap)) }) else {
        return;
    };
    if let Some((remote, family)) = ops::recv_source(fd, source) {
        let mut out_len = cap;
        // SAFETY: addr has `cap` writable bytes (the caller's buffer).
        unsafe {
            sa::write_out(remote, family, addr, &mut out_len);
            *len = out_len;
        }
    }
}

/// The capacity a caller passed in a `socklen_t` in/out parameter.
///
/// # Safety
/// `len` must be null or valid for reads.
unsafe fn capacity(len: *const socklen_t) -> socklen_t {
    if len.is_null() { 0 } else { unsafe { *len } }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    let real = real!(recvfrom: fn(c_int, *mut c_void, size_t, c_int, *mut sockaddr, *mut socklen_t) -> ssize_t);
    // SAFETY: len is the caller's in/out parameter.
    let cap = unsafe { capacity(len) };
    // SAFETY: forwarding the caller's arguments unchanged.
    let got = unsafe { real(fd, buf, n, flags, addr, len) };
    if got >= 0 {
        // SAFETY: recvfrom succeeded, so addr/len hold the source.
        unsafe { fix_source(fd, addr, len, cap) };
    }
    got
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let real = real!(recvmsg: fn(c_int, *mut msghdr, c_int) -> ssize_t);
    // SAFETY: msg is the caller's valid msghdr (or null).
    let cap = if msg.is_null() {
        0
    } else {
        unsafe { (*msg).msg_namelen }
    };
    // SAFETY: forwarding the caller's arguments unchanged.
    let got = unsafe { real(fd, msg, flags) };
    if got >= 0 && !msg.is_null() {
        // SAFETY: recvmsg succeeded; msg_name/msg_namelen hold the source.
        unsafe {
            let name = (*msg).msg_name.cast::<sockaddr>();
            fix_source(fd, name, &mut (*msg).msg_namelen, cap);
        }
    }
    got
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let real = real!(listen: fn(c_int, c_int) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    let rc = unsafe { real(fd, backlog) };
    if rc == 0 {
        if let Some(_g) = DetourGuard::enter() {
            match super::incoming::listen(fd) {
                Ok(()) | Err(HookError::Bypass(_)) => {}
                // The app keeps its local listener; say why the target's
                // traffic will not come.
                Err(e) => crate::session::warn(&format!(
                    "could not subscribe the target's port for listener fd {fd}: {}",
                    match e {
                        HookError::Remote(r) => r.message,
                        other => format!("{other:?}"),
                    }
                )),
            }
        }
    }
    rc
}

/// Shared body of `accept`/`accept4`: report the real peer of connections
/// the intproxy delivered.
///
/// # Safety
/// `addr`/`len` are the caller's accept(2) out-parameters (or null).
unsafe fn after_accept(listener: c_int, conn: c_int, addr: *mut sockaddr, len: *mut socklen_t) {
    let Some(_g) = DetourGuard::enter() else {
        return;
    };
    // SAFETY: sockaddr_storage is plain old data.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut slen = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    let sp = (&mut storage as *mut libc::sockaddr_storage).cast::<sockaddr>();
    // SAFETY: valid out-parameters; the guard makes this the real getpeername.
    if unsafe { libc::getpeername(conn, sp, &mut slen) } != 0 {
        return;
    }
    // SAFETY: the kernel wrote slen bytes.
    let Some(from) = (unsafe { sa::read(sp, slen) }) else {
        return;
    };
    if let Some((peer, family)) = super::incoming::accepted(listener, conn, from) {
        // SAFETY: the caller's out-parameters, as accept(2) defines them.
        unsafe { sa::write_out(peer, family, addr, len) };
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let real = real!(accept: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    let conn = unsafe { real(fd, addr, len) };
    crate::fd::create::created(conn);
    if conn >= 0 && crate::fd::get(fd).is_some() {
        // SAFETY: accept succeeded; addr/len are the caller's.
        unsafe { after_accept(fd, conn, addr, len) };
    }
    conn
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let real = real!(accept4: fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    let conn = unsafe { real(fd, addr, len, flags) };
    crate::fd::create::created(conn);
    if conn >= 0 && crate::fd::get(fd).is_some() {
        // SAFETY: accept4 succeeded; addr/len are the caller's.
        unsafe { after_accept(fd, conn, addr, len) };
    }
    conn
}
