//! The layer's blocking connections to its intproxy: a per-process pool.
//!
//! Each remote call checks a connection out of the pool, writes its request,
//! reads its reply and checks the connection back in, so calls from
//! different threads proceed concurrently (a slow DNS lookup holds one
//! connection, not the process). The pool opens connections on demand, up to
//! [`MAX_CONNECTIONS`], each with its own handshake; the intproxy groups them
//! by pid. No lock is held across a round trip: [`POOL`]'s lock only guards
//! the idle list. A forked child (its pid differs from the pool's) never uses
//! the parent's connections: it forgets them and opens its own.

use crate::error::{HookError, HookResult};
use crate::guard::DetourGuard;
use crate::sync::ForkMutex;
use remora_protocol::codec;
use remora_protocol::messages::{
    LayerHello, LayerHelloReply, LayerMessage, LayerRequest, LayerResponse, ProxyMessage,
};
use remora_protocol::session::LogLevel;
use remora_protocol::{ErrorCode, PROTOCOL_VERSION, RemoteError, RequestId, SessionToken};
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::time::Duration;

/// The connection is moved to an fd at or above this, out of the way of
/// programs that assume small fd numbers are theirs.
const SESSION_FD_FLOOR: i32 = 700;
/// No remote call may block longer than this by default; the intproxy
/// answers failures itself long before, so hitting it means the intproxy or
/// the agent is stuck (or the call is legitimately slow: then raise it).
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// Environment variable overriding the reply timeout, in seconds.
pub const REPLY_TIMEOUT_ENV: &str = "REMORA_REPLY_TIMEOUT";

/// Why a round trip failed.
#[derive(Debug)]
enum RoundtripError {
    /// The reply did not come within the reply timeout.
    TimedOut,
    Other(String),
}

/// Where and how to reach the intproxy (fixed at start, from the environment).
#[derive(Debug, Clone)]
pub struct ProxyEndpoint {
    pub addr: SocketAddr,
    pub token: String,
    /// How long one remote call may wait for its reply.
    pub reply_timeout: Duration,
}

/// Connections a process opens at most; further callers wait for one.
pub const MAX_CONNECTIONS: usize = 8;

static ENDPOINT: OnceLock<ProxyEndpoint> = OnceLock::new();

/// Idle connections of this process. A leaf lock (see [`crate::sync`]).
pub(crate) static POOL: ForkMutex<Pool> = ForkMutex::new(Pool {
    pid: 0,
    idle: Vec::new(),
    open: 0,
});
/// Bumped whenever a connection is checked in or a slot frees: the futex
/// word callers wait on when all [`MAX_CONNECTIONS`] are busy.
static POOL_FREED: AtomicU32 = AtomicU32::new(0);
/// fds of this process's connections, guarded against `close`/`dup2` by the app.
static SESSION_FDS: [AtomicI32; MAX_CONNECTIONS] = [const { AtomicI32::new(-1) }; MAX_CONNECTIONS];
/// No session fd is below this (the lowest ever registered): lets `close` of
/// an ordinary fd skip scanning [`SESSION_FDS`].
static SESSION_FD_MIN: AtomicI32 = AtomicI32::new(i32::MAX);
static WARNED_UNAVAILABLE: AtomicBool = AtomicBool::new(false);
/// The protocol version the intproxy accepted (0 before the first handshake).
static NEGOTIATED: AtomicU32 = AtomicU32::new(0);

/// The connection pool's book-keeping.
#[derive(Debug)]
pub(crate) struct Pool {
    /// The process the connections belong to (0 before the first).
    pid: u32,
    idle: Vec<Conn>,
    /// Connections open (idle or checked out), at most [`MAX_CONNECTIONS`].
    open: usize,
}

#[derive(Debug)]
struct Conn {
    reader: BufReader<TcpStream>,
    /// Index in [`SESSION_FDS`].
    slot: usize,
    next_id: u64,
}

/// Record the endpoint; called once from the constructor.
pub fn configure(endpoint: ProxyEndpoint) {
    let _ = ENDPOINT.set(endpoint);
    crate::process::install_fork_handlers();
}

/// The fds of this process's connections.
pub fn session_fds() -> Vec<i32> {
    SESSION_FDS
        .iter()
        .map(|fd| fd.load(Ordering::Relaxed))
        .filter(|fd| *fd >= 0)
        .collect()
}

/// The layer's first connection fd, if connected.
pub fn session_fd() -> Option<i32> {
    session_fds().first().copied()
}

/// Whether `fd` is one of the layer's own connections (the app may not close it).
pub fn is_session_fd(fd: i32) -> bool {
    (fd >= SESSION_FD_MIN.load(Ordering::Relaxed)
        && SESSION_FDS.iter().any(|s| s.load(Ordering::Relaxed) == fd))
        || crate::broker::is_broker_fd(fd)
}

/// Open this process's session now, so the intproxy knows the process is
/// alive from its first instant (it exits when no process is left).
pub fn connect_now() {
    if ENDPOINT.get().is_none() {
        return;
    }
    match checkout() {
        Ok(conn) => checkin(conn),
        Err(e) => drop(e),
    }
}

/// Send one request and wait for its reply.
pub fn request(req: LayerRequest) -> HookResult<LayerResponse> {
    let Some(endpoint) = ENDPOINT.get() else {
        return Err(HookError::Bypass("layer not configured"));
    };
    let mut conn = checkout()?;
    match conn.roundtrip(req) {
        Ok(result) => {
            checkin(conn);
            result.map_err(HookError::Remote)
        }
        Err(e) => {
            let reason = match e {
                RoundtripError::TimedOut => timeout_message(endpoint.reply_timeout),
                RoundtripError::Other(e) => e,
            };
            conn.discard();
            free_slot();
            Err(unavailable(&reason))
        }
    }
}

/// Send `requests` over up to `depth` pool connections at once (the
/// intproxy and the agent serve each connection's request concurrently) and
/// hand each reply to `on_reply` in request order; `on_reply` returning
/// `false` stops sending (replies already asked for are still read).
///
/// # Errors
/// The first failure of a request or of `on_reply`.
pub fn remote_pipelined(
    requests: impl IntoIterator<Item = remora_protocol::Request>,
    depth: usize,
    mut on_reply: impl FnMut(remora_protocol::Response) -> HookResult<bool>,
) -> HookResult<()> {
    let Some(endpoint) = ENDPOINT.get() else {
        return Err(HookError::Bypass("layer not configured"));
    };
    let mut requests = requests.into_iter();
    let mut inflight: std::collections::VecDeque<(Conn, RequestId)> =
        std::collections::VecDeque::new();
    let mut outcome: HookResult<()> = Ok(());
    let mut sending = true;
    // Set once `on_reply` said stop: later replies are read, not handed on.
    let mut stopped = false;
    loop {
        while sending && inflight.len() < depth.max(1) {
            let conn = if inflight.is_empty() {
                match checkout() {
                    Ok(conn) => Some(conn),
                    Err(e) => {
                        outcome = Err(e);
                        sending = false;
                        None
                    }
                }
            } else {
                try_checkout(endpoint)
            };
            let Some(mut conn) = conn else { break };
            let Some(request) = requests.next() else {
                checkin(conn);
                sending = false;
                break;
            };
            match conn.send(LayerRequest::Remote(request)) {
                Ok(id) => inflight.push_back((conn, id)),
                Err(e) => {
                    conn.discard();
                    free_slot();
                    outcome = Err(unavailable(&e));
                    sending = false;
                }
            }
        }
        let Some((mut conn, id)) = inflight.pop_front() else {
            return outcome;
        };
        match conn.receive(id) {
            Ok(result) => {
                checkin(conn);
                if outcome.is_err() || stopped {
                    continue;
                }
                let step = match result {
                    Ok(LayerResponse::Remote(response)) => on_reply(response),
                    Ok(other) => Err(protocol_violation(&other)),
                    Err(e) => Err(HookError::Remote(e)),
                };
                match step {
                    Ok(true) => {}
                    Ok(false) => {
                        sending = false;
                        stopped = true;
                    }
                    Err(e) => {
                        outcome = Err(e);
                        sending = false;
                    }
                }
            }
            Err(e) => {
                let reason = match e {
                    RoundtripError::TimedOut => timeout_message(endpoint.reply_timeout),
                    RoundtripError::Other(e) => e,
                };
                conn.discard();
                free_slot();
                if outcome.is_ok() {
                    outcome = Err(unavailable(&reason));
                }
                sending = false;
            }
        }
    }
}

/// An idle connection or a new one, without waiting; `None` when all
/// [`MAX_CONNECTIONS`] are busy (or the pool belongs to a parent process).
fn try_checkout(endpoint: &ProxyEndpoint) -> Option<Conn> {
    let pid = std::process::id();
    {
        let mut pool = POOL.lock();
        if pool.pid != pid {
            return None;
        }
        if let Some(conn) = pool.idle.pop() {
            return Some(conn);
        }
        if pool.open >= MAX_CONNECTIONS {
            return None;
        }
        pool.open += 1;
    }
    match Conn::connect(endpoint, pid) {
        Ok(conn) => Some(conn),
        Err(_) => {
            free_slot();
            None
        }
    }
}

/// The reply timeout of this process's remote calls.
pub fn reply_timeout() -> Duration {
    ENDPOINT
        .get()
        .map_or(DEFAULT_REPLY_TIMEOUT, |e| e.reply_timeout)
}

/// Whether the intproxy understands the layer requests of `capability`
/// (the version it accepted implies them; connects first if needed).
pub fn intproxy_supports(capability: remora_protocol::Capabilities) -> bool {
    if NEGOTIATED.load(Ordering::Relaxed) == 0 {
        connect_now();
    }
    let version = remora_protocol::ProtocolVersion(NEGOTIATED.load(Ordering::Relaxed));
    remora_protocol::Capabilities::implied_by(version).contains(capability)
}

/// What the user reads when a reply does not come in time.
pub fn timeout_message(timeout: Duration) -> String {
    format!(
        "no reply from remora's intproxy within {} s (the reply timeout; raise it with \
         layer.reply_timeout_secs in the config, {REPLY_TIMEOUT_ENV}=<seconds>, or \
         remora run --reply-timeout <seconds>)",
        timeout.as_secs()
    )
}

/// Take an idle connection, open a new one, or wait for one to come back.
fn checkout() -> HookResult<Conn> {
    let Some(endpoint) = ENDPOINT.get() else {
        return Err(HookError::Bypass("layer not configured"));
    };
    let pid = std::process::id();
    loop {
        let seen = POOL_FREED.load(Ordering::Acquire);
        let inherited = {
            let mut pool = POOL.lock();
            let inherited = if pool.pid != pid {
                // A forked child: the parent's connections are not ours to use.
                pool.pid = pid;
                pool.open = 0;
                for fd in &SESSION_FDS {
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
                if pool.open < MAX_CONNECTIONS {
                    pool.open += 1;
                    drop(pool);
                    return match Conn::connect(endpoint, pid) {
                        Ok(conn) => Ok(conn),
                        Err(e) => {
                            free_slot();
                            Err(unavailable(&e))
                        }
                    };
                }
            }
            inherited
        };
        if !inherited.is_empty() {
            // Closing our copies leaves the parent's connections intact.
            for conn in inherited {
                conn.discard();
            }
            continue;
        }
        crate::sync::futex_wait(&POOL_FREED, seen, None);
    }
}

/// Return a healthy connection to the pool.
fn checkin(conn: Conn) {
    let pid = std::process::id();
    {
        let mut pool = POOL.lock();
        if pool.pid == pid {
            pool.idle.push(conn);
            drop(pool);
            wake_one();
            return;
        }
    }
    // Checked out before a fork in which this thread is the child's only one:
    // the child's pool was reset meanwhile; this copy is the parent's.
    conn.discard();
}

/// A connection is gone for good: let a waiting caller open another.
fn free_slot() {
    {
        let mut pool = POOL.lock();
        pool.open = pool.open.saturating_sub(1);
    }
    wake_one();
}

fn wake_one() {
    POOL_FREED.fetch_add(1, Ordering::Release);
    crate::sync::futex_wake(&POOL_FREED, 1);
}

/// Convenience for `LayerRequest::Remote`.
pub fn remote(req: remora_protocol::Request) -> HookResult<remora_protocol::Response> {
    match request(LayerRequest::Remote(req))? {
        LayerResponse::Remote(resp) => Ok(resp),
        other => Err(protocol_violation(&other)),
    }
}

/// The intproxy answered with the wrong kind of reply.
pub fn protocol_violation(got: &dyn std::fmt::Debug) -> HookError {
    warn(&format!("unexpected reply from the intproxy: {got:?}"));
    HookError::Errno(libc::EIO)
}

fn unavailable(reason: &str) -> HookError {
    if !WARNED_UNAVAILABLE.swap(true, Ordering::Relaxed) {
        warn(&format!(
            "lost the connection to remora's intproxy ({reason}); remote calls now fail, \
             local ones keep working"
        ));
    }
    HookError::Remote(RemoteError::new(ErrorCode::Unavailable, reason.to_string()))
}

/// Print one line on the user's stderr, prefixed with `remora:`.
pub fn warn(msg: &str) {
    let _g = DetourGuard::enter();
    let line = format!("remora: {msg}\n");
    // SAFETY: writing an owned buffer to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

impl Conn {
    /// Close a broken connection without trusting that its fd is still ours
    /// (the app may have closed it behind our back, e.g. with a raw syscall):
    /// std would abort on `EBADF` when dropping an `OwnedFd`.
    fn discard(self) {
        use std::os::fd::IntoRawFd;
        let _ = SESSION_FDS[self.slot].compare_exchange(
            self.reader.get_ref().as_raw_fd(),
            -1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let fd = self.reader.into_inner().into_raw_fd();
        // SAFETY: closing a raw fd; an error (already closed) is ignored.
        unsafe { libc::close(fd) };
    }

    fn connect(endpoint: &ProxyEndpoint, pid: u32) -> Result<Conn, String> {
        let stream = TcpStream::connect_timeout(&endpoint.addr, Duration::from_secs(5))
            .map_err(|e| format!("connecting to {}: {e}", endpoint.addr))?;
        let stream = move_high(stream);
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(endpoint.reply_timeout)).ok();
        let mut conn = Conn {
            reader: BufReader::new(stream),
            slot: usize::MAX,
            next_id: 1,
        };
        let hello = LayerHello {
            version: PROTOCOL_VERSION,
            token: SessionToken(endpoint.token.clone()),
            pid,
            // SAFETY: getppid cannot fail.
            parent_pid: unsafe { libc::getppid() } as u32,
            program: std::env::args().next().unwrap_or_default(),
        };
        codec::write_frame(&mut conn.reader.get_ref(), &hello).map_err(|e| e.to_string())?;
        match codec::read_frame::<_, LayerHelloReply>(&mut conn.reader) {
            Ok(LayerHelloReply::Accepted { version }) => {
                NEGOTIATED.store(version.0, Ordering::Relaxed);
                // Only an accepted connection is protected from the app's
                // `close`: after a failed handshake the number is the app's.
                let fd = conn.reader.get_ref().as_raw_fd();
                SESSION_FD_MIN.fetch_min(fd, Ordering::Relaxed);
                match SESSION_FDS.iter().position(|s| {
                    s.compare_exchange(-1, fd, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                }) {
                    Some(slot) => conn.slot = slot,
                    None => conn.slot = 0,
                }
                Ok(conn)
            }
            Ok(LayerHelloReply::Rejected { reason }) => Err(format!("intproxy refused: {reason}")),
            Err(e) => Err(format!("handshake with intproxy: {e}")),
        }
    }

    fn roundtrip(
        &mut self,
        request: LayerRequest,
    ) -> Result<Result<LayerResponse, RemoteError>, RoundtripError> {
        let id = self.send(request).map_err(RoundtripError::Other)?;
        self.receive(id)
    }

    /// Write one request; its id, to [`Conn::receive`] the reply with.
    fn send(&mut self, request: LayerRequest) -> Result<RequestId, String> {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        // write_frame sends header and payload in one write and flushes.
        codec::write_frame(
            &mut self.reader.get_ref(),
            &LayerMessage::Request { id, request },
        )
        .map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Read the reply to request `id` (printing log lines that come first).
    fn receive(
        &mut self,
        id: RequestId,
    ) -> Result<Result<LayerResponse, RemoteError>, RoundtripError> {
        loop {
            match codec::read_frame::<_, ProxyMessage>(&mut self.reader) {
                Ok(ProxyMessage::Response { id: got, result }) if got == id => return Ok(result),
                Ok(ProxyMessage::Response { id: got, .. }) => {
                    return Err(RoundtripError::Other(format!(
                        "reply {got} does not match request {id}"
                    )));
                }
                Ok(ProxyMessage::Log { level, message }) => {
                    let prefix = match level {
                        LogLevel::Info => "",
                        LogLevel::Warn => "warning: ",
                        LogLevel::Error => "error: ",
                    };
                    warn(&format!("{prefix}{message}"));
                }
                Err(e) if is_timeout(&e) => return Err(RoundtripError::TimedOut),
                Err(e) => return Err(RoundtripError::Other(e.to_string())),
            }
        }
    }
}

/// Re-home a socket at a high fd with close-on-exec.
fn move_high(stream: TcpStream) -> TcpStream {
    let fd = stream.as_raw_fd();
    // SAFETY: duplicating an fd we own; on failure we keep the original.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, SESSION_FD_FLOOR) };
    if high < 0 {
        return stream;
    }
    drop(stream);
    // SAFETY: `high` is a fresh fd we own exclusively.
    unsafe { TcpStream::from_raw_fd(high) }
}

/// Whether a read failed because the socket's read timeout expired.
fn is_timeout(e: &remora_protocol::CodecError) -> bool {
    matches!(
        e,
        remora_protocol::CodecError::Io(io)
            if matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    )
}
