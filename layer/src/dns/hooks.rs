//! `extern "C"` shims for name resolution; the logic lives in [`super::ops`].
//!
//! `getaddrinfo` results built here use glibc's own layout (one allocation per
//! entry holding the `addrinfo` and its address, a separately allocated
//! canonical name), so they are freed correctly by this layer's
//! `freeaddrinfo` and by libc's alike.

use super::ops::{self, Query};
use crate::error::{HookError, fail};
use crate::guard::DetourGuard;
use crate::real::real;
use crate::sockaddr as sa;
use crate::sync::ForkMutex;
use libc::{addrinfo, c_char, c_int, size_t};
use remora_protocol::dns::{AddrFamily, SockType};
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::net::{IpAddr, SocketAddr};

/// Heads of the lists this layer allocated.
pub(crate) static OURS: ForkMutex<Option<HashSet<usize>>> = ForkMutex::new(None);

#[repr(C)]
struct Entry {
    ai: addrinfo,
    addr: libc::sockaddr_storage,
}

type GetAddrInfo = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const addrinfo,
    *mut *mut addrinfo,
) -> c_int;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    let real: GetAddrInfo = real!(getaddrinfo: fn(*const c_char, *const c_char, *const addrinfo, *mut *mut addrinfo) -> c_int);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(node, service, hints, res) };
    };
    // SAFETY: getaddrinfo(3) contract: node/service are NUL-terminated or null,
    // hints is null or valid, res is writable.
    match unsafe { remote_getaddrinfo(node, service, hints) } {
        Ok(list) => {
            // SAFETY: res is the caller's out-parameter.
            unsafe { *res = list };
            0
        }
        Err(Failure::Bypass) => unsafe { real(node, service, hints, res) },
        Err(Failure::Eai(code)) => code,
    }
}

enum Failure {
    Bypass,
    Eai(c_int),
}

unsafe fn remote_getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
) -> Result<*mut addrinfo, Failure> {
    if node.is_null() {
        return Err(Failure::Bypass);
    }
    // SAFETY: caller guarantees a NUL-terminated node.
    let name = unsafe { CStr::from_ptr(node) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: hints is null or a valid addrinfo.
    let hints: addrinfo = if hints.is_null() {
        // SAFETY: addrinfo is plain old data.
        unsafe { std::mem::zeroed() }
    } else {
        unsafe { *hints }
    };
    if hints.ai_flags & libc::AI_NUMERICHOST != 0 {
        return Err(Failure::Bypass);
    }
    ops::should_resolve_remotely(&name).map_err(|_| Failure::Bypass)?;
    // SAFETY: service is null or NUL-terminated.
    let port = unsafe { service_port(service, &hints) }?;
    let family = match hints.ai_family {
        libc::AF_INET => AddrFamily::V4,
        libc::AF_INET6 => AddrFamily::V6,
        libc::AF_UNSPEC => AddrFamily::Any,
        _ => return Err(Failure::Eai(libc::EAI_FAMILY)),
    };
    let socktype = match hints.ai_socktype {
        libc::SOCK_STREAM => SockType::Stream,
        libc::SOCK_DGRAM => SockType::Datagram,
        _ => SockType::Any,
    };
    // AI_V4MAPPED: an AF_INET6 lookup falls back to (with AI_ALL: adds)
    // the IPv4 addresses as v4-mapped IPv6 ones, so the target must be asked
    // for both families.
    let v4_mapped = family == AddrFamily::V6 && hints.ai_flags & libc::AI_V4MAPPED != 0;
    let query = Query {
        name: name.clone(),
        family: if v4_mapped { AddrFamily::Any } else { family },
        socktype,
        flags: hints.ai_flags,
    };
    let reply = ops::lookup(query).map_err(|e| match e {
        HookError::Bypass(_) => Failure::Bypass,
        e => Failure::Eai(ops::eai_of(&e)),
    })?;
    let kinds: Vec<(c_int, c_int)> = if hints.ai_socktype == 0 {
        vec![
            (libc::SOCK_STREAM, libc::IPPROTO_TCP),
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
            (libc::SOCK_RAW, 0),
        ]
    } else {
        let proto = match (hints.ai_protocol, hints.ai_socktype) {
            (0, libc::SOCK_STREAM) => libc::IPPROTO_TCP,
            (0, libc::SOCK_DGRAM) => libc::IPPROTO_UDP,
            (p, _) => p,
        };
        vec![(hints.ai_socktype, proto)]
    };
    let mut addrs: Vec<IpAddr> = reply
        .addresses
        .iter()
        .copied()
        .filter(|ip| match family {
            AddrFamily::V4 => ip.is_ipv4(),
            AddrFamily::V6 => ip.is_ipv6(),
            AddrFamily::Any => true,
        })
        .collect();
    if v4_mapped && (addrs.is_empty() || hints.ai_flags & libc::AI_ALL != 0) {
        addrs.extend(reply.addresses.iter().filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        }));
    }
    if addrs.is_empty() {
        return Err(Failure::Eai(libc::EAI_NONAME));
    }
    let canon = if hints.ai_flags & libc::AI_CANONNAME != 0 {
        Some(reply.canonical_name.clone().unwrap_or(name))
    } else {
        None
    };
    // SAFETY: builds a fresh list out of malloc'ed entries.
    Ok(unsafe { build_list(&addrs, port, &kinds, canon) })
}

/// # Safety
/// `service` must be null or NUL-terminated.
unsafe fn service_port(service: *const c_char, hints: &addrinfo) -> Result<u16, Failure> {
    if service.is_null() {
        return Ok(0);
    }
    // SAFETY: caller guarantees NUL termination.
    let s = unsafe { CStr::from_ptr(service) };
    let text = s.to_string_lossy();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(port);
    }
    if hints.ai_flags & libc::AI_NUMERICSERV != 0 {
        return Err(Failure::Eai(libc::EAI_NONAME));
    }
    let proto: &[u8] = if hints.ai_socktype == libc::SOCK_DGRAM {
        b"udp\0"
    } else {
        b"tcp\0"
    };
    // SAFETY: both strings are NUL-terminated; the result is libc's static storage.
    let ent = unsafe { libc::getservbyname(s.as_ptr(), proto.as_ptr().cast()) };
    if ent.is_null() {
        return Err(Failure::Eai(libc::EAI_SERVICE));
    }
    // SAFETY: non-null servent from libc.
    Ok(u16::from_be(unsafe { (*ent).s_port } as u16))
}

/// # Safety
/// Allocates with libc's allocator; the caller owns the result.
unsafe fn build_list(
    addrs: &[IpAddr],
    port: u16,
    kinds: &[(c_int, c_int)],
    canon: Option<String>,
) -> *mut addrinfo {
    let mut head: *mut addrinfo = std::ptr::null_mut();
    let mut tail: *mut *mut addrinfo = &mut head;
    for ip in addrs {
        let sa = SocketAddr::new(*ip, port);
        let family = if ip.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let c = sa::encode(sa, family);
        for &(socktype, protocol) in kinds {
            // SAFETY: calloc returns zeroed memory for one Entry, or null.
            let entry = unsafe { libc::calloc(1, std::mem::size_of::<Entry>()) }.cast::<Entry>();
            if entry.is_null() {
                break;
            }
            // SAFETY: entry is a valid, exclusively owned Entry.
            unsafe {
                (*entry).addr = c.storage;
                (*entry).ai.ai_family = family;
                (*entry).ai.ai_socktype = socktype;
                (*entry).ai.ai_protocol = protocol;
                (*entry).ai.ai_addrlen = c.len;
                (*entry).ai.ai_addr = (&mut (*entry).addr as *mut libc::sockaddr_storage).cast();
                *tail = &mut (*entry).ai;
                tail = &mut (*entry).ai.ai_next;
            }
        }
    }
    if let (Some(name), false) = (canon, head.is_null()) {
        if let Ok(c) = CString::new(name) {
            // SAFETY: strdup copies into libc-owned memory; head is valid.
            unsafe { (*head).ai_canonname = libc::strdup(c.as_ptr()) };
        }
    }
    if !head.is_null() {
        OURS.lock()
            .get_or_insert_with(HashSet::new)
            .insert(head as usize);
    }
    head
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn freeaddrinfo(res: *mut addrinfo) {
    let ours = !res.is_null()
        && OURS
            .lock()
            .as_mut()
            .is_some_and(|s| s.remove(&(res as usize)));
    if !ours {
        // SAFETY: a list from libc's getaddrinfo.
        return unsafe { real!(freeaddrinfo: fn(*mut addrinfo) -> ())(res) };
    }
    let mut cur = res;
    while !cur.is_null() {
        // SAFETY: walking a list this layer built; each node is one calloc'ed Entry.
        unsafe {
            let next = (*cur).ai_next;
            if !(*cur).ai_canonname.is_null() {
                libc::free((*cur).ai_canonname.cast());
            }
            libc::free(cur.cast());
            cur = next;
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostname(name: *mut c_char, len: size_t) -> c_int {
    let real = real!(gethostname: fn(*mut c_char, size_t) -> c_int);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(name, len) };
    };
    match ops::hostname() {
        Ok(host) => {
            let bytes = host.as_bytes();
            if bytes.len() >= len {
                return fail(&HookError::Errno(libc::ENAMETOOLONG));
            }
            // SAFETY: gethostname(2): name has len writable bytes; we write
            // bytes.len() + 1 < = len.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), name.cast::<u8>(), bytes.len());
                *name.add(bytes.len()) = 0;
            }
            0
        }
        Err(HookError::Bypass(_)) => unsafe { real(name, len) },
        Err(_) => unsafe { real(name, len) },
    }
}
