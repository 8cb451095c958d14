//! `connect(2)`: a socket whose destination the outgoing policy sends to the
//! target is connected to the intproxy's interceptor instead. The supervisor
//! takes a copy of the program's socket (`pidfd_getfd`) and connects that
//! same socket, so every option and flag the program set (non-blocking,
//! keep-alive) stays; the program gets connect's own result (`0`,
//! `EINPROGRESS`...). `getpeername` on such a socket reports the address
//! the program asked for, not the interceptor's, and `getsockname` the
//! socket's own address in the target (as the layer does); on a connection
//! the supervisor accepted for the program, `getpeername` is the real peer.

use crate::notify::{Memory, Verdict};
use crate::{Call, Supervisor};
use remora_config::{Proto, Route};
use remora_protocol::messages::{InterceptorAddr, LayerRequest, LayerResponse};
use remora_protocol::net::{RemoteAddr, Transport};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub mod udp;

impl Supervisor {
    /// `connect(fd, addr, len)`.
    pub(crate) fn connect(
        &mut self,
        call: &Call,
        mem: &Memory,
        fd: i32,
        addr: u64,
        len: u64,
    ) -> std::io::Result<Verdict> {
        let len = (len as usize).min(128);
        if len < 2 {
            return Ok(Verdict::Continue);
        }
        let raw = mem.read(addr, len)?;
        let Some(remote) = parse_sockaddr(&raw) else {
            return Ok(Verdict::Continue);
        };
        if remote.port() == 0 || remote.ip().is_unspecified() || remote == self.intproxy {
            return Ok(Verdict::Continue);
        }
        let Some(tgid) = call.tgid() else {
            return Ok(Verdict::Continue);
        };
        let Ok(sock) = pidfd_getfd(tgid, fd) else {
            return Ok(Verdict::Continue);
        };
        let Some((sock_type, domain)) = socket_kind(&sock) else {
            return Ok(Verdict::Continue);
        };
        let (transport, proto) = match sock_type {
            libc::SOCK_STREAM => (Transport::Tcp, Proto::Tcp),
            libc::SOCK_DGRAM => (Transport::Udp, Proto::Udp),
            _ => return Ok(Verdict::Continue),
        };
        if self.policies.outgoing.decide(proto, remote, None) == Route::Local {
            return Ok(Verdict::Continue);
        }
        if !call.still_valid(self) {
            return Ok(Verdict::Errno(libc::EINTR));
        }
        if transport == Transport::Tcp {
            if let Some(verdict) = self.connect_fast(call, tgid, fd, &sock, domain, remote) {
                return Ok(verdict);
            }
        }
        let reply = self.client().request(LayerRequest::ConnectOutgoing {
            transport,
            remote: RemoteAddr::Ip(remote),
        });
        let (interceptor, remote_local) = match reply {
            Ok(LayerResponse::Intercepted {
                interceptor: InterceptorAddr::Ip(a),
                remote_local,
            }) => (a, remote_local),
            Ok(other) => return Ok(Verdict::Errno(self.unexpected(&other))),
            Err(e) => return Ok(Verdict::Errno(e.errno())),
        };
        let (storage, slen) = encode(interceptor, domain);
        // SAFETY: connecting our copy of the socket to a valid sockaddr.
        let rc = unsafe {
            libc::connect(
                sock.as_raw_fd(),
                (&storage as *const libc::sockaddr_storage).cast(),
                slen,
            )
        };
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if rc == 0 || errno == libc::EINPROGRESS {
            if let Some(ino) = inode(&sock) {
                self.redirected().insert(
                    ino,
                    Replaced {
                        peer: remote,
                        local: remote_local,
                    },
                );
            }
        }
        if rc == 0 {
            Ok(Verdict::Return(0))
        } else {
            Ok(Verdict::Errno(errno))
        }
    }

    /// The local fast path for a TCP `connect` (see [`crate::broker`]): a
    /// socket the agent connected inside the target replaces the program's
    /// (`sock` is our copy of it) under the same number, with its status
    /// flags, close-on-exec flag and the options programs set before
    /// `connect`, as the layer's fast path does; the call returns 0 (a
    /// non-blocking `connect` succeeds at once, which `connect(2)` allows).
    /// `None`: not taken (no fast path, the socket is bound or connected,
    /// a family the target's socket cannot stand in for), go on proxied.
    fn connect_fast(
        &mut self,
        call: &Call,
        tgid: u32,
        fd: i32,
        sock: &OwnedFd,
        domain: i32,
        remote: SocketAddr,
    ) -> Option<Verdict> {
        if !self.broker.available()
            || !remora_broker_client::socket::replaceable(sock.as_raw_fd(), domain, remote)
        {
            return None;
        }
        // SAFETY: F_GETFL on our copy (status flags are the open file's,
        // shared with the program's fd).
        let status = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_GETFL) };
        if status < 0 {
            return None;
        }
        let cloexec = close_on_exec(tgid, fd)?;
        let new = match self.broker.connect_tcp(remote) {
            crate::broker::ConnectTcp::Socket(new) => new,
            crate::broker::ConnectTcp::Failed(errno) => return Some(Verdict::Errno(errno)),
            crate::broker::ConnectTcp::Unavailable(why) => {
                if let Some(why) = why {
                    self.warn_once(&why);
                }
                return None;
            }
        };
        remora_broker_client::socket::copy_options(sock.as_raw_fd(), new.as_raw_fd());
        // SAFETY: plain fcntl on the socket we received.
        unsafe { libc::fcntl(new.as_raw_fd(), libc::F_SETFL, status) };
        if !call.still_valid(self) {
            // (The connection is dropped with `new`.)
            return Some(Verdict::Errno(libc::EINTR));
        }
        Some(Verdict::ReplaceFd {
            fd: new,
            at: fd as u32,
            cloexec,
            then: 0,
        })
    }

    /// The sockets the supervisor connected or accepted for the program.
    pub(crate) fn redirected(&self) -> std::sync::MutexGuard<'_, Redirected> {
        self.redirected.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `getpeername(fd, addr, len)` (`peer`) and `getsockname` (not
    /// `peer`): a redirected socket's peer is the address the program
    /// connected to and its own address the one it has in the target; an
    /// accepted connection's peer is the real client. Other sockets, and
    /// addresses the intproxy did not report, are the kernel's.
    pub(crate) fn sock_name(
        &mut self,
        call: &Call,
        mem: &Memory,
        fd: i32,
        addr: u64,
        len_addr: u64,
        peer: bool,
    ) -> std::io::Result<Verdict> {
        if self.redirected().is_empty() || addr == 0 || len_addr == 0 {
            return Ok(Verdict::Continue);
        }
        let Some(tgid) = call.tgid() else {
            return Ok(Verdict::Continue);
        };
        let Ok(sock) = pidfd_getfd(tgid, fd) else {
            return Ok(Verdict::Continue);
        };
        let Some(replaced) = inode(&sock).and_then(|ino| self.redirected().get(ino)) else {
            return Ok(Verdict::Continue);
        };
        let Some(answer) = (if peer {
            Some(replaced.peer)
        } else {
            replaced.local
        }) else {
            return Ok(Verdict::Continue);
        };
        let Some((_, domain)) = socket_kind(&sock) else {
            return Ok(Verdict::Continue);
        };
        // Not connected (yet, or any more): the kernel's answer (ENOTCONN).
        // SAFETY: all-zero sockaddr_storage is valid; a plain getpeername.
        let connected = unsafe {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            libc::getpeername(
                sock.as_raw_fd(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            ) == 0
        };
        if !connected || !call.still_valid(self) {
            return Ok(Verdict::Continue);
        }
        let cap = u32::from_ne_bytes(mem.read(len_addr, 4)?.try_into().unwrap_or([0; 4]));
        let (storage, slen) = encode(answer, domain);
        let bytes = crate::notify::bytes_of(&storage);
        mem.write(addr, &bytes[..(slen.min(cap)) as usize])?;
        mem.write(len_addr, &slen.to_ne_bytes())?;
        Ok(Verdict::Return(0))
    }
}

/// Whether fd `fd` of process `tgid` is close-on-exec (`flags:` of its
/// fdinfo, octal, `O_CLOEXEC` included); `None` when it cannot be read.
fn close_on_exec(tgid: u32, fd: i32) -> Option<bool> {
    let info = std::fs::read_to_string(format!("/proc/{tgid}/fdinfo/{fd}")).ok()?;
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| i64::from_str_radix(v.trim(), 8).ok())?;
    Some(flags & i64::from(libc::O_CLOEXEC) != 0)
}

/// What the program should see of a socket the supervisor connected to an
/// interceptor or accepted for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replaced {
    /// `getpeername`: the address it connected to, or the real client.
    pub peer: SocketAddr,
    /// `getsockname`: its address in the target, when the intproxy said.
    pub local: Option<SocketAddr>,
}

/// Sockets connected to an interceptor or accepted for the program, by
/// inode. Bounded (the oldest go first): `close` is not notified.
#[derive(Debug, Default)]
pub struct Redirected {
    by_inode: std::collections::HashMap<u64, Replaced>,
    order: std::collections::VecDeque<u64>,
}

/// Redirected sockets remembered at most.
const REDIRECTED_MAX: usize = 4096;

impl Redirected {
    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }

    pub(crate) fn insert(&mut self, ino: u64, replaced: Replaced) {
        if self.by_inode.insert(ino, replaced).is_none() {
            self.order.push_back(ino);
        }
        while self.order.len() > REDIRECTED_MAX {
            if let Some(old) = self.order.pop_front() {
                self.by_inode.remove(&old);
            }
        }
    }

    fn get(&self, ino: u64) -> Option<Replaced> {
        self.by_inode.get(&ino).copied()
    }
}

/// The socket's own identity: its inode in sockfs (the same for every copy
/// of the fd, in any process).
pub(crate) fn inode(fd: &OwnedFd) -> Option<u64> {
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out-parameter.
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0).then_some(st.st_ino)
}

/// A copy of fd `fd` of process `tgid`.
pub(crate) fn pidfd_getfd(tgid: u32, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: raw syscalls with plain integer arguments; results are checked.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(copy as i32))
    }
}

/// `SO_TYPE` and `SO_DOMAIN` of a socket.
pub(crate) fn socket_kind(fd: &OwnedFd) -> Option<(i32, i32)> {
    let get = |opt| {
        let mut value: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: value/len are valid out-parameters of the right size.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&mut value as *mut i32).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    Some((get(libc::SO_TYPE)?, get(libc::SO_DOMAIN)?))
}

/// An IPv4 or IPv6 `sockaddr` from the program's bytes.
pub fn parse_sockaddr(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([raw[0], raw[1]]) as i32;
    let port = u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?]);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(ip.into(), port)))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(raw.get(24..28)?.try_into().ok()?);
            let v6 = std::net::Ipv6Addr::from(ip);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope)),
            })
        }
        _ => None,
    }
}

/// `addr` as a sockaddr of `domain` (IPv4 addresses v4-mapped for AF_INET6).
pub(crate) fn encode(addr: SocketAddr, domain: i32) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let ip6 = match (addr.ip(), domain) {
        (IpAddr::V4(v4), libc::AF_INET) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            return (storage, std::mem::size_of::<libc::sockaddr_in>() as u32);
        }
        (IpAddr::V4(v4), _) => v4.to_ipv6_mapped(),
        (IpAddr::V6(v6), _) => v6,
    };
    let sin6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as u16,
        sin6_port: addr.port().to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: ip6.octets(),
        },
        sin6_scope_id: 0,
    };
    // SAFETY: sockaddr_in6 fits in sockaddr_storage.
    unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
    (storage, std::mem::size_of::<libc::sockaddr_in6>() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs_round_trip() {
        for addr in ["10.1.2.3:80", "[fe80::1]:443"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let domain = if addr.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let (storage, len) = encode(addr, domain);
            let bytes = crate::notify::bytes_of(&storage);
            assert_eq!(parse_sockaddr(&bytes[..len as usize]), Some(addr));
        }
        let (storage, len) = encode("127.0.0.1:5".parse().unwrap(), libc::AF_INET6);
        let bytes = crate::notify::bytes_of(&storage);
        assert_eq!(
            parse_sockaddr(&bytes[..len as usize]),
            Some("127.0.0.1:5".parse().unwrap())
        );
    }
}
