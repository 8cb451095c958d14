//! One subscribed port: tells the subscriber it is subscribed, then accepts
//! the connections the rules send to its listener and hands each to a
//! connection task with its real peer and original destination.
//!
//! # Retiring
//! When the port is released its rule is removed first; connections the
//! rule redirected just before may still be in the listener's queue (or
//! finishing their handshake). Closing the listener then would reset them,
//! so the task keeps accepting for [`LISTENER_LINGER`], sends each such
//! connection to its original destination unchanged, takes what is left in
//! the queue without waiting, and only then closes the listener.

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
use tokio_util::task::TaskTracker;

/// Most connections of one subscribed port open at once; beyond that new
/// ones are closed right away.
pub const MAX_CONNECTIONS_PER_PORT: usize = 1024;

/// How long a released port's listener keeps accepting what its rule sent
/// before the rule went (see the module docs). A redirected connection is
/// in the queue within a round trip inside the target's network namespace;
/// the margin is for an agent slowed down by a busy machine.
pub const LISTENER_LINGER: Duration = Duration::from_millis(500);

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
    /// Every connection task of the agent (drained when it stops).
    pub conns: TaskTracker,
    /// This port's connection tasks (its table goes once they are done).
    pub port_conns: TaskTracker,
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
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_PORT));
        for message in answer {
            tokio::select! {
                _ = self.stop.cancelled() => return self.retire(&limit).await,
                // Released soon by the incoming task; serve until then.
                _ = subscriber.token.cancelled() => break,
                _ = subscriber.out_tx.send(message) => {}
            }
        }
        // A port outlives its subscriber's session until the incoming task
        // releases it (rule first, then `stop`): a whole port's connections
        // meanwhile go to the original destination (see `dispatch`).
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return self.retire(&limit).await,
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

    /// Run a connection task, tracked by the agent and by this port.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.conns.spawn(self.port_conns.track_future(task));
    }

    /// The port was released and its rule is gone: serve what the rule
    /// sent before for [`LISTENER_LINGER`], then close the listener.
    async fn retire(&self, limit: &Arc<Semaphore>) {
        let linger = tokio::time::sleep(LISTENER_LINGER);
        tokio::pin!(linger);
        let mut late = 0usize;
        loop {
            tokio::select! {
                biased;
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        late += 1;
                        self.pass_through(stream, peer, limit);
                    }
                    Err(_) => break,
                },
                () = &mut linger => break,
                _ = self.shutdown.cancelled() => break,
            }
        }
        // Whatever reached the queue at the last moment, without waiting.
        while let Some(Ok((stream, peer))) =
            futures::FutureExt::now_or_never(self.listener.accept())
        {
            late += 1;
            self.pass_through(stream, peer, limit);
        }
        tracing::debug!(
            port = self.port.0,
            late,
            "listener closed after its rule was removed"
        );
    }

    /// Send a connection to its original destination, unchanged.
    fn pass_through(&self, stream: TcpStream, peer: SocketAddr, limit: &Arc<Semaphore>) {
        let Some(accepted) = self.accepted(stream, peer, limit) else {
            return;
        };
        let (net, mark, shutdown) = (self.net.clone(), self.mark, self.shutdown.clone());
        self.spawn(async move {
            let Accepted {
                mut stream,
                local,
                permit,
                conn,
                ..
            } = accepted;
            tracing::debug!(%conn, destination = %local, "passed through: the port is released");
            let service = tokio::select! {
                _ = shutdown.cancelled() => return,
                service = net.connect_tcp_marked(local, mark) => service,
            };
            match service {
                Ok(mut service) => {
                    let _ = service.set_nodelay(true);
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut stream, &mut service) => {}
                    }
                }
                // Dropping the peer's socket tells it, as the target would.
                Err(e) => tracing::warn!(%conn, destination = %local, error = %e,
                    "cannot reach the original destination"),
            }
            drop(permit);
        });
    }

    /// A connection with its id, real peer and original destination; `None`
    /// (it is closed) beyond the port's connection limit.
    fn accepted(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        limit: &Arc<Semaphore>,
    ) -> Option<Accepted> {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(
                port = self.port.0,
                "{MAX_CONNECTIONS_PER_PORT} connections open; refusing a new one"
            );
            return None;
        };
        let _ = stream.set_nodelay(true);
        Some(Accepted {
            conn: ConnectionId(self.conn_ids.fetch_add(1, Ordering::Relaxed) + 1),
            port: self.port,
            peer: canonical(peer),
            local: original_destination(&stream, self.listener_port, self.port),
            stream,
            permit,
        })
    }

    fn dispatch(&self, stream: TcpStream, peer: SocketAddr, limit: &Arc<Semaphore>) {
        // A whole port whose session ended, not released yet: the target's.
        if matches!(self.mode, PortMode::Whole(_)) && self.subscriber.token.is_cancelled() {
            return self.pass_through(stream, peer, limit);
        }
        let Some(accepted) = self.accepted(stream, peer, limit) else {
            return;
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
                    shutdown: self.shutdown.clone(),
                    conn_ids: self.conn_ids.clone(),
                };
                self.spawn(http::serve(accepted, filtered));
            }
            PortMode::Whole(IncomingMode::Steal) => {
                self.spawn(conn::steal(accepted, self.subscriber.clone()));
            }
            PortMode::Whole(IncomingMode::Mirror) => {
                self.spawn(conn::mirror(
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
