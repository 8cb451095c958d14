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
    if transport != Transport::Tcp || !remora_broker_client::socket::replaceable(fd, domain, remote)
    {
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
    remora_broker_client::socket::copy_options(fd, new);
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
