//! The local fast path's client (see [`remora_protocol::broker`]): when the
//! agent shares this machine, read-only opens of the target's regular files
//! and outgoing TCP connects get a real descriptor from inside the target,
//! received with `SCM_RIGHTS`, instead of a snapshot or an intercepted
//! socket.
//!
//! Blocking connections straight to the agent's broker socket
//! ([`BROKER_PATH_ENV`]), a small per-process pool like [`crate::session`]'s:
//! each call checks one out, so a slow connect in one thread does not hold
//! up another thread's open. When every connection is busy, or the broker
//! cannot be reached, the caller takes the proxied path
//! ([`HookError::Bypass`]); a broker that refused or broke once is not
//! tried again by this process.
//!
//! Read-only opens first try [`open_direct`]: under the broker's root
//! directory, handed over once per process image
//! ([`BrokerRequest::OpenRoot`]), with no round trip at all
//! ([`remora_broker_client::root`] says when the broker is asked anyway).

use crate::error::{HookError, HookResult};
use crate::guard::DetourGuard;
use crate::sync::ForkMutex;
use remora_broker_client::root::Direct;
use remora_protocol::broker::{BROKER_DIRECT_ENV, BROKER_PATH_ENV, BrokerReply, BrokerRequest};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Broker connections a process opens at most.
pub const MAX_CONNECTIONS: usize = 4;
/// Broker connections live at or above this fd, like the session's.
const BROKER_FD_FLOOR: i32 = 720;

/// Where the broker listens and the token it wants (fixed at start).
#[derive(Debug)]
struct Endpoint {
    path: std::path::PathBuf,
    token: String,
}

static ENDPOINT: OnceLock<Option<Endpoint>> = OnceLock::new();
/// Set once the broker refused or broke: the proxied path from then on.
static DISABLED: AtomicBool = AtomicBool::new(false);
/// fds of this process's broker connections, guarded against the app's `close`.
static BROKER_FDS: [AtomicI32; MAX_CONNECTIONS] = [const { AtomicI32::new(-1) }; MAX_CONNECTIONS];
/// The broker's root directory ([`open_direct`]): an `O_PATH` fd at or
/// above [`BROKER_FD_FLOOR`], close-on-exec and guarded like the
/// connections; -1 until fetched. Never closed: a forked child shares it
/// (it is the same target's root), `exec` drops it.
static ROOT_FD: AtomicI32 = AtomicI32::new(-1);
/// Set when direct opens are off ([`BROKER_DIRECT_ENV`]), unsupported here,
/// or the broker gave no root: every open asks the broker.
static DIRECT_OFF: AtomicBool = AtomicBool::new(false);

/// Idle connections of this process. A leaf lock (see [`crate::sync`]).
pub(crate) static POOL: ForkMutex<Pool> = ForkMutex::new(Pool {
    pid: 0,
    idle: Vec::new(),
    open: 0,
});

#[derive(Debug)]
pub(crate) struct Pool {
    pid: u32,
    idle: Vec<Conn>,
    open: usize,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    slot: usize,
}

/// Read the broker's path from the environment; called once at start.
pub fn configure(token: &str) {
    let endpoint = std::env::var_os(BROKER_PATH_ENV)
        .filter(|p| !p.is_empty())
        .map(|path| Endpoint {
            path: path.into(),
            token: token.to_owned(),
        });
    let _ = ENDPOINT.set(endpoint);
    if std::env::var(BROKER_DIRECT_ENV).is_ok_and(|v| remora_protocol::broker::turned_off(&v)) {
        DIRECT_OFF.store(true, Ordering::Relaxed);
    }
}

/// Whether this process may try the fast path at all.
pub fn available() -> bool {
    !DISABLED.load(Ordering::Relaxed) && matches!(ENDPOINT.get(), Some(Some(_)))
}

/// Whether `fd` is one of the layer's broker connections.
pub fn is_broker_fd(fd: i32) -> bool {
    fd >= BROKER_FD_FLOOR
        && (BROKER_FDS.iter().any(|s| s.load(Ordering::Relaxed) == fd)
            || ROOT_FD.load(Ordering::Relaxed) == fd)
}

/// The fds of the layer's broker connections and root, which `close_range`
/// spares.
pub fn broker_fds() -> Vec<i32> {
    BROKER_FDS
        .iter()
        .chain(std::iter::once(&ROOT_FD))
        .map(|fd| fd.load(Ordering::Relaxed))
        .filter(|fd| *fd >= BROKER_FD_FLOOR)
        .collect()
}

/// Open the target's `path` read-only without asking the broker, under its
/// root (see [`remora_broker_client::root`]). `None`: ask the broker (no
/// fast path, direct opens off, or an answer only the broker can give).
pub fn open_direct(path: &str, nofollow: bool, cloexec: bool) -> Option<Direct> {
    if DIRECT_OFF.load(Ordering::Relaxed) || !available() {
        return None;
    }
    let root = match ROOT_FD.load(Ordering::Acquire) {
        -1 => fetch_root()?,
        fd => fd,
    };
    let _g = DetourGuard::enter();
    // SAFETY: the root fd is never closed while this process image lives
    // (the app cannot: `close`, `close_range` and `dup2` spare it).
    let root = unsafe { BorrowedFd::borrow_raw(root) };
    match remora_broker_client::root::open_read(root, path, nofollow, cloexec) {
        Direct::AskBroker => None,
        Direct::Unsupported => {
            DIRECT_OFF.store(true, Ordering::Relaxed);
            None
        }
        direct => Some(direct),
    }
}

/// Ask the broker for its root once; `None` (and direct opens off) when it
/// gives none.
fn fetch_root() -> Option<i32> {
    let received = match call(&BrokerRequest::OpenRoot, true) {
        Ok(received) => received,
        // Busy or gone: this open asks the broker (or the proxied path).
        Err(_) => return None,
    };
    let fd = match received {
        Received {
            reply: BrokerReply::Opened,
            fd: Some(fd),
        } => fd,
        Received { fd, .. } => {
            if let Some(fd) = fd {
                // SAFETY: an unexpected descriptor we own.
                unsafe { libc::close(fd) };
            }
            DIRECT_OFF.store(true, Ordering::Relaxed);
            return None;
        }
    };
    let _g = DetourGuard::enter();
    // SAFETY: duplicating the descriptor we own to a high number.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, BROKER_FD_FLOOR) };
    // SAFETY: closing the received copy we own.
    unsafe { libc::close(fd) };
    if high < 0 {
        DIRECT_OFF.store(true, Ordering::Relaxed);
        return None;
    }
    match ROOT_FD.compare_exchange(-1, high, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(high),
        Err(first) => {
            // Another thread fetched it first: use that one.
            // SAFETY: closing our own duplicate, never published.
            unsafe { libc::close(high) };
            Some(first)
        }
    }
}

/// What a successful broker call handed over.
#[derive(Debug)]
pub struct Received {
    pub reply: BrokerReply,
    /// The descriptor attached to the reply, if any (at the lowest free
    /// number, as `open` or `socket` would have given).
    pub fd: Option<libc::c_int>,
}

/// Ask the broker; `cloexec` sets close-on-exec on a received descriptor.
///
/// # Errors
/// `Bypass` when the fast path is unavailable (never configured, refused,
/// broken, or every connection busy): the caller takes the proxied path.
pub fn call(request: &BrokerRequest, cloexec: bool) -> HookResult<Received> {
    if !available() {
        return Err(HookError::Bypass("no local fast path"));
    }
    let mut conn = checkout()?;
    match conn.roundtrip(request, cloexec) {
        Ok(received) => {
            checkin(conn);
            Ok(received)
        }
        Err(reason) => {
            crate::session::warn(&format!(
                "the local fast path broke ({reason}); using the proxied path from now on"
            ));
            DISABLED.store(true, Ordering::Relaxed);
            conn.discard();
            release_slot();
            Err(HookError::Bypass("local fast path broke"))
        }
    }
}

fn checkout() -> HookResult<Conn> {
    let Some(Some(endpoint)) = ENDPOINT.get() else {
        return Err(HookError::Bypass("no local fast path"));
    };
    let pid = std::process::id();
    let inherited = {
        let mut pool = POOL.lock();
        let inherited = if pool.pid != pid {
            // A forked child: the parent's connections are not ours.
            pool.pid = pid;
            pool.open = 0;
            for fd in &BROKER_FDS {
                fd.store(-1, Ordering::Relaxed);
            }
            std::mem::take(&mut pool.idle)
        } else {
            Vec::new()
        };
        if inherited.is_empty() {
            if let Some(conn) = pool.idle.pop() {
                return Ok(conn);
            }
            if pool.open >= MAX_CONNECTIONS {
                return Err(HookError::Bypass("every fast-path connection is busy"));
            }
            pool.open += 1;
        }
        inherited
    };
    if !inherited.is_empty() {
        for conn in inherited {
            conn.close_copy();
        }
        return checkout();
    }
    match Conn::connect(endpoint) {
        Ok(conn) => Ok(conn),
        Err(reason) => {
            release_slot();
            if !DISABLED.swap(true, Ordering::Relaxed) {
                crate::session::warn(&format!(
                    "no local fast path ({reason}); using the proxied path"
                ));
            }
            Err(HookError::Bypass("local fast path unreachable"))
        }
    }
}

fn checkin(conn: Conn) {
    let mut pool = POOL.lock();
    if pool.pid == std::process::id() {
        pool.idle.push(conn);
    } else {
        drop(pool);
        conn.close_copy();
    }
}

fn release_slot() {
    let mut pool = POOL.lock();
    pool.open = pool.open.saturating_sub(1);
}

impl Conn {
    fn connect(endpoint: &Endpoint) -> Result<Conn, String> {
        let _g = DetourGuard::enter();
        let stream = remora_broker_client::connect(&endpoint.path)?;
        let stream = move_high(stream);
        stream
            .set_read_timeout(Some(crate::session::reply_timeout()))
            .ok();
        remora_broker_client::hello(&stream, &endpoint.token)?;
        let fd = stream.as_raw_fd();
        let slot = BROKER_FDS
            .iter()
            .position(|s| {
                s.compare_exchange(-1, fd, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            })
            .unwrap_or(0);
        Ok(Conn { stream, slot })
    }

    fn roundtrip(&mut self, request: &BrokerRequest, cloexec: bool) -> Result<Received, String> {
        let _g = DetourGuard::enter();
        let (reply, fd) = remora_broker_client::roundtrip(&self.stream, request, cloexec)?;
        Ok(Received {
            reply,
            fd: fd.map(IntoRawFd::into_raw_fd),
        })
    }

    /// Close a broken connection of this process.
    fn discard(self) {
        let fd = self.stream.into_raw_fd();
        let _ =
            BROKER_FDS[self.slot].compare_exchange(fd, -1, Ordering::Relaxed, Ordering::Relaxed);
        // SAFETY: closing our own connection; an error (already closed) is ignored.
        unsafe { libc::close(fd) };
    }

    /// Close a copy inherited across `fork` (the parent keeps its own).
    fn close_copy(self) {
        let fd = self.stream.into_raw_fd();
        // SAFETY: closing the child's copy of the parent's connection.
        unsafe { libc::close(fd) };
    }
}

/// Re-home a socket at a high fd with close-on-exec.
fn move_high(stream: UnixStream) -> UnixStream {
    let fd = stream.as_raw_fd();
    // SAFETY: duplicating an fd we own; on failure we keep the original.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, BROKER_FD_FLOOR) };
    if high < 0 {
        return stream;
    }
    drop(stream);
    // SAFETY: `high` is a fresh fd we own exclusively.
    unsafe { UnixStream::from_raw_fd(high) }
}

/// A reply's descriptor or the reply's failure, for callers that expect one.
pub fn expect_fd(received: Received) -> HookResult<(BrokerReply, libc::c_int)> {
    match received {
        Received {
            reply: BrokerReply::Failed(e),
            fd,
        } => {
            if let Some(fd) = fd {
                // SAFETY: an unexpected descriptor we own.
                unsafe { libc::close(fd) };
            }
            Err(HookError::Remote(e))
        }
        Received {
            reply,
            fd: Some(fd),
        } => Ok((reply, fd)),
        Received { .. } => Err(HookError::Bypass("no descriptor in the reply")),
    }
}
