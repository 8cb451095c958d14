//! Receives on unconnected UDP sockets with routed destinations (`recvfrom`
//! with an address, `recvmsg`, `recvmmsg`): the supervisor receives on a
//! `pidfd_getfd` copy of the program's socket, writes the datagram into the
//! program's buffers and the destination an interceptor stands for as the
//! source. It keeps the kernel's behaviour where a program can see it:
//! - `recvmmsg` fills up to `vlen` messages (at most 1024, the kernel's
//!   `UIO_MAXIOV`): a blocking call waits for all of them, unless
//!   `MSG_WAITFORONE`; its timeout argument is checked after each datagram
//!   and what is left of it written back, as the kernel does;
//! - a blocking receive with nothing pending is waited for by a thread of
//!   its own (as a blocking `accept`) that honours `SO_RCVTIMEO`: `EAGAIN`
//!   once it passes without a datagram;
//! - a datagram taken for a call that is gone when it is answered (a
//!   signal interrupted the thread in between) is **put back**: sent again
//!   to the program's socket from a loopback socket of the supervisor
//!   ([`Sender`]) whose address the source rewrite maps to the datagram's
//!   source, so the restarted call, or any later receive, gets it (at the
//!   end of the queue: UDP does not promise order). With
//!   `WAIT_KILLABLE_RECV` (see [`crate::signals`]) that happens only when the
//!   thread died; a waiter ends its call itself when a signal comes.

use super::{
    CONTROL_MAX, DATAGRAM_MAX, MMSGHDR, MSGHDR, MsgHdr, UdpRoutes, canonical, errno, read_iovecs,
};
use crate::net::{encode, inode, parse_sockaddr, pidfd_getfd, socket_kind};
use crate::notify::{Listener, Memory, Verdict, bytes_of};
use crate::signals::{CHECK_EVERY, Watch};
use crate::{Call, Supervisor};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Messages one `recvmmsg` takes at most (the kernel's `UIO_MAXIOV`).
const VLEN_MAX: u64 = 1024;

impl Supervisor {
    /// `recvfrom` (with a source address), `recvmsg`, `recvmmsg` on a socket
    /// with routed destinations: received here, the source rewritten. The
    /// call is answered here (or by a waiter thread): the verdict returned
    /// is `Pending` then.
    pub(crate) fn recv_dgram(
        &mut self,
        call: &Call,
        mem: &Memory,
        nr: i64,
        a: &[u64; 6],
    ) -> std::io::Result<Verdict> {
        if self.udp().is_empty() {
            return Ok(Verdict::Continue);
        }
        if let Some(stale) = self.udp().waiters.remove(&call.tid) {
            stale.wake();
        }
        let Some(tgid) = call.tgid() else {
            return Ok(Verdict::Continue);
        };
        let Ok(sock) = pidfd_getfd(tgid, a[0] as i32) else {
            return Ok(Verdict::Continue);
        };
        let Some(ino) = inode(&sock).filter(|ino| self.udp().sockets.contains_key(ino)) else {
            return Ok(Verdict::Continue);
        };
        let Some((_, domain)) = socket_kind(&sock) else {
            return Ok(Verdict::Continue);
        };
        let (kind, flags) = match nr {
            libc::SYS_recvfrom => (
                Dest::From {
                    buf: a[1],
                    len: a[2],
                    src: a[4],
                    srclen: a[5],
                },
                a[3] as i32,
            ),
            libc::SYS_recvmsg => (Dest::Msg { msg: a[1] }, a[2] as i32),
            // The kernel returns 0 at once.
            _ if a[2] == 0 => return Ok(Verdict::Continue),
            _ => (
                Dest::Mmsg {
                    vec: a[1],
                    vlen: a[2].min(VLEN_MAX),
                    timeout: a[4],
                },
                a[3] as i32,
            ),
        };
        let deadline = match kind {
            Dest::Mmsg { timeout, .. } if timeout != 0 => {
                let raw = mem.read(timeout, 16)?;
                let sec = i64::from_ne_bytes(raw[..8].try_into().unwrap_or_default());
                let nsec = i64::from_ne_bytes(raw[8..].try_into().unwrap_or_default());
                if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
                    return Ok(Verdict::Errno(libc::EINVAL));
                }
                Some(Instant::now() + Duration::new(sec as u64, nsec as u32))
            }
            _ => None,
        };
        // SAFETY: fcntl on our own copy of the socket.
        let status = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_GETFL) };
        let blocking = flags & libc::MSG_DONTWAIT == 0 && status & libc::O_NONBLOCK == 0;
        let rcvtimeo = if blocking { rcvtimeo(&sock) } else { None };
        let mut recv = Recv {
            id: call.id,
            tid: call.tid,
            sock,
            ino,
            domain,
            kind,
            flags,
            blocking,
            rcvtimeo,
            deadline,
            taken: Vec::new(),
            routes: Arc::clone(&self.udp),
        };
        if !call.still_valid(self) {
            return Ok(Verdict::Errno(libc::EINTR));
        }
        if let Some(result) = recv.step() {
            recv.finish(&self.listener, result);
            return Ok(Verdict::Pending);
        }
        let seccomp = Arc::clone(&self.listener);
        let waker = Waker::new()?;
        self.udp().waiters.insert(call.tid, waker.clone());
        let spawned = std::thread::Builder::new()
            .name("remora-recv".into())
            .spawn(move || recv.wait(&seccomp, &waker));
        Ok(match spawned {
            Ok(_) => Verdict::Pending,
            // (The receive, dropped with the closure, put back what it took.)
            Err(_) => {
                self.warn_once(
                    "no thread could be started to wait for a blocking UDP receive: it gets EAGAIN",
                );
                Verdict::Errno(libc::EAGAIN)
            }
        })
    }
}

/// `SO_RCVTIMEO` of a socket (`None`: none set, wait for ever).
fn rcvtimeo(sock: &OwnedFd) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: tv/len are valid out-parameters of the right size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    let timeout = Duration::new(tv.tv_sec.max(0) as u64, tv.tv_usec.max(0) as u32 * 1000);
    (rc == 0 && !timeout.is_zero()).then_some(timeout)
}

fn answer(result: Result<i64, i32>) -> Verdict {
    match result {
        Ok(n) => Verdict::Return(n),
        Err(errno) => Verdict::Errno(errno),
    }
}

/// Where a notified receive puts what it gets.
#[derive(Debug, Clone, Copy)]
enum Dest {
    From {
        buf: u64,
        len: u64,
        src: u64,
        srclen: u64,
    },
    Msg {
        msg: u64,
    },
    Mmsg {
        vec: u64,
        vlen: u64,
        /// The program's `struct timespec *` (0: none).
        timeout: u64,
    },
}

/// A datagram taken from the socket for a call.
#[derive(Debug)]
struct Datagram {
    /// All of it (the program may have asked for less).
    data: Vec<u8>,
    /// The source the program was shown.
    shown: Option<SocketAddr>,
    /// Only looked at (`MSG_PEEK`) or from the error queue: still there,
    /// nothing to put back.
    kept: bool,
}

/// One notified receive on a socket with routed destinations. Dropped with
/// datagrams taken but not delivered (its call went away, or no waiter
/// could start), it puts them back.
#[derive(Debug)]
struct Recv {
    id: u64,
    tid: u32,
    /// Our copy of the program's socket.
    sock: OwnedFd,
    ino: u64,
    domain: i32,
    kind: Dest,
    flags: i32,
    blocking: bool,
    /// `SO_RCVTIMEO` of a blocking receive.
    rcvtimeo: Option<Duration>,
    /// When `recvmmsg`'s timeout argument runs out.
    deadline: Option<Instant>,
    /// Taken so far and written into the program's buffers (one, or up
    /// to `vlen` for `recvmmsg`).
    taken: Vec<Datagram>,
    routes: Arc<Mutex<UdpRoutes>>,
}

impl Recv {
    fn waits_for_one(&self) -> bool {
        self.flags & libc::MSG_WAITFORONE != 0
    }

    /// Take what the socket has now, without waiting, into the program's
    /// buffers: `Some(result)` once the call is complete.
    fn step(&mut self) -> Option<Result<i64, i32>> {
        let Ok(mem) = Memory::open(self.tid) else {
            return Some(Err(libc::ESRCH));
        };
        loop {
            let done = self.taken.len() as i64;
            match self.take_one(&mem) {
                Ok(n) => {
                    let Dest::Mmsg { vlen, .. } = self.kind else {
                        return Some(Ok(n));
                    };
                    // As the kernel: the timeout is looked at after each
                    // datagram, and all `vlen` end the call.
                    if done + 1 >= vlen as i64 || self.deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        return Some(Ok(done + 1));
                    }
                }
                Err(libc::EAGAIN) if done == 0 => {
                    return (!self.blocking).then_some(Err(libc::EAGAIN));
                }
                Err(libc::EAGAIN) if !self.blocking || self.waits_for_one() => {
                    return Some(Ok(done));
                }
                Err(libc::EAGAIN) => return None,
                // A later message's error: the kernel returns the count.
                Err(errno) => return Some(if done == 0 { Err(errno) } else { Ok(done) }),
            }
        }
    }

    /// Receive one datagram (without waiting) and write it, its source
    /// (rewritten) and the rest into the program's next buffer; its result
    /// (the byte count that `recvmsg` would return).
    fn take_one(&mut self, mem: &Memory) -> Result<i64, i32> {
        let fault = |_| libc::EFAULT;
        let (hdr_at, hdr) = match self.kind {
            Dest::From { .. } => (0, None),
            Dest::Msg { msg } => (msg, Some(MsgHdr::read(mem, msg).map_err(fault)?)),
            Dest::Mmsg { vec, .. } => {
                let at = vec + self.taken.len() as u64 * MMSGHDR;
                (at, Some(MsgHdr::read(mem, at).map_err(fault)?))
            }
        };
        let iovs = match (self.kind, &hdr) {
            (Dest::From { buf, len, .. }, _) => vec![(buf, len)],
            (_, Some(h)) => read_iovecs(mem, h.iov, h.iovlen).map_err(fault)?,
            _ => return Err(libc::EINVAL),
        };
        let want = iovs
            .iter()
            .fold(0u64, |sum, (_, len)| sum.saturating_add(*len));
        // The whole datagram always (a UDP payload is at most 65,507
        // bytes): what the program has no room for can still be put back.
        let mut data = vec![0u8; DATAGRAM_MAX];
        let mut control = vec![0u8; hdr.map_or(0, |h| (h.controllen as usize).min(CONTROL_MAX))];
        // SAFETY: all-zero sockaddr_storage and msghdr are valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: as above.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
        m.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        if !control.is_empty() {
            m.msg_control = control.as_mut_ptr().cast();
            m.msg_controllen = control.len();
        }
        let flags = self.flags & !(libc::MSG_WAITFORONE | libc::MSG_TRUNC);
        // SAFETY: a valid msghdr on our copy of the socket.
        let n = unsafe {
            libc::recvmsg(
                self.sock.as_raw_fd(),
                &mut m,
                flags | libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            return Err(errno());
        }
        let len = (n as usize).min(data.len());
        data.truncate(len);
        let source = (m.msg_namelen > 0)
            .then(|| parse_sockaddr(bytes_of(&storage)))
            .flatten()
            .map(canonical);
        let shown = source.map(|from| {
            let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            routes.source_of(self.ino, from).unwrap_or(from)
        });
        // From here the datagram is the call's: a fault writing it into
        // the program's memory drops it, as the kernel does.
        let got = len.min(want as usize);
        let truncated = if len > got { libc::MSG_TRUNC } else { 0 };
        let result = if self.flags & libc::MSG_TRUNC != 0 {
            len
        } else {
            got
        } as i64;
        let mut at = 0;
        for (base, room) in iovs {
            if at >= got {
                break;
            }
            let take = (room as usize).min(got - at);
            mem.write(base, &data[at..at + take]).map_err(fault)?;
            at += take;
        }
        let (name, namelen_at, cap) = match (self.kind, &hdr) {
            (Dest::From { src, srclen, .. }, _) if src != 0 && srclen != 0 => {
                let raw = mem.read(srclen, 4).map_err(fault)?;
                (
                    src,
                    srclen,
                    u32::from_ne_bytes(raw.try_into().unwrap_or([0; 4])),
                )
            }
            (_, Some(h)) => (h.name, hdr_at + 8, h.namelen),
            _ => (0, 0, 0),
        };
        if let (Some(shown), true) = (shown, name != 0) {
            let (storage, slen) = encode(shown, self.domain);
            mem.write(name, &bytes_of(&storage)[..slen.min(cap) as usize])
                .map_err(fault)?;
            mem.write(namelen_at, &slen.to_ne_bytes()).map_err(fault)?;
        }
        if let Some(h) = hdr {
            let clen = m.msg_controllen.min(control.len());
            if clen > 0 {
                mem.write(h.control, &control[..clen]).map_err(fault)?;
            }
            let msg_flags = (m.msg_flags & !libc::MSG_TRUNC) | truncated;
            mem.write(hdr_at + 40, &(clen as u64).to_ne_bytes())
                .map_err(fault)?;
            mem.write(hdr_at + 48, &msg_flags.to_ne_bytes())
                .map_err(fault)?;
            if let Dest::Mmsg { .. } = self.kind {
                mem.write(hdr_at + MSGHDR as u64, &(result as u32).to_ne_bytes())
                    .map_err(fault)?;
            }
        }
        self.taken.push(Datagram {
            data,
            shown,
            kept: self.flags & (libc::MSG_PEEK | libc::MSG_ERRQUEUE) != 0,
        });
        Ok(result)
    }

    /// Answer the call. If it is gone (a signal came after the datagrams
    /// were taken), they go back to the socket when `self` is dropped.
    fn finish(&mut self, seccomp: &Listener, result: Result<i64, i32>) {
        if let (Ok(n), Dest::Mmsg { timeout, .. }, Some(deadline)) =
            (&result, self.kind, self.deadline)
        {
            // As the kernel: what is left of the timeout, when any came.
            if *n > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut raw = (left.as_secs() as i64).to_ne_bytes().to_vec();
                raw.extend_from_slice(&i64::from(left.subsec_nanos()).to_ne_bytes());
                if let Ok(mem) = Memory::open(self.tid) {
                    let _ = mem.write(timeout, &raw);
                }
            }
        }
        if seccomp.answer(self.id, answer(result)) {
            self.taken.clear();
        } else {
            self.put_back();
        }
    }

    /// On its own thread: wait until the call can be answered (datagrams
    /// came, or `SO_RCVTIMEO` passed) or is gone (the thread was
    /// interrupted or died).
    fn wait(mut self, seccomp: &Listener, waker: &Waker) {
        self.wait_for_answer(seccomp, waker);
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.waiters.get(&self.tid).is_some_and(|w| w.same(waker)) {
            routes.waiters.remove(&self.tid);
        }
    }

    fn wait_for_answer(&mut self, seccomp: &Listener, waker: &Waker) {
        let mut since = Instant::now();
        let mut signals = Watch::default();
        loop {
            let timeout_at = self.rcvtimeo.map(|t| since + t);
            let slice = timeout_at.map_or(CHECK_EVERY, |at| {
                at.saturating_duration_since(Instant::now())
                    .min(CHECK_EVERY)
            });
            let mut pfds = [self.sock.as_raw_fd(), waker.raw()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            let ms = slice.as_micros().div_ceil(1000) as i32;
            // SAFETY: two valid pollfds.
            unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
            if !seccomp.id_valid(self.id) {
                return;
            }
            let before = self.taken.len();
            if let Some(result) = self.step() {
                self.finish(seccomp, result);
                return;
            }
            if self.taken.len() > before {
                // SO_RCVTIMEO is per datagram (the kernel's recvmmsg
                // waits that long for each).
                since = Instant::now();
            } else if timeout_at.is_some_and(|at| Instant::now() >= at) {
                let result = match self.taken.len() {
                    0 => Err(libc::EAGAIN),
                    n => Ok(n as i64),
                };
                self.finish(seccomp, result);
                return;
            } else if let Some(errno) = signals.check(self.tid) {
                // As the kernel: a receive with a timeout is not restarted
                // (`EINTR`), and one interrupted after some messages of a
                // `recvmmsg` returns their count.
                let errno = if self.rcvtimeo.is_some() {
                    libc::EINTR
                } else {
                    errno
                };
                let result = match self.taken.len() {
                    0 => Err(errno),
                    n => Ok(n as i64),
                };
                self.finish(seccomp, result);
                return;
            }
        }
    }

    /// Send the datagrams taken for a call that is gone back to the
    /// socket, each from the [`Sender`] standing for its source.
    fn put_back(&mut self) {
        let taken: Vec<Datagram> = self.taken.drain(..).filter(|d| !d.kept).collect();
        if taken.is_empty() {
            return;
        }
        let Some(to) = local_address(&self.sock) else {
            warn_dropped("the socket has no address");
            return;
        };
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for dgram in taken {
            let Some(shown) = dgram.shown else {
                warn_dropped("it had no source address");
                continue;
            };
            match routes.sender(self.ino, shown, to) {
                // SAFETY: sending our own buffer on our connected socket.
                Ok(sock) => unsafe {
                    if libc::send(
                        sock.as_raw_fd(),
                        dgram.data.as_ptr().cast(),
                        dgram.data.len(),
                        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                    ) < 0
                    {
                        warn_dropped(&std::io::Error::last_os_error().to_string());
                    }
                },
                Err(e) => warn_dropped(&e.to_string()),
            }
        }
    }
}

/// Wakes the waiter of a receive whose call is gone (an eventfd it polls).
#[derive(Debug, Clone)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    fn new() -> std::io::Result<Waker> {
        // SAFETY: eventfd with flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd we own.
        Ok(Waker(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    fn raw(&self) -> i32 {
        self.0.as_raw_fd()
    }

    fn same(&self, other: &Waker) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Drop for Recv {
    fn drop(&mut self) {
        self.put_back();
    }
}

/// A loopback UDP socket of the supervisor, connected to one program
/// socket, that puts datagrams back into it: the routes map its address to
/// the source those datagrams had, so the program sees that source again.
#[derive(Debug)]
pub struct Sender {
    sock: OwnedFd,
}

impl UdpRoutes {
    /// The sender putting datagrams from `shown` back into socket `ino`
    /// (at local address `to`), made the first time.
    fn sender(&mut self, ino: u64, shown: SocketAddr, to: SocketAddr) -> std::io::Result<&OwnedFd> {
        if !self.sockets.contains_key(&ino) {
            self.order.push_back(ino);
        }
        let routes = self.sockets.entry(ino).or_default();
        if !routes.senders.contains_key(&shown) {
            let (sock, addr) = connected_udp(to)?;
            routes.by_interceptor.insert(addr, shown);
            routes.senders.insert(shown, Sender { sock });
        }
        Ok(&routes.senders[&shown].sock)
    }
}

/// A UDP socket connected to `to`, and its own address.
fn connected_udp(to: SocketAddr) -> std::io::Result<(OwnedFd, SocketAddr)> {
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket calls on our own fd; results checked.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(fd);
        let (storage, slen) = encode(to, domain);
        if libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), slen) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let addr = sock_address(&sock).ok_or_else(std::io::Error::last_os_error)?;
        Ok((sock, addr))
    }
}

/// `getsockname` of a socket, v4-mapped addresses as IPv4.
fn sock_address(sock: &OwnedFd) -> Option<SocketAddr> {
    // SAFETY: all-zero sockaddr_storage is valid; getsockname fills it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd and out-parameters.
    let rc = unsafe {
        libc::getsockname(
            sock.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    (rc == 0)
        .then(|| parse_sockaddr(bytes_of(&storage)))
        .flatten()
        .map(canonical)
}

/// Where to send a datagram for the program's socket: its address, with
/// loopback for a wildcard one.
fn local_address(sock: &OwnedFd) -> Option<SocketAddr> {
    let mut addr = sock_address(sock)?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    (addr.port() != 0).then_some(addr)
}

/// One warning per run when a datagram could not be put back.
fn warn_dropped(why: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "remora: warning: a UDP datagram received for a call that a signal interrupted \
             could not be given back to the program and was dropped ({why})"
        );
    }
}
