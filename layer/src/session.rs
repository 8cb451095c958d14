//! The layer's one blocking connection to its intproxy.
//!
//! Requests are written and their reply read while holding one mutex, so a
//! reply always belongs to the request just sent (the intproxy answers in
//! order per connection). A process that forked gets its own connection on
//! first use (its pid differs from the connection's); `pthread_atfork`
//! handlers keep the mutex consistent across `fork`.

use crate::error::{HookError, HookResult};
use crate::guard::DetourGuard;
use parking_lot::Mutex;
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
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// The connection is moved to an fd at or above this, out of the way of
/// programs that assume small fd numbers are theirs.
const SESSION_FD_FLOOR: i32 = 700;
/// No remote call may block longer than this; the intproxy answers failures
/// itself long before, so hitting it means the intproxy is stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Where and how to reach the intproxy (fixed at start, from the environment).
#[derive(Debug, Clone)]
pub struct ProxyEndpoint {
    pub addr: SocketAddr,
    pub token: String,
}

static ENDPOINT: OnceLock<ProxyEndpoint> = OnceLock::new();
static CONN: Mutex<Option<Conn>> = Mutex::new(None);
/// fd of the current connection, guarded against `close`/`dup2` by the app.
static SESSION_FD: AtomicI32 = AtomicI32::new(-1);
static WARNED_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
struct Conn {
    reader: BufReader<TcpStream>,
    pid: u32,
    next_id: u64,
}

/// Record the endpoint; called once from the constructor.
pub fn configure(endpoint: ProxyEndpoint) {
    let _ = ENDPOINT.set(endpoint);
    // SAFETY: registering plain extern "C" functions without arguments.
    unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
}

/// The layer's connection fd, if connected.
pub fn session_fd() -> Option<i32> {
    let fd = SESSION_FD.load(Ordering::Relaxed);
    (fd >= 0).then_some(fd)
}

/// Whether `fd` is the layer's own connection (the app may not close it).
pub fn is_session_fd(fd: i32) -> bool {
    fd >= 0 && SESSION_FD.load(Ordering::Relaxed) == fd
}

extern "C" fn before_fork() {
    // Hold the lock across fork so the child never inherits it mid-request.
    std::mem::forget(CONN.lock());
}

extern "C" fn after_fork() {
    // SAFETY: before_fork locked it on this thread and forgot the guard.
    unsafe { CONN.force_unlock() };
}

/// Open this process's session now, so the intproxy knows the process is
/// alive from its first instant (it exits when no process is left).
pub fn connect_now() {
    let Some(endpoint) = ENDPOINT.get() else {
        return;
    };
    let mut guard = CONN.lock();
    if guard.is_none() {
        match Conn::connect(endpoint, std::process::id()) {
            Ok(conn) => *guard = Some(conn),
            Err(e) => {
                drop(guard);
                let _ = unavailable(&e);
            }
        }
    }
}

/// Send one request and wait for its reply.
pub fn request(req: LayerRequest) -> HookResult<LayerResponse> {
    let Some(endpoint) = ENDPOINT.get() else {
        return Err(HookError::Bypass("layer not configured"));
    };
    let mut guard = CONN.lock();
    let pid = std::process::id();
    if guard.as_ref().is_none_or(|c| c.pid != pid) {
        // Dropping a connection inherited over fork closes only our copy.
        *guard = None;
        match Conn::connect(endpoint, pid) {
            Ok(conn) => *guard = Some(conn),
            Err(e) => return Err(unavailable(&e)),
        }
    }
    let conn = guard.as_mut().expect("connection was just established");
    match conn.roundtrip(req) {
        Ok(result) => result.map_err(HookError::Remote),
        Err(e) => {
            if let Some(conn) = guard.take() {
                conn.discard();
            }
            SESSION_FD.store(-1, Ordering::Relaxed);
            Err(unavailable(&e))
        }
    }
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
        let fd = self.reader.into_inner().into_raw_fd();
        // SAFETY: closing a raw fd; an error (already closed) is ignored.
        unsafe { libc::close(fd) };
    }

    fn connect(endpoint: &ProxyEndpoint, pid: u32) -> Result<Conn, String> {
        let stream = TcpStream::connect_timeout(&endpoint.addr, Duration::from_secs(5))
            .map_err(|e| format!("connecting to {}: {e}", endpoint.addr))?;
        let stream = move_high(stream);
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).ok();
        SESSION_FD.store(stream.as_raw_fd(), Ordering::Relaxed);
        let mut conn = Conn {
            reader: BufReader::new(stream),
            pid,
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
            Ok(LayerHelloReply::Accepted { .. }) => Ok(conn),
            Ok(LayerHelloReply::Rejected { reason }) => Err(format!("intproxy refused: {reason}")),
            Err(e) => Err(format!("handshake with intproxy: {e}")),
        }
    }

    fn roundtrip(
        &mut self,
        request: LayerRequest,
    ) -> Result<Result<LayerResponse, RemoteError>, String> {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        // write_frame sends header and payload in one write and flushes.
        codec::write_frame(
            &mut self.reader.get_ref(),
            &LayerMessage::Request { id, request },
        )
        .map_err(|e| e.to_string())?;
        loop {
            match codec::read_frame::<_, ProxyMessage>(&mut self.reader) {
                Ok(ProxyMessage::Response { id: got, result }) if got == id => return Ok(result),
                Ok(ProxyMessage::Response { id: got, .. }) => {
                    return Err(format!("reply {got} does not match request {id}"));
                }
                Ok(ProxyMessage::Log { level, message }) => {
                    let prefix = match level {
                        LogLevel::Info => "",
                        LogLevel::Warn => "warning: ",
                        LogLevel::Error => "error: ",
                    };
                    warn(&format!("{prefix}{message}"));
                }
                Err(e) => return Err(e.to_string()),
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
