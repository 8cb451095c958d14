//! Keep-alive connections to the local app, reused for the stolen requests
//! of the same peer.
//!
//! Dialing the app for every request costs a TCP handshake, an `accept`
//! (and its peer lookup through the layer) and, under load, an explicit
//! `bind` per request that can run out of ephemeral ports while closed
//! connections sit in `TIME_WAIT`. Connections are therefore kept per
//! **(peer, protocol)**: a connection's dialer → peer mapping names exactly
//! one peer, so the app keeps seeing the real peer of every request on it.
//!
//! A connection goes back to the pool only after its response was read
//! whole; idle ones are dropped after [`IDLE_TIMEOUT`], and at most
//! [`MAX_IDLE`] wait in all (the oldest go first).

use super::super::Registered;
use hyper::body::Incoming;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::task::AbortOnDropHandle;

/// How long a connection may wait unused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most idle connections kept, all peers together.
pub const MAX_IDLE: usize = 256;

/// A request sender of either protocol.
pub(crate) enum Sender<B> {
    Http1(hyper::client::conn::http1::SendRequest<B>),
    Http2(hyper::client::conn::http2::SendRequest<B>),
}

impl<B> Sender<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Whether the connection is closed.
    fn closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    /// Whether a request can go out on it now.
    fn usable(&self) -> bool {
        let ready = match self {
            Sender::Http1(s) => s.is_ready(),
            Sender::Http2(s) => s.is_ready(),
        };
        ready && !self.closed()
    }

    /// Wait until the connection can take another request.
    pub(crate) async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Sender::Http1(s) => s.ready().await,
            Sender::Http2(s) => s.ready().await,
        }
    }

    /// Send `req`; on failure, the request back when it was not sent at all
    /// (the connection was closed under it), so it can be retried.
    pub(crate) async fn send(
        &mut self,
        req: hyper::Request<B>,
    ) -> Result<hyper::Response<Incoming>, (hyper::Error, Option<hyper::Request<B>>)> {
        let sent = match self {
            Sender::Http1(s) => s.try_send_request(req).await,
            Sender::Http2(s) => s.try_send_request(req).await,
        };
        sent.map_err(|mut e| {
            let req = e.take_message();
            (e.into_error(), req)
        })
    }
}

/// One connection to the app.
pub(crate) struct AppConn<B> {
    pub sender: Sender<B>,
    /// Drives the connection; dropping it closes the connection.
    pub _driver: AbortOnDropHandle<()>,
    /// Keeps the dialer → peer mapping while the connection lives.
    pub _registered: Registered,
}

struct Idle<B> {
    conn: AppConn<B>,
    since: Instant,
}

/// Idle connections by (peer, HTTP/2).
type IdleMap<B> = HashMap<(SocketAddr, bool), Vec<Idle<B>>>;

/// How often `put` forgets expired and closed connections of every peer.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct State<B> {
    idle: IdleMap<B>,
    /// Connections in `idle`, all peers together.
    total: usize,
    /// When `idle` was last swept.
    swept: Instant,
}

impl<B> State<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Forget what expired or closed.
    fn sweep(&mut self, now: Instant) {
        self.idle.retain(|_, conns| {
            conns.retain(|c| now.duration_since(c.since) < IDLE_TIMEOUT && !c.conn.sender.closed());
            !conns.is_empty()
        });
        self.total = self.idle.values().map(Vec::len).sum();
        self.swept = now;
    }

    /// Drop the connection idle the longest.
    fn evict_oldest(&mut self) {
        let oldest = self
            .idle
            .iter()
            .filter_map(|(key, conns)| conns.first().map(|c| (c.since, *key)))
            .min()
            .map(|(_, key)| key);
        if let Some(key) = oldest
            && let Some(conns) = self.idle.get_mut(&key)
        {
            conns.remove(0);
            self.total -= 1;
            if conns.is_empty() {
                self.idle.remove(&key);
            }
        }
    }
}

/// The idle connections of one port, by (peer, HTTP/2). Cheap to clone.
pub(crate) struct Pool<B> {
    inner: Arc<Mutex<State<B>>>,
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<B> Default for Pool<B> {
    fn default() -> Self {
        Pool {
            inner: Arc::new(Mutex::new(State {
                idle: HashMap::new(),
                total: 0,
                swept: Instant::now(),
            })),
        }
    }
}

impl<B> std::fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl<B> Pool<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A usable idle connection for `peer`, if one waits.
    pub(crate) fn take(&self, peer: SocketAddr, http2: bool) -> Option<AppConn<B>> {
        let mut state = self.lock();
        let state = &mut *state;
        let conns = state.idle.get_mut(&(peer, http2))?;
        let now = Instant::now();
        let found = loop {
            let Some(candidate) = conns.pop() else {
                break None;
            };
            state.total -= 1;
            if now.duration_since(candidate.since) < IDLE_TIMEOUT && candidate.conn.sender.usable()
            {
                break Some(candidate.conn);
            }
        };
        if conns.is_empty() {
            state.idle.remove(&(peer, http2));
        }
        found
    }

    /// Keep `conn` for the next request of `peer`.
    pub(crate) fn put(&self, peer: SocketAddr, http2: bool, conn: AppConn<B>) {
        if !conn.sender.usable() {
            return;
        }
        let mut state = self.lock();
        let now = Instant::now();
        if state.total >= MAX_IDLE || now.duration_since(state.swept) >= SWEEP_EVERY {
            state.sweep(now);
        }
        if state.total >= MAX_IDLE {
            state.evict_oldest();
        }
        state
            .idle
            .entry((peer, http2))
            .or_default()
            .push(Idle { conn, since: now });
        state.total += 1;
    }
}
