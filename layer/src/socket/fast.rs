//! Outgoing TCP on the local fast path ([`crate::broker`]): the agent
//! connects a socket from inside the target's network namespace and hands
//! it over; it replaces the application's socket under the same number
//! (`dup3`), so from then on the program talks to the peer directly, with
//! no interceptor, intproxy or agent in between.
//!
//! Taken only for a TCP socket the outgoing filter sends to the target, that
//! is not bound yet (a bound local address could not be kept) and not yet
//! connected. The application's status flags (`O_NONBLOCK`), close-on-exec
//! flag and the socket options programs commonly set before `connect`
//! (`TCP_NODELAY`, keep-alive and its timers, `SO_LINGER`) are carried over.
//! A non-blocking `connect` then succeeds at once instead of returning
//! `EINPROGRESS`, which `connect(2)` allows.

use super::ops;
use crate::error::{HookError, HookResult};
use remora_protocol::broker::{BrokerReply, BrokerRequest};
use remora_protocol::net::Transport;
use std::net::SocketAddr;

/// Connect `fd` to `remote` through the fast path. `Ok(false)`: not taken,
/// go on with the proxied path.
///
/// # Errors
/// The connect failed in the target (refused, unreachable...).
pub fn connect(fd: i32, remote: SocketAddr) -> HookResult<bool> {
    if !crate::broker::available() {
        return Ok(false);
    }
    let (transport, domain) = match ops::route(fd, remote) {
        Ok(routed) => routed,
        Err(HookError::Bypass(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    let family_matches = match remote {
        SocketAddr::V4(_) => domain == libc::AF_INET,
        SocketAddr::V6(v6) => domain == libc::AF_INET6 && v6.ip().to_ipv4_mapped().is_none(),
    };
    if transport != Transport::Tcp || !family_matches || bound_or_connected(fd) {
        return Ok(false);
    }
    // SAFETY: F_GETFD/F_GETFL on the caller's descriptor.
    let (fd_flags, status) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFD),
            libc::fcntl(fd, libc::F_GETFL),
        )
    };
    if fd_flags < 0 || status < 0 {
        return Ok(false);
    }
    let received = match crate::broker::call(&BrokerRequest::ConnectTcp { remote }, true) {
        Ok(received) => received,
        Err(HookError::Bypass(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    let (reply, new) = crate::broker::expect_fd(received)?;
    if !matches!(reply, BrokerReply::Connected { .. }) {
        close(new);
        return Err(crate::session::protocol_violation(&reply));
    }
    copy_options(fd, new);
    // SAFETY: plain fcntl on the descriptor we received.
    unsafe { libc::fcntl(new, libc::F_SETFL, status) };
    let cloexec = if fd_flags & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: both are valid descriptors; dup3 atomically replaces the
    // application's unconnected socket with the connected one.
    let rc = unsafe { libc::dup3(new, fd, cloexec) };
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    close(new);
    if rc < 0 {
        return Err(HookError::Errno(errno));
    }
    crate::file::ops::forget_stale(fd);
    Ok(true)
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor this module received and owns.
    unsafe { libc::close(fd) };
}

/// Whether `fd` already has a local port (bound) or a peer (connected).
fn bound_or_connected(fd: i32) -> bool {
    // SAFETY: sockaddr_storage is plain data; the calls fill at most `len` bytes.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) == 0
        {
            return true;
        }
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            return true;
        }
        let port = match i32::from(addr.ss_family) {
            libc::AF_INET => {
                let v4 = &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                v4.sin_port
            }
            libc::AF_INET6 => {
                let v6 = &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                v6.sin6_port
            }
            _ => return true,
        };
        port != 0
    }
}

/// Socket options set on `from` that matter after `connect`, copied to `to`.
fn copy_options(from: i32, to: i32) {
    for (level, name) in [
        (libc::IPPROTO_TCP, libc::TCP_NODELAY),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    ] {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: int-sized option values into a local of that size.
        unsafe {
            if libc::getsockopt(
                from,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            ) == 0
            {
                libc::setsockopt(to, level, name, (&value as *const libc::c_int).cast(), len);
            }
        }
    }
    // SAFETY: a linger struct in and out, of its own size.
    unsafe {
        let mut linger: libc::linger = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
        if libc::getsockopt(
            from,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&mut linger as *mut libc::linger).cast(),
            &mut len,
        ) == 0
            && linger.l_onoff != 0
        {
            libc::setsockopt(
                to,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                len,
            );
        }
    }
}
