//! Incoming traffic (steal and mirror): `listen(2)` on a port the config
//! selects subscribes the target's matching port through the intproxy, as
//! the layer does (`layer/src/socket/incoming.rs`); the intproxy then dials
//! the program's real listener for each stolen or mirrored connection.
//! `accept`/`accept4` on a subscribed listener are done by the supervisor on
//! a copy of the listener so that the address the program gets is the real
//! peer (`IncomingPeer`), not the intproxy's loopback socket.

use crate::client::Client;
use crate::net::{Redirected, Replaced, encode, inode, pidfd_getfd, socket_kind};
use crate::notify::{Listener, Memory, Verdict};
use crate::{Call, Supervisor, lock};
use remora_config::{HttpFilter as ConfigFilter, IncomingMode as ConfigMode};
use remora_protocol::incoming::{HttpFilter, IncomingMode, RemotePort};
use remora_protocol::messages::{LayerRequest, LayerResponse};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// The config's HTTP filter in wire form (the layer's `wire_filter`: several
/// keys at one level all apply).
pub fn wire_filter(filter: &ConfigFilter) -> HttpFilter {
    let mut parts = Vec::new();
    if let Some(h) = &filter.header {
        parts.push(HttpFilter::Header(h.clone()));
    }
    if let Some(p) = &filter.path {
        parts.push(HttpFilter::Path(p.clone()));
    }
    if let Some(m) = &filter.method {
        parts.push(HttpFilter::Method(m.clone()));
    }
    if !filter.all_of.is_empty() {
        parts.push(HttpFilter::AllOf(
            filter.all_of.iter().map(wire_filter).collect(),
        ));
    }
    if !filter.any_of.is_empty() {
        parts.push(HttpFilter::AnyOf(
            filter.any_of.iter().map(wire_filter).collect(),
        ));
    }
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        HttpFilter::AllOf(parts)
    }
}

/// How often subscribed listeners are checked for being closed.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A subscribed listener: the process that listened, the target's port.
#[derive(Debug)]
pub struct Subscribed {
    tgid: u32,
    remote: RemotePort,
}

/// Whether process `tgid` still has the socket `ino` open (its fd table;
/// as with the layer, copies inherited by children do not count).
fn still_open(tgid: u32, ino: u64) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{tgid}/fd")) else {
        return false;
    };
    let want = format!("socket:[{ino}]");
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == want.as_str()))
}

/// `getsockname` (`peer == false`) or `getpeername` of `fd`.
fn sock_addr(fd: &OwnedFd, peer: bool) -> Option<SocketAddr> {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: storage/len are valid out-parameters.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), ptr, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), ptr, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    let bytes = crate::notify::bytes_of(&storage);
    crate::net::parse_sockaddr(&bytes[..len as usize])
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl Supervisor {
    /// `listen(fd, backlog)`: the supervisor listens on a copy of the socket
    /// itself (so the bound port is known, even an ephemeral one), then
    /// subscribes the target's port. The program gets listen's own result.
    pub(crate) fn listen(&mut self, call: &Call, fd: i32, backlog: i32) -> Verdict {
        let mode = match self.incoming.mode {
            ConfigMode::Off => return Verdict::Continue,
            ConfigMode::Steal => IncomingMode::Steal,
            ConfigMode::Mirror => IncomingMode::Mirror,
        };
        let Some(tgid) = call.tgid() else {
            return Verdict::Continue;
        };
        let Ok(sock) = pidfd_getfd(tgid, fd) else {
            return Verdict::Continue;
        };
        let Some((libc::SOCK_STREAM, libc::AF_INET | libc::AF_INET6)) = socket_kind(&sock) else {
            return Verdict::Continue;
        };
        let Some(ino) = inode(&sock) else {
            return Verdict::Continue;
        };
        if self.listeners.contains_key(&ino) {
            return Verdict::Continue; // listening again (a new backlog)
        }
        if !call.still_valid(self) {
            return Verdict::Errno(libc::EINTR);
        }
        // SAFETY: listen on our copy of the program's socket.
        if unsafe { libc::listen(sock.as_raw_fd(), backlog) } != 0 {
            return Verdict::Errno(last_errno());
        }
        let Some(local) = sock_addr(&sock, false) else {
            return Verdict::Return(0);
        };
        let incoming = &self.incoming;
        let remote = incoming
            .port_mapping
            .iter()
            .find(|[l, _]| *l == local.port())
            .map_or(local.port(), |[_, r]| *r);
        if !incoming.ports.is_empty() && !incoming.ports.contains(&remote) {
            return Verdict::Return(0);
        }
        // Where the intproxy dials: the wildcard means "this machine".
        let dial_ip = match local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let request = LayerRequest::Listen {
            local: SocketAddr::new(dial_ip, local.port()),
            remote: RemotePort(remote),
            mode,
            filter: incoming.http_filter.as_ref().map(wire_filter),
        };
        let reply = self.client().request(request);
        match reply {
            Ok(LayerResponse::Listening) => {
                self.listeners.insert(
                    ino,
                    Subscribed {
                        tgid,
                        remote: RemotePort(remote),
                    },
                );
            }
            // The program keeps its local listener; say why the target's
            // traffic will not come.
            Ok(other) => {
                self.unexpected(&other);
            }
            Err(e) => self.warn_once(&format!(
                "could not subscribe the target's port {remote} for the listener on {local}: {e}"
            )),
        }
        Verdict::Return(0)
    }

    /// Unsubscribe the ports of listeners their process closed (or that
    /// exited): the target's traffic goes back to the target.
    pub(crate) fn sweep_listeners(&mut self) {
        self.swept = std::time::Instant::now();
        let closed: Vec<u64> = self
            .listeners
            .iter()
            .filter(|(ino, sub)| !still_open(sub.tgid, **ino))
            .map(|(ino, _)| *ino)
            .collect();
        for ino in closed {
            if let Some(sub) = self.listeners.remove(&ino) {
                let reply = self
                    .client()
                    .request(LayerRequest::Unlisten { remote: sub.remote });
                if let Err(e) = reply {
                    self.warn_once(&format!(
                        "could not give the target's port {} back: {e}",
                        sub.remote.0
                    ));
                }
            }
        }
    }

    /// `accept(fd, addr, len)` / `accept4(.., flags)` on a subscribed
    /// listener: accept on a copy of the listener, write the real peer into
    /// `addr`, install the connection in the program. A blocking listener
    /// with nothing pending is waited for by a thread of its own (the
    /// supervisor answers the other calls meanwhile).
    pub(crate) fn accept(
        &mut self,
        call: &Call,
        fd: i32,
        addr: u64,
        len_addr: u64,
        flags: i32,
    ) -> Verdict {
        if self.listeners.is_empty() {
            return Verdict::Continue;
        }
        let Some(tgid) = call.tgid() else {
            return Verdict::Continue;
        };
        let Ok(listener) = pidfd_getfd(tgid, fd) else {
            return Verdict::Continue;
        };
        if !inode(&listener).is_some_and(|ino| self.listeners.contains_key(&ino)) {
            return Verdict::Continue;
        }
        let Some((_, domain)) = socket_kind(&listener) else {
            return Verdict::Continue;
        };
        // SAFETY: fcntl on our own copy of the listener.
        let status = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFL) };
        let accept = Accept {
            id: call.id,
            tid: call.tid,
            listener,
            blocking: status >= 0 && status & libc::O_NONBLOCK == 0,
            status,
            flags,
            addr,
            len_addr,
            domain,
        };
        if !call.still_valid(self) {
            return Verdict::Errno(libc::EINTR);
        }
        if !accept.blocking || readable(&accept.listener, 0) {
            match accept.now() {
                Ok(conn) => return accept.deliver(conn, &self.client, &self.redirected),
                // Nothing (left) to accept: a blocking accept waits below.
                Err(libc::EAGAIN) if accept.blocking => {}
                Err(errno) => return Verdict::Errno(errno),
            }
        }
        let seccomp = Arc::clone(&self.listener);
        let client = Arc::clone(&self.client);
        let redirected = Arc::clone(&self.redirected);
        let spawned = std::thread::Builder::new()
            .name("remora-accept".into())
            .spawn(move || accept.wait(&seccomp, &client, &redirected));
        match spawned {
            Ok(_) => Verdict::Pending,
            // No thread: the kernel waits (the peer is then the intproxy's).
            Err(_) => Verdict::Continue,
        }
    }
}

/// Whether `fd` has a connection to accept within `timeout_ms`.
fn readable(fd: &OwnedFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) == 1 }
}

/// One notified accept on a subscribed listener.
#[derive(Debug)]
struct Accept {
    id: u64,
    tid: u32,
    /// Our copy of the program's listener.
    listener: OwnedFd,
    blocking: bool,
    /// Its file status flags.
    status: i32,
    /// `accept4` flags.
    flags: i32,
    addr: u64,
    len_addr: u64,
    domain: i32,
}

impl Accept {
    /// One `accept4` on our copy of the listener, never waiting: a blocking
    /// listener is made non-blocking for the call (the file is shared with
    /// the program, whose thread is stopped in this very call; its flags are
    /// put back at once).
    fn now(&self) -> Result<OwnedFd, i32> {
        let raw = self.listener.as_raw_fd();
        // SAFETY: fcntl/accept4 on our own copy; the new fd is owned below.
        unsafe {
            if self.blocking {
                libc::fcntl(raw, libc::F_SETFL, self.status | libc::O_NONBLOCK);
            }
            let conn = libc::accept4(
                raw,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                (self.flags & libc::SOCK_NONBLOCK) | libc::SOCK_CLOEXEC,
            );
            let errno = last_errno();
            if self.blocking {
                libc::fcntl(raw, libc::F_SETFL, self.status);
            }
            if conn < 0 {
                return Err(errno);
            }
            Ok(OwnedFd::from_raw_fd(conn))
        }
    }

    /// On its own thread: wait until a connection comes (or the call is
    /// gone: the thread was interrupted or died), then answer.
    fn wait(self, seccomp: &Listener, client: &Mutex<Client>, redirected: &Mutex<Redirected>) {
        let mut signals = crate::signals::Watch::default();
        let conn = loop {
            let ready = readable(
                &self.listener,
                crate::signals::CHECK_EVERY.as_millis() as i32,
            );
            if !seccomp.id_valid(self.id) {
                return;
            }
            if ready {
                match self.now() {
                    Ok(conn) => break conn,
                    Err(libc::EAGAIN) => {}
                    Err(errno) => {
                        seccomp.answer(self.id, Verdict::Errno(errno));
                        return;
                    }
                }
            }
            if let Some(errno) = signals.check(self.tid) {
                seccomp.answer(self.id, Verdict::Errno(errno));
                return;
            }
        };
        let id = self.id;
        seccomp.answer(id, self.deliver(conn, client, redirected));
    }

    /// The answer for accepted `conn`: its real peer written into the
    /// program's `addr`/`addrlen` and remembered for `getpeername`, the
    /// connection installed.
    fn deliver(
        &self,
        conn: OwnedFd,
        client: &Mutex<Client>,
        redirected: &Mutex<Redirected>,
    ) -> Verdict {
        let peer = match sock_addr(&conn, true) {
            Some(from) if from.ip().is_loopback() => {
                let reply = lock(client).request(LayerRequest::IncomingPeer { dialer: from });
                match reply {
                    Ok(LayerResponse::Peer { peer: Some(p), .. }) => {
                        if let Some(ino) = inode(&conn) {
                            let replaced = Replaced {
                                peer: p,
                                local: None,
                            };
                            let mut map = redirected.lock().unwrap_or_else(|e| e.into_inner());
                            map.insert(ino, replaced);
                        }
                        Some(p)
                    }
                    _ => Some(from),
                }
            }
            other => other,
        };
        if let (Some(peer), true) = (peer, self.addr != 0 && self.len_addr != 0) {
            if let Err(e) = self.write_peer(peer) {
                return Verdict::Errno(e.raw_os_error().unwrap_or(libc::EFAULT));
            }
        }
        Verdict::Fd {
            fd: conn,
            cloexec: self.flags & libc::SOCK_CLOEXEC != 0,
        }
    }

    fn write_peer(&self, peer: SocketAddr) -> std::io::Result<()> {
        let mem = Memory::open(self.tid)?;
        let cap = u32::from_ne_bytes(mem.read(self.len_addr, 4)?.try_into().unwrap_or([0; 4]));
        let (storage, slen) = encode(peer, self.domain);
        let bytes = crate::notify::bytes_of(&storage);
        mem.write(self.addr, &bytes[..(slen.min(cap)) as usize])?;
        mem.write(self.len_addr, &slen.to_ne_bytes())
    }
}
