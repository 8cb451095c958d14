//! Conversions between C `sockaddr` buffers and `std::net::SocketAddr`.

use libc::{sockaddr, sockaddr_in, sockaddr_in6, socklen_t};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Read an AF_INET/AF_INET6 address; `None` for other families or short buffers.
///
/// # Safety
/// `addr` must be null or point to at least `len` readable bytes.
pub unsafe fn read(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family field is readable (checked above).
    let family = unsafe { (*addr).sa_family } as i32;
    match family {
        libc::AF_INET if len as usize >= std::mem::size_of::<sockaddr_in>() => {
            // SAFETY: the buffer holds a whole sockaddr_in; read_unaligned
            // because C callers may pass any alignment.
            let sin = unsafe { std::ptr::read_unaligned(addr.cast::<sockaddr_in>()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { std::ptr::read_unaligned(addr.cast::<sockaddr_in6>()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A C socket address in a storage big enough for any IP family.
#[derive(Clone, Copy)]
pub struct CAddr {
    pub storage: libc::sockaddr_storage,
    pub len: socklen_t,
}

impl std::fmt::Debug for CAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CAddr").field("len", &self.len).finish()
    }
}

impl CAddr {
    pub fn as_ptr(&self) -> *const sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }
}

/// Encode `addr` as a C address. With `family` = AF_INET6 an IPv4 address is
/// written v4-mapped, so an IPv6 socket can connect to it.
pub fn encode(addr: SocketAddr, family: i32) -> CAddr {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let addr = match (addr, family) {
        (SocketAddr::V4(v4), libc::AF_INET6) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        (a, _) => a,
    };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<sockaddr_in6>()
        }
    };
    CAddr {
        storage,
        len: len as socklen_t,
    }
}

/// Write `addr` to a caller's `(addr, *len)` out-parameter pair, truncating
/// like the kernel does and reporting the full length.
///
/// # Safety
/// `out` must point to `*len` writable bytes and `len` be valid, or be null.
pub unsafe fn write_out(addr: SocketAddr, family: i32, out: *mut sockaddr, len: *mut socklen_t) {
    if out.is_null() || len.is_null() {
        return;
    }
    let c = encode(addr, family);
    // SAFETY: caller guarantees *len bytes at out; we copy at most that many.
    unsafe {
        let n = (*len).min(c.len) as usize;
        std::ptr::copy_nonoverlapping(c.as_ptr().cast::<u8>(), out.cast::<u8>(), n);
        *len = c.len;
    }
}

/// The unspecified or port-0 addresses are never worth forwarding.
pub fn is_forwardable(addr: &SocketAddr) -> bool {
    addr.port() != 0
        && !addr.ip().is_unspecified()
        && !matches!(addr.ip(), IpAddr::V4(ip) if ip.is_broadcast())
}
