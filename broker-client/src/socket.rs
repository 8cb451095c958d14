//! Socket helpers for the TCP fast path, shared by the layer (on the
//! program's own fd) and the supervisor (on its `pidfd_getfd` copy): the
//! checks that decide whether a socket may be replaced by one connected in
//! the target, and the options carried over to it.

/// Whether socket `fd` of family `domain` may be replaced by one the agent
/// connects to `remote` in the target: the family fits (a v4-mapped IPv6
/// destination does not) and `fd` is neither bound nor connected (a local
/// address could not be kept).
pub fn replaceable(fd: i32, domain: i32, remote: std::net::SocketAddr) -> bool {
    let family_matches = match remote {
        std::net::SocketAddr::V4(_) => domain == libc::AF_INET,
        std::net::SocketAddr::V6(v6) => {
            domain == libc::AF_INET6 && v6.ip().to_ipv4_mapped().is_none()
        }
    };
    family_matches && !bound_or_connected(fd)
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
pub fn copy_options(from: i32, to: i32) {
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
