//! Sockets: outgoing TCP/UDP connections made from the target's network
//! namespace through intproxy interceptors.
//!
//! A remote `connect` asks the intproxy to open the stream from the target and
//! then connects the application's own socket to the local interceptor the
//! intproxy returns. After that the bytes flow through real kernel sockets, so
//! `read`/`write`/`send`/`recv`/`poll`/`epoll` need no hooks; only the
//! address-reporting calls (`getpeername`, `getsockname`) and unconnected UDP
//! (`sendto`/`sendmsg`/`recvfrom`/`recvmsg`) are rewritten.

pub mod hooks;
pub mod incoming;
pub mod ops;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

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
    UdpRoutes(Arc<Mutex<UdpRoutes>>),
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
