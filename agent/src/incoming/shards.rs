//! The threads that serve the connections of filtered ports: each runs a
//! current-thread runtime of its own (its own `epoll`), as HAProxy's threads
//! or nginx's workers do, so a peer's connection and its upstream connection
//! live on one thread and their wake-ups never hand the request to another
//! worker.
//!
//! The agent's multi-threaded runtime accepts; each accepted connection
//! moves to the next thread, round robin ([`Detached`] carries it there).
//! Everything a connection task talks to (its session's link, the routes,
//! the network thread) is a channel, which works across runtimes.
//!
//! [`CONN_THREADS_ENV`] sets how many threads there are (default: one per
//! CPU); `0` serves the connections on the agent's own runtime instead.

use super::conn::Accepted;
use remora_protocol::ConnectionId;
use remora_protocol::incoming::RemotePort;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio::sync::OwnedSemaphorePermit;

/// How many connection threads serve filtered ports (`0`: none, the agent's
/// runtime serves them); default one per CPU.
pub const CONN_THREADS_ENV: &str = "REMORA_AGENT_CONN_THREADS";

/// The connection threads' runtimes, started on first use, for the life of
/// the process.
struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static SHARDS: OnceLock<Shards> = OnceLock::new();

fn shards() -> &'static Shards {
    SHARDS.get_or_init(|| {
        let wanted = std::env::var(CONN_THREADS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let handles = (0..wanted)
            .filter_map(|i| match start(i) {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a connection thread");
                    None
                }
            })
            .collect();
        Shards {
            handles,
            next: AtomicUsize::new(0),
        }
    })
}

/// Connection thread `i`: its runtime runs until the process ends.
fn start(i: usize) -> io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(format!("remora-conn-{i}"))
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// Run `serve` on the next connection thread with `accepted` (or on the
/// current runtime when there is no such thread).
pub(super) fn spawn<F, Fut>(accepted: Accepted, serve: F)
where
    F: FnOnce(Accepted) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let shards = shards();
    if shards.handles.is_empty() {
        tokio::spawn(serve(accepted));
        return;
    }
    let conn = accepted.conn;
    let detached = match Detached::new(accepted) {
        Ok(detached) => detached,
        Err(e) => {
            // Dropping the peer's socket tells it, as a failed accept would.
            tracing::warn!(%conn, error = %e, "cannot hand a connection to its thread");
            return;
        }
    };
    let i = shards.next.fetch_add(1, Ordering::Relaxed) % shards.handles.len();
    shards.handles[i].spawn(async move {
        match detached.attach() {
            Ok(accepted) => serve(accepted).await,
            Err(e) => tracing::warn!(%conn, error = %e, "cannot register a connection"),
        }
    });
}

/// An accepted connection between runtimes: its socket registered with
/// none.
struct Detached {
    conn: ConnectionId,
    port: RemotePort,
    peer: SocketAddr,
    local: SocketAddr,
    stream: std::net::TcpStream,
    permit: OwnedSemaphorePermit,
}

impl Detached {
    fn new(accepted: Accepted) -> io::Result<Detached> {
        let Accepted {
            conn,
            port,
            peer,
            local,
            stream,
            permit,
        } = accepted;
        Ok(Detached {
            conn,
            port,
            peer,
            local,
            stream: stream.into_std()?,
            permit,
        })
    }

    /// Registered with the current runtime again.
    fn attach(self) -> io::Result<Accepted> {
        Ok(Accepted {
            conn: self.conn,
            port: self.port,
            peer: self.peer,
            local: self.local,
            stream: tokio::net::TcpStream::from_std(self.stream)?,
            permit: self.permit,
        })
    }
}
