//! Sockets: outgoing TCP/UDP connections made from the target's network
//! namespace through intproxy interceptors.
//!
//! A remote `connect` asks the intproxy to open the stream from the target and
//! then connects the application's own socket to the local interceptor the
//! intproxy returns. After that the bytes flow through real kernel sockets, so
//! `read`/`write`/`send`/`recv`/`poll`/`epoll` need no hooks; only the
//! address-reporting calls (`getpeername`, `getsockname`) and unconnected UDP
//! (`sendto`/`sendmsg`/`recvfrom`/`recvmsg`) are rewritten.

pub mod fast;
pub mod hooks;
pub mod incoming;
pub mod ops;

use crate::sync::ForkMutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A socket the layer has redirected.
#[derive(Debug, Clone)]
pub enum SocketInfo {
    /// Connected (TCP or UDP) to `remote` through `interceptor`.
    Outgoing {
        remote: SocketAddr,
        /// The stream's own address inside the target.
        remote_local: Option<SocketAddr>,
        interceptor: SocketAddr,
    },
    /// An unconnected UDP socket that has sent datagrams to remote peers.
    UdpRoutes(Arc<UdpRoutesKey>),
    /// A listener whose port is subscribed on the target.
    Listening(Arc<incoming::Subscription>),
    /// A connection the intproxy delivered from the target: who really sent it.
    Accepted {
        peer: SocketAddr,
        local: Option<SocketAddr>,
    },
}

/// Remote peer ⇄ interceptor mappings of one unconnected UDP socket.
#[derive(Debug, Default)]
pub struct UdpRoutes {
    pub by_remote: HashMap<SocketAddr, SocketAddr>,
    pub by_interceptor: HashMap<SocketAddr, SocketAddr>,
}

/// The routes of every unconnected UDP socket, by [`UdpRoutesKey`]: one
/// table behind one fork-safe leaf lock (see [`crate::sync`]).
pub(crate) static UDP_ROUTES: ForkMutex<Option<HashMap<u64, UdpRoutes>>> = ForkMutex::new(None);
static NEXT_ROUTES_KEY: AtomicU64 = AtomicU64::new(1);

/// A socket's entry in [`UDP_ROUTES`], removed when its last duplicate closes.
#[derive(Debug)]
pub struct UdpRoutesKey(u64);

impl UdpRoutesKey {
    /// A new, empty routing table.
    pub fn new() -> Self {
        UdpRoutesKey(NEXT_ROUTES_KEY.fetch_add(1, Ordering::Relaxed))
    }

    /// Run `f` on this socket's routes under the table lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut UdpRoutes) -> R) -> R {
        let mut table = UDP_ROUTES.lock();
        f(table
            .get_or_insert_with(HashMap::new)
            .entry(self.0)
            .or_default())
    }
}

impl Default for UdpRoutesKey {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for UdpRoutesKey {
    fn drop(&mut self) {
        if let Some(table) = UDP_ROUTES.lock().as_mut() {
            table.remove(&self.0);
        }
    }
}
