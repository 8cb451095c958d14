//! Incoming traffic: when the application listens on a port the config
//! selects, the layer subscribes the target's matching port through the
//! intproxy; the intproxy then dials the application's real listener for each
//! stolen or mirrored connection, and `accept` reports the real peer.

use super::SocketInfo;
use super::ops::{domain_of, socket_kind};
use crate::error::{HookError, HookResult};
use crate::fd::{self, Managed};
use crate::{session, sockaddr, state};
use remora_config::{HttpFilter as ConfigFilter, IncomingMode as ConfigMode};
use remora_protocol::incoming::{HttpFilter, IncomingMode, RemotePort};
use remora_protocol::messages::{LayerRequest, LayerResponse};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A subscribed listener; dropping the last duplicate of its fd (in the
/// process that subscribed) unsubscribes the port.
#[derive(Debug)]
pub struct Subscription {
    remote: RemotePort,
    pid: u32,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // A forked child closing its inherited copy must not end the
        // parent's subscription.
        if std::process::id() == self.pid {
            let _ = session::request(LayerRequest::Unlisten {
                remote: self.remote,
            });
        }
    }
}

/// The config's HTTP filter in wire form: several keys at one level all apply.
pub fn wire_filter(filter: &ConfigFilter) -> HttpFilter {
    let mut parts = Vec::new();
    if let Some(h) = &filter.header {
        parts.push(HttpFilter::Header(h.clone()));
    }
    if let Some(p) = &filter.path {
        parts.push(HttpFilter::Path(p.clone()));
    }
    if let Some(m) = &filter.method {
        parts.push(HttpFilter::Method(m.clone()));
    }
    if !filter.all_of.is_empty() {
        parts.push(HttpFilter::AllOf(
            filter.all_of.iter().map(wire_filter).collect(),
        ));
    }
    if !filter.any_of.is_empty() {
        parts.push(HttpFilter::AnyOf(
            filter.any_of.iter().map(wire_filter).collect(),
        ));
    }
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        HttpFilter::AllOf(parts)
    }
}

/// The local address of `fd` (the real one: the layer's guard is held).
fn local_addr(fd: i32) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain old data.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: storage/len are valid out-parameters.
    if unsafe { libc::getsockname(fd, ptr, &mut len) } != 0 {
        return None;
    }
    // SAFETY: the kernel wrote len bytes of address.
    unsafe { sockaddr::read(ptr, len) }
}

/// After a successful `listen(fd)`: subscribe the target's port if the
/// config says so.
pub fn listen(fd: i32) -> HookResult<()> {
    let state = state::get().ok_or(HookError::Bypass("layer inactive"))?;
    let incoming = &state.config.network.incoming;
    let mode = match incoming.mode {
        ConfigMode::Off => return Err(HookError::Bypass("incoming off")),
        ConfigMode::Steal => IncomingMode::Steal,
        ConfigMode::Mirror => IncomingMode::Mirror,
    };
    if matches!(fd::get(fd), Some(Managed::Socket(SocketInfo::Listening(_)))) {
        return Err(HookError::Bypass("already subscribed"));
    }
    let (sock_type, _) = socket_kind(fd).ok_or(HookError::Bypass("not a socket"))?;
    if sock_type != libc::SOCK_STREAM {
        return Err(HookError::Bypass("not a stream listener"));
    }
    let local = local_addr(fd).ok_or(HookError::Bypass("not an IP listener"))?;
    let remote = incoming
        .port_mapping
        .iter()
        .find(|[l, _]| *l == local.port())
        .map_or(local.port(), |[_, r]| *r);
    if !incoming.ports.is_empty() && !incoming.ports.contains(&remote) {
        return Err(HookError::Bypass("port not selected"));
    }
    // Where the intproxy dials: the wildcard means "this machine".
    let dial_ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let request = LayerRequest::Listen {
        local: SocketAddr::new(dial_ip, local.port()),
        remote: RemotePort(remote),
        mode,
        filter: incoming.http_filter.as_ref().map(wire_filter),
    };
    match session::request(request)? {
        LayerResponse::Listening => {
            let sub = Subscription {
                remote: RemotePort(remote),
                pid: std::process::id(),
            };
            fd::insert(fd, Managed::Socket(SocketInfo::Listening(Arc::new(sub))));
            Ok(())
        }
        other => Err(session::protocol_violation(&other)),
    }
}

/// After `accept` on a subscribed listener returned `conn` from `from`: the
/// real peer (and target-side address) when the intproxy dialed it.
pub fn accepted(listener: i32, conn: i32, from: SocketAddr) -> Option<(SocketAddr, i32)> {
    if !matches!(
        fd::get(listener),
        Some(Managed::Socket(SocketInfo::Listening(_)))
    ) {
        return None;
    }
    if !from.ip().is_loopback() {
        return None;
    }
    match session::request(LayerRequest::IncomingPeer { dialer: from }).ok()? {
        LayerResponse::Peer {
            peer: Some(peer),
            local,
        } => {
            fd::insert(conn, Managed::Socket(SocketInfo::Accepted { peer, local }));
            Some((peer, domain_of(conn)))
        }
        _ => None,
    }
}
