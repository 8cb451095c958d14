//! Safe logic of the socket hooks: decide local vs remote and talk to the intproxy.

use super::{SocketInfo, UdpRoutesKey};
use crate::error::{HookError, HookResult};
use crate::fd::{self, Managed};
use crate::sockaddr::{self, CAddr};
use crate::{dns, session, state};
use remora_config::{Proto, Route};
use remora_protocol::messages::{InterceptorAddr, LayerRequest, LayerResponse};
use remora_protocol::net::{RemoteAddr, Transport};
use std::net::SocketAddr;
use std::sync::Arc;

/// `SO_TYPE` and `SO_DOMAIN` of a socket.
pub(super) fn socket_kind(fd: i32) -> Option<(i32, i32)> {
    let get = |opt| {
        let mut value: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: value/len are valid out-parameters of the right size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut value as *mut i32).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    Some((get(libc::SO_TYPE)?, get(libc::SO_DOMAIN)?))
}

fn transport_of(sock_type: i32) -> Option<(Transport, Proto)> {
    match sock_type {
        libc::SOCK_STREAM => Some((Transport::Tcp, Proto::Tcp)),
        libc::SOCK_DGRAM => Some((Transport::Udp, Proto::Udp)),
        _ => None,
    }
}

/// Decide whether traffic from `fd` to `addr` goes through the target.
pub(super) fn route(fd: i32, addr: SocketAddr) -> HookResult<(Transport, i32)> {
    let state = state::get().ok_or(HookError::Bypass("layer inactive"))?;
    if !sockaddr::is_forwardable(&addr) {
        return Err(HookError::Bypass("unspecified address"));
    }
    let (sock_type, domain) = socket_kind(fd).ok_or(HookError::Bypass("not a socket"))?;
    let (transport, proto) = transport_of(sock_type).ok_or(HookError::Bypass("socket type"))?;
    let hostname = dns::hostname_for(addr.ip());
    match state
        .policies
        .outgoing
        .decide(proto, addr, hostname.as_deref())
    {
        Route::Local => Err(HookError::Bypass("outgoing filter says local")),
        Route::Remote => Ok((transport, domain)),
    }
}

/// Ask the intproxy for an interceptor for `remote`.
fn intercept(
    transport: Transport,
    remote: SocketAddr,
) -> HookResult<(SocketAddr, Option<SocketAddr>)> {
    let request = LayerRequest::ConnectOutgoing {
        transport,
        remote: RemoteAddr::Ip(remote),
    };
    match session::request(request)? {
        LayerResponse::Intercepted {
            interceptor: InterceptorAddr::Ip(addr),
            remote_local,
        } => Ok((addr, remote_local)),
        other => Err(session::protocol_violation(&other)),
    }
}

/// What the `connect` hook should do with the application's socket.
#[derive(Debug)]
pub struct Redirect {
    pub interceptor: CAddr,
    info: SocketInfo,
}

/// Plan a remote `connect`: on success the hook connects `fd` to
/// `interceptor` and then calls [`connected`].
pub fn connect(fd: i32, remote: SocketAddr) -> HookResult<Redirect> {
    // A second connect to the same peer is how non-blocking code (Ruby's
    // connect_nonblock, many C loops) learns that the first one finished: it
    // must reach the same interceptor, so the kernel answers EALREADY/EISCONN,
    // instead of opening another stream from the target.
    if let Some(Managed::Socket(
        info @ SocketInfo::Outgoing {
            remote: current,
            interceptor,
            ..
        },
    )) = fd::get(fd)
    {
        if current == remote {
            return Ok(Redirect {
                interceptor: sockaddr::encode(interceptor, domain_of(fd)),
                info,
            });
        }
    }
    let (transport, domain) = route(fd, remote)?;
    let (interceptor, remote_local) = intercept(transport, remote)?;
    Ok(Redirect {
        interceptor: sockaddr::encode(interceptor, domain),
        info: SocketInfo::Outgoing {
            remote,
            remote_local,
            interceptor,
        },
    })
}

/// Record a redirected socket once the real connect to its interceptor started.
pub fn connected(fd: i32, redirect: Redirect) {
    fd::insert(fd, Managed::Socket(redirect.info));
}

/// The remote peer of a redirected socket.
pub fn peer_of(fd: i32) -> HookResult<(SocketAddr, i32)> {
    match fd::get(fd) {
        Some(Managed::Socket(SocketInfo::Outgoing { remote, .. })) => Ok((remote, domain_of(fd))),
        Some(Managed::Socket(SocketInfo::Accepted { peer, .. })) => Ok((peer, domain_of(fd))),
        _ => Err(HookError::Bypass("not redirected")),
    }
}

/// The target-side local address of a redirected socket.
pub fn local_of(fd: i32) -> HookResult<(SocketAddr, i32)> {
    match fd::get(fd) {
        Some(Managed::Socket(SocketInfo::Outgoing {
            remote_local: Some(local),
            ..
        })) => Ok((local, domain_of(fd))),
        _ => Err(HookError::Bypass("no remote local address")),
    }
}

pub(super) fn domain_of(fd: i32) -> i32 {
    socket_kind(fd).map(|(_, d)| d).unwrap_or(libc::AF_INET)
}

/// Where an unconnected datagram to `remote` should really go.
pub fn sendto_target(fd: i32, remote: SocketAddr) -> HookResult<CAddr> {
    let existing = match fd::get(fd) {
        Some(Managed::Socket(SocketInfo::Outgoing { .. })) => {
            return Err(HookError::Bypass("connected socket"));
        }
        Some(Managed::Socket(SocketInfo::UdpRoutes(routes))) => Some(routes),
        _ => None,
    };
    let (transport, domain) = route(fd, remote)?;
    if transport != Transport::Udp {
        return Err(HookError::Bypass("sendto on a stream socket"));
    }
    if let Some(routes) = &existing {
        if let Some(interceptor) = routes.with(|r| r.by_remote.get(&remote).copied()) {
            return Ok(sockaddr::encode(interceptor, domain));
        }
    }
    let (interceptor, _) = intercept(Transport::Udp, remote)?;
    let routes = existing.unwrap_or_else(|| {
        let routes = Arc::new(UdpRoutesKey::new());
        fd::insert(fd, Managed::Socket(SocketInfo::UdpRoutes(routes.clone())));
        routes
    });
    routes.with(|r| {
        r.by_remote.insert(remote, interceptor);
        r.by_interceptor.insert(interceptor, remote);
    });
    Ok(sockaddr::encode(interceptor, domain))
}

/// The remote peer a datagram from `source` (an interceptor) stands for.
/// Whether `fd` is an unconnected UDP socket with remote destinations, whose
/// received sources [`recv_source`] may rewrite.
pub fn has_udp_routes(fd: i32) -> bool {
    matches!(fd::get(fd), Some(Managed::Socket(SocketInfo::UdpRoutes(_))))
}

pub fn recv_source(fd: i32, source: SocketAddr) -> Option<(SocketAddr, i32)> {
    let Some(Managed::Socket(SocketInfo::UdpRoutes(routes))) = fd::get(fd) else {
        return None;
    };
    let source = canonical(source);
    let remote = routes.with(|r| r.by_interceptor.get(&source).copied())?;
    Some((remote, domain_of(fd)))
}

/// Undo v4-mapping so lookups match what the intproxy reported.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        a => a,
    }
}
