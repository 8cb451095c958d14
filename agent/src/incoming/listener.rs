//! One subscribed port: tells the subscriber it is subscribed, then accepts
//! the connections the rules send to its listener and hands each to a
//! connection task with its real peer and original destination.

use super::Subscriber;
use super::conn::{self, Accepted};
use super::http::{self, Filtered};
use super::redirect::ListenerPort;
use super::task::PortRoutes;
use crate::net::NetApi;
use remora_protocol::incoming::{IncomingMode, IncomingServer, RemotePort};
use remora_protocol::session::LogLevel;
use remora_protocol::{ConnectionId, ServerMessage};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// Most connections of one subscribed port open at once; beyond that new
/// ones are closed right away.
pub const MAX_CONNECTIONS_PER_PORT: usize = 1024;

/// How a port's connections are handled.
#[derive(Debug)]
pub(super) enum PortMode {
    /// The whole port, stolen or mirrored, for the subscriber.
    Whole(IncomingMode),
    /// Filtered steals: each HTTP request goes to the first route whose
    /// filter takes it, or to the original destination.
    Filtered(watch::Receiver<PortRoutes>),
}

/// The listener task of one subscribed port.
pub(super) struct PortTask {
    pub listener: TcpListener,
    pub listener_port: ListenerPort,
    pub port: RemotePort,
    pub mode: PortMode,
    /// The first subscriber: told `Subscribed` once the port is ready. For
    /// a whole port, the port ends with its session.
    pub subscriber: Subscriber,
    pub net: NetApi,
    pub mark: Option<u32>,
    /// Cancelled when the subscription ends.
    pub stop: CancellationToken,
    /// The agent's: ends mirrored pass-through connections too.
    pub shutdown: CancellationToken,
    pub conn_ids: Arc<AtomicU64>,
}

/// The warning a client gets when it steals a whole port.
pub fn unfiltered_steal_warning(port: RemotePort) -> String {
    format!(
        "stealing port {} without an HTTP filter also takes health-probe traffic (kubelet \
         probes) away from the target",
        port.0
    )
}

impl PortTask {
    pub(super) async fn run(self) {
        let subscriber = &self.subscriber;
        let mut answer = vec![ServerMessage::Incoming(IncomingServer::Subscribed {
            port: self.port,
            result: Ok(()),
        })];
        if matches!(self.mode, PortMode::Whole(IncomingMode::Steal)) {
            answer.push(ServerMessage::Log {
                level: LogLevel::Warn,
                message: unfiltered_steal_warning(self.port),
            });
        }
        for message in answer {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = subscriber.token.cancelled() => return,
                _ = subscriber.out_tx.send(message) => {}
            }
        }
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_PORT));
        // A shared (filtered) port outlives its first subscriber: the
        // incoming task stops it when its last filter goes.
        let whole = matches!(self.mode, PortMode::Whole(_));
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = subscriber.token.cancelled(), if whole => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => self.dispatch(stream, peer, &limit),
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(port = self.port.0, error = %e, "cannot accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    fn dispatch(&self, stream: TcpStream, peer: SocketAddr, limit: &Arc<Semaphore>) {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(
                port = self.port.0,
                "{MAX_CONNECTIONS_PER_PORT} connections open; refusing a new one"
            );
            return;
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            conn: ConnectionId(self.conn_ids.fetch_add(1, Ordering::Relaxed) + 1),
            port: self.port,
            peer: canonical(peer),
            local: original_destination(&stream, self.listener_port, self.port),
            stream,
            permit,
        };
        tracing::debug!(
            conn = %accepted.conn,
            peer = %accepted.peer,
            local = %accepted.local,
            mode = ?self.mode,
            "incoming connection"
        );
        match &self.mode {
            PortMode::Filtered(routes) => {
                let filtered = Filtered {
                    routes: routes.clone(),
                    net: self.net.clone(),
                    mark: self.mark,
                    stop: self.stop.clone(),
                    shutdown: self.shutdown.clone(),
                    conn_ids: self.conn_ids.clone(),
                };
                tokio::spawn(http::serve(accepted, filtered));
            }
            PortMode::Whole(IncomingMode::Steal) => {
                tokio::spawn(conn::steal(accepted, self.subscriber.clone()));
            }
            PortMode::Whole(IncomingMode::Mirror) => {
                tokio::spawn(conn::mirror(
                    accepted,
                    self.subscriber.clone(),
                    self.net.clone(),
                    self.mark,
                    self.shutdown.clone(),
                ));
            }
        }
    }
}

/// An IPv4 peer of a dual-stack socket shows as `::ffff:a.b.c.d`; say `a.b.c.d`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Where the peer meant to connect: the destination before the redirect
/// (`SO_ORIGINAL_DST`). A connection that was not redirected (made straight
/// to the listener) counts as one to the subscribed port of the address it
/// reached.
pub fn original_destination(
    stream: &TcpStream,
    listener: ListenerPort,
    port: RemotePort,
) -> SocketAddr {
    let local = stream
        .local_addr()
        .map(canonical)
        .unwrap_or_else(|_| (Ipv4Addr::UNSPECIFIED, port.0).into());
    match conntrack_destination(stream, local.is_ipv4()) {
        Some(original) if original.port() != listener.0 => canonical(original),
        _ => SocketAddr::new(local.ip(), port.0),
    }
}

fn conntrack_destination(stream: &TcpStream, ipv4: bool) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    if ipv4 {
        let sa = getsockopt(stream, sockopt::OriginalDst).ok()?;
        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sa.sin_port)))
    } else {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
        Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(sa.sin6_port)))
    }
}
