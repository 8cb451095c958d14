//! The local fast path ("fd broker", see [`remora_protocol::broker`]): a unix
//! socket on which layers of the same run ask for real descriptors opened or
//! connected inside the target, handed over with `SCM_RIGHTS` instead of
//! proxied byte by byte.
//!
//! Only started when the agent shares the machine with the run and no
//! operator sits in between (`remora-agent --fd-broker PATH`, token in
//! [`BROKER_TOKEN_ENV`]). Each connection gets its own thread, which enters
//! the target's mount, UTS and network namespaces once (like a namespace
//! worker) and then answers that connection's requests in order.
//!
//! # Guarantees
//! The CLI gives an abstract name (`@…`, see
//! [`remora_protocol::broker::socket_addr`]), which no file backs: nothing is
//! left behind however the agent ends. A socket file given instead is
//! removed when the [`Broker`] is dropped. A connection that does not
//! present the token gets nothing.

use crate::namespace::TargetNamespaces;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use remora_protocol::broker::{
    BROKER_VERSION, BrokerHello, BrokerHelloReply, BrokerReply, BrokerRequest,
};
use remora_protocol::{RemoteError, SessionToken, codec};
use std::io::{IoSlice, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use remora_protocol::broker::BROKER_TOKEN_ENV;

/// How long a connect from inside the target may take (as the proxied path).
const CONNECT_TIMEOUT: Duration = crate::net::CONNECT_TIMEOUT;

/// A listening broker; dropping it stops accepting and removes the socket.
#[derive(Debug)]
pub struct Broker {
    path: PathBuf,
    stopped: Arc<AtomicBool>,
}

impl Broker {
    /// Bind `path` (replacing a stale socket there) and serve in the background.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn start(
        path: &Path,
        token: SessionToken,
        ns: Arc<dyn TargetNamespaces>,
    ) -> std::io::Result<Broker> {
        let addr = remora_protocol::broker::socket_addr(path)?;
        let file = remora_protocol::broker::abstract_name(path).is_none();
        if file {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind_addr(&addr)?;
        if file {
            // The run's program may not be root; the token is what protects it.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        }
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        std::thread::Builder::new()
            .name("remora-broker".into())
            .spawn(move || accept_loop(&listener, &token, &ns, &flag))?;
        tracing::info!(path = %path.display(), "fd broker listening (local fast path)");
        Ok(Broker {
            path: path.to_owned(),
            stopped,
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        if let Ok(addr) = remora_protocol::broker::socket_addr(&self.path) {
            let _ = UnixStream::connect_addr(&addr);
        }
        if remora_protocol::broker::abstract_name(&self.path).is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn accept_loop(
    listener: &UnixListener,
    token: &SessionToken,
    ns: &Arc<dyn TargetNamespaces>,
    stopped: &AtomicBool,
) {
    for conn in listener.incoming() {
        if stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let token = token.clone();
        let ns = ns.clone();
        let spawned = std::thread::Builder::new()
            .name("remora-broker-conn".into())
            .spawn(move || {
                if let Err(e) = serve(conn, &token, ns.as_ref()) {
                    tracing::debug!(error = %e, "fd broker connection ended");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start an fd broker thread");
        }
    }
}

fn serve(
    mut conn: UnixStream,
    token: &SessionToken,
    ns: &dyn TargetNamespaces,
) -> Result<(), remora_protocol::CodecError> {
    let hello: BrokerHello = codec::read_frame(&mut conn)?;
    let refused = if hello.version != BROKER_VERSION {
        Some(format!(
            "fd broker version {} is not the agent's {BROKER_VERSION}",
            hello.version
        ))
    } else if !hello.token.matches(token) {
        Some("invalid fd broker token".to_owned())
    } else {
        ns.enter_files()
            .err()
            .map(|e| format!("cannot enter the target: {e}"))
    };
    if let Some(reason) = refused {
        tracing::warn!(%reason, "fd broker connection refused");
        return codec::write_frame(&mut conn, &BrokerHelloReply::Rejected { reason });
    }
    codec::write_frame(&mut conn, &BrokerHelloReply::Accepted)?;
    loop {
        let request: BrokerRequest = match codec::read_frame(&mut conn) {
            Ok(request) => request,
            Err(remora_protocol::CodecError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        tracing::debug!(?request, "fd broker request");
        let (reply, fd) = match answer(request) {
            Ok((reply, fd)) => (reply, Some(fd)),
            Err(reply) => (reply, None),
        };
        send(&mut conn, &reply, fd.as_ref())?;
    }
}

/// The reply and the descriptor to hand over, or a reply without one.
fn answer(request: BrokerRequest) -> Result<(BrokerReply, OwnedFd), BrokerReply> {
    match request {
        BrokerRequest::OpenRead { path, nofollow } => open_read(&path, nofollow),
        BrokerRequest::ConnectTcp { remote } => connect_tcp(remote),
        BrokerRequest::OpenRoot => open_root(),
    }
}

/// This thread's root directory (the target's, entered in [`serve`]) as an
/// `O_PATH` descriptor: the client resolves paths under it itself
/// (`remora_broker_client::root`), with its own credentials, and comes back
/// with [`BrokerRequest::OpenRead`] whenever that cannot give this thread's
/// answer. It grants nothing [`open_read`] does not: the agent opens any
/// file of the target for a client with the token.
fn open_root() -> Result<(BrokerReply, OwnedFd), BrokerReply> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    match open("/", flags, Mode::empty()) {
        Ok(fd) => Ok((BrokerReply::Opened, fd)),
        Err(errno) => Err(BrokerReply::Failed(RemoteError::from_io(
            "open the target's root".to_owned(),
            &std::io::Error::from(errno),
        ))),
    }
}

fn open_read(path: &str, nofollow: bool) -> Result<(BrokerReply, OwnedFd), BrokerReply> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
    use nix::sys::stat::{Mode, SFlag, fstat};
    let failed = |errno: nix::errno::Errno| {
        BrokerReply::Failed(RemoteError::from_io(
            format!("open {path}"),
            &std::io::Error::from(errno),
        ))
    };
    // Non-blocking, so a FIFO cannot stall the thread; regular files ignore it.
    let mut flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    if nofollow {
        flags |= OFlag::O_NOFOLLOW;
    }
    let fd: OwnedFd = open(path, flags, Mode::empty()).map_err(failed)?;
    let stat = fstat(&fd).map_err(failed)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(BrokerReply::NotRegular);
    }
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_RDONLY)).map_err(failed)?;
    Ok((BrokerReply::Opened, fd))
}

fn connect_tcp(remote: SocketAddr) -> Result<(BrokerReply, OwnedFd), BrokerReply> {
    let failed = |e: std::io::Error| {
        BrokerReply::Failed(RemoteError::from_io(format!("connect {remote}"), &e))
    };
    let stream = TcpStream::connect_timeout(&remote, CONNECT_TIMEOUT).map_err(failed)?;
    let local = stream.local_addr().map_err(failed)?;
    Ok((BrokerReply::Connected { local }, OwnedFd::from(stream)))
}

/// Write `reply` as one frame, with `fd` attached to its first byte.
fn send(
    conn: &mut UnixStream,
    reply: &BrokerReply,
    fd: Option<&OwnedFd>,
) -> Result<(), remora_protocol::CodecError> {
    let mut frame = Vec::new();
    codec::encode_frame(reply, &mut frame)?;
    let Some(fd) = fd else {
        conn.write_all(&frame)
            .map_err(remora_protocol::CodecError::Io)?;
        return Ok(());
    };
    let fds = [fd.as_fd().as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = loop {
        match sendmsg::<()>(
            conn.as_raw_fd(),
            &[IoSlice::new(&frame)],
            &cmsg,
            MsgFlags::empty(),
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    }
    .map_err(|e| remora_protocol::CodecError::Io(e.into()))?;
    conn.write_all(&frame[sent..])
        .map_err(remora_protocol::CodecError::Io)
}

#[cfg(test)]
mod tests;
