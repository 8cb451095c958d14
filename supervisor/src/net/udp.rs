//! Datagrams with a destination on unconnected UDP sockets (`sendto`,
//! `sendmsg`, `sendmmsg`), as the layer's `sendto` hook: a destination the
//! outgoing policy sends to the target goes to an interceptor of the
//! intproxy (one per socket and destination), which sends it from the
//! target. The supervisor sends the datagram itself, on a `pidfd_getfd`
//! copy of the program's socket, with the program's bytes. Answers come
//! back from the interceptor, so once a socket has such a route, its
//! `recvfrom`/`recvmsg`/`recvmmsg` with a source address are done by the
//! supervisor too ([`recv`]), which writes the destination the interceptor
//! stands for as the source (the program sees the pod's peer, as with the
//! layer).

use super::{encode, inode, parse_sockaddr, pidfd_getfd, socket_kind};
use crate::notify::{Memory, Verdict};
use crate::{Call, Supervisor};
use remora_config::{Proto, Route};
use remora_protocol::messages::{InterceptorAddr, LayerRequest, LayerResponse};
use remora_protocol::net::{RemoteAddr, Transport};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

/// Sockets remembered at most (the oldest go first: `close` is not notified).
const SOCKETS_MAX: usize = 4096;
/// Largest datagram handled (UDP's own limit is 65,507 bytes).
const DATAGRAM_MAX: usize = 1 << 16;
/// Largest ancillary data passed along.
const CONTROL_MAX: usize = 4096;
/// `struct msghdr` and `struct mmsghdr` on x86_64.
const MSGHDR: usize = 56;
const MMSGHDR: u64 = 64;

mod recv;

/// The interceptors of one socket: destination <-> interceptor.
#[derive(Debug, Default)]
struct Routes {
    by_remote: HashMap<SocketAddr, SocketAddr>,
    /// The source a datagram from this address is shown with: an
    /// interceptor's destination, or a put-back sender's original source.
    by_interceptor: HashMap<SocketAddr, SocketAddr>,
    /// Sockets that put datagrams back for calls that were gone by the
    /// time they were answered ([`recv`]), by the source they stand for.
    senders: HashMap<SocketAddr, recv::Sender>,
}

/// Unconnected UDP sockets with routed destinations, by inode.
#[derive(Debug, Default)]
pub struct UdpRoutes {
    sockets: HashMap<u64, Routes>,
    order: VecDeque<u64>,
    /// Blocking receives being waited for, by thread: a thread's new
    /// receive means its earlier one is gone (a signal ended it), so its
    /// waiter is woken to notice at once ([`recv`]).
    waiters: HashMap<u32, recv::Waker>,
}

impl UdpRoutes {
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    fn interceptor(&self, ino: u64, remote: SocketAddr) -> Option<SocketAddr> {
        self.sockets.get(&ino)?.by_remote.get(&remote).copied()
    }

    fn insert(&mut self, ino: u64, remote: SocketAddr, interceptor: SocketAddr) {
        let routes = self.sockets.entry(ino).or_insert_with(|| {
            self.order.push_back(ino);
            Routes::default()
        });
        routes.by_remote.insert(remote, interceptor);
        routes.by_interceptor.insert(interceptor, remote);
        while self.order.len() > SOCKETS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.sockets.remove(&old);
            }
        }
    }

    /// The destination a datagram from `source` answers, if `source` is
    /// one of the socket's interceptors.
    fn source_of(&self, ino: u64, source: SocketAddr) -> Option<SocketAddr> {
        let routes = self.sockets.get(&ino)?;
        routes.by_interceptor.get(&source).copied()
    }
}

/// A `struct msghdr` of the program.
#[derive(Debug, Clone, Copy)]
struct MsgHdr {
    name: u64,
    namelen: u32,
    iov: u64,
    iovlen: u64,
    control: u64,
    controllen: u64,
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or_default())
}

impl MsgHdr {
    fn read(mem: &Memory, addr: u64) -> std::io::Result<MsgHdr> {
        let b = mem.read(addr, MSGHDR)?;
        Ok(MsgHdr {
            name: u64_at(&b, 0),
            namelen: u32::from_ne_bytes(b[8..12].try_into().unwrap_or_default()),
            iov: u64_at(&b, 16),
            iovlen: u64_at(&b, 24),
            control: u64_at(&b, 32),
            controllen: u64_at(&b, 40),
        })
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl Supervisor {
    /// The routes of unconnected UDP sockets (shared with receive waiters).
    fn udp(&self) -> std::sync::MutexGuard<'_, UdpRoutes> {
        self.udp.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a datagram from socket `fd` to `raw` (a sockaddr) goes: `None`
    /// to let the kernel send it as asked; else our copy of the socket, its
    /// domain and the interceptor standing for the destination.
    fn dgram_route(
        &mut self,
        call: &Call,
        fd: i32,
        raw: &[u8],
    ) -> Result<Option<(OwnedFd, i32, SocketAddr)>, i32> {
        let Some(remote) = (raw.len() >= 2).then(|| parse_sockaddr(raw)).flatten() else {
            return Ok(None);
        };
        if remote.port() == 0 || remote.ip().is_unspecified() || remote == self.intproxy {
            return Ok(None);
        }
        if self.policies.outgoing.decide(Proto::Udp, remote, None) == Route::Local {
            return Ok(None);
        }
        let Some(tgid) = call.tgid() else {
            return Ok(None);
        };
        let Ok(sock) = pidfd_getfd(tgid, fd) else {
            return Ok(None);
        };
        let (Some((libc::SOCK_DGRAM, domain)), Some(ino)) = (socket_kind(&sock), inode(&sock))
        else {
            return Ok(None);
        };
        if let Some(interceptor) = self.udp().interceptor(ino, remote) {
            return Ok(Some((sock, domain, interceptor)));
        }
        if !call.still_valid(self) {
            return Err(libc::EINTR);
        }
        let reply = self.client().request(LayerRequest::ConnectOutgoing {
            transport: Transport::Udp,
            remote: RemoteAddr::Ip(remote),
        });
        let interceptor = match reply {
            Ok(LayerResponse::Intercepted {
                interceptor: InterceptorAddr::Ip(a),
                ..
            }) => a,
            Ok(other) => return Err(self.unexpected(&other)),
            Err(e) => return Err(e.errno()),
        };
        self.udp().insert(ino, remote, interceptor);
        Ok(Some((sock, domain, interceptor)))
    }

    /// `sendto`, `sendmsg`, `sendmmsg` with a destination.
    pub(crate) fn send_dgram(
        &mut self,
        call: &Call,
        mem: &Memory,
        nr: i64,
        a: &[u64; 6],
    ) -> std::io::Result<Verdict> {
        let fd = a[0] as i32;
        match nr {
            libc::SYS_sendto => {
                if a[4] == 0 {
                    return Ok(Verdict::Continue);
                }
                let raw = mem.read(a[4], (a[5] as usize).min(128))?;
                let (sock, domain, interceptor) = match self.dgram_route(call, fd, &raw) {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(Verdict::Continue),
                    Err(errno) => return Ok(Verdict::Errno(errno)),
                };
                if a[2] as usize > DATAGRAM_MAX {
                    return Ok(Verdict::Errno(libc::EMSGSIZE));
                }
                let data = mem.read(a[1], a[2] as usize)?;
                Ok(send_one(
                    &sock,
                    domain,
                    interceptor,
                    &data,
                    &[],
                    a[3] as i32,
                ))
            }
            libc::SYS_sendmsg => {
                let msg = MsgHdr::read(mem, a[1])?;
                match self.send_msg(call, mem, fd, &msg, a[2] as i32)? {
                    Some(Ok(n)) => Ok(Verdict::Return(n)),
                    Some(Err(errno)) => Ok(Verdict::Errno(errno)),
                    None => Ok(Verdict::Continue),
                }
            }
            _ => self.sendmmsg(call, mem, fd, a[1], a[2].min(1024), a[3] as i32),
        }
    }

    /// One `msghdr`: `None` when it has no destination to route.
    fn send_msg(
        &mut self,
        call: &Call,
        mem: &Memory,
        fd: i32,
        msg: &MsgHdr,
        flags: i32,
    ) -> std::io::Result<Option<Result<i64, i32>>> {
        if msg.name == 0 {
            return Ok(None);
        }
        let raw = mem.read(msg.name, (msg.namelen as usize).min(128))?;
        let (sock, domain, interceptor) = match self.dgram_route(call, fd, &raw) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(errno) => return Ok(Some(Err(errno))),
        };
        let data = crate::fs::mirror::read_iov(mem, msg.iov, msg.iovlen)?;
        let control = if msg.control != 0 && msg.controllen > 0 {
            mem.read(msg.control, (msg.controllen as usize).min(CONTROL_MAX))?
        } else {
            Vec::new()
        };
        Ok(Some(
            match send_one(&sock, domain, interceptor, &data, &control, flags) {
                Verdict::Return(n) => Ok(n),
                Verdict::Errno(e) => Err(e),
                _ => Err(libc::EIO),
            },
        ))
    }

    /// `sendmmsg`: each message as `sendmsg`; `CONTINUE` when none has a
    /// routed destination.
    fn sendmmsg(
        &mut self,
        call: &Call,
        mem: &Memory,
        fd: i32,
        vec: u64,
        count: u64,
        flags: i32,
    ) -> std::io::Result<Verdict> {
        let msgs: Vec<MsgHdr> = (0..count)
            .map(|i| MsgHdr::read(mem, vec + i * MMSGHDR))
            .collect::<std::io::Result<_>>()?;
        if msgs.iter().all(|m| m.name == 0) {
            return Ok(Verdict::Continue);
        }
        let mut sent = 0u64;
        for (i, msg) in msgs.iter().enumerate() {
            let result = match self.send_msg(call, mem, fd, msg, flags)? {
                Some(r) => r,
                // Mixed with unrouted messages: send those ourselves too.
                None => send_plain(call, mem, fd, msg, flags)?,
            };
            match result {
                Ok(n) => {
                    let len_at = vec + i as u64 * MMSGHDR + MSGHDR as u64;
                    mem.write(len_at, &(n as u32).to_ne_bytes())?;
                    sent += 1;
                }
                Err(errno) if sent == 0 => return Ok(Verdict::Errno(errno)),
                Err(_) => break,
            }
        }
        Ok(Verdict::Return(sent as i64))
    }
}

/// Send `data` (and ancillary `control`) on `sock` to `to`.
fn send_one(
    sock: &OwnedFd,
    domain: i32,
    to: SocketAddr,
    data: &[u8],
    control: &[u8],
    flags: i32,
) -> Verdict {
    let (mut storage, slen) = encode(to, domain);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = control.to_vec();
    // SAFETY: all-zero msghdr is valid; every pointer below lives across the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = slen;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !control.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
    }
    // SAFETY: a valid msghdr on our copy of the socket.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Verdict::Errno(errno())
    } else {
        Verdict::Return(n as i64)
    }
}

/// A message of a `sendmmsg` that also routes others, sent as asked.
fn send_plain(
    call: &Call,
    mem: &Memory,
    fd: i32,
    msg: &MsgHdr,
    flags: i32,
) -> std::io::Result<Result<i64, i32>> {
    let Some(tgid) = call.tgid() else {
        return Ok(Err(libc::ESRCH));
    };
    let sock = match pidfd_getfd(tgid, fd) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e.raw_os_error().unwrap_or(libc::EBADF))),
    };
    let data = crate::fs::mirror::read_iov(mem, msg.iov, msg.iovlen)?;
    let name = if msg.name != 0 {
        mem.read(msg.name, (msg.namelen as usize).min(128))?
    } else {
        Vec::new()
    };
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: all-zero msghdr is valid; the pointers live across the call.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    if !name.is_empty() {
        m.msg_name = name.as_ptr() as *mut libc::c_void;
        m.msg_namelen = name.len() as u32;
    }
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    // SAFETY: a valid msghdr on our copy of the socket.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &m, flags | libc::MSG_NOSIGNAL) };
    Ok(if n < 0 { Err(errno()) } else { Ok(n as i64) })
}

/// The `(base, len)` pairs of an iovec array.
fn read_iovecs(mem: &Memory, addr: u64, count: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let raw = mem.read(addr, count.min(1024) as usize * 16)?;
    Ok(raw
        .chunks_exact(16)
        .map(|v| (u64_at(v, 0), u64_at(v, 8)))
        .collect())
}

/// Undo v4-mapping, as the intproxy reports interceptors.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        a => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_both_ways_and_stay_bounded() {
        let mut r = UdpRoutes::default();
        let remote: SocketAddr = "10.0.0.5:53".parse().unwrap();
        let icpt: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        r.insert(7, remote, icpt);
        assert_eq!(r.interceptor(7, remote), Some(icpt));
        assert_eq!(r.source_of(7, icpt), Some(remote));
        assert_eq!(r.source_of(8, icpt), None);
        for ino in 100..100 + SOCKETS_MAX as u64 {
            r.insert(ino, remote, icpt);
        }
        assert_eq!(r.sockets.len(), SOCKETS_MAX);
        assert_eq!(r.interceptor(7, remote), None);
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        assert_eq!(canonical(mapped), icpt);
    }
}
