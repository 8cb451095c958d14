//! The `hostent` family: `gethostbyname`, `gethostbyname2`, their `_r`
//! variants, `gethostbyaddr`, `gethostbyaddr_r` and `getnameinfo`. Older programs and some
//! runtimes (CPython's `socket.gethostbyname` uses `gethostbyname_r`,
//! `getent hosts` uses `gethostbyname2`) resolve through these rather than
//! `getaddrinfo`; unhooked, they would ask the local resolver.

use super::ops::{self, Query};
use crate::error::HookError;
use crate::guard::DetourGuard;
use crate::real::real;
use crate::session;
use crate::sockaddr as sa;
use libc::{c_char, c_int, hostent, size_t, sockaddr, socklen_t};
use remora_protocol::dns::{AddrFamily, ReverseRequest, SockType};
use remora_protocol::{Request, Response};
use std::cell::RefCell;
use std::ffi::CStr;
use std::net::IpAddr;

unsafe extern "C" {
    fn __h_errno_location() -> *mut c_int;
}

const HOST_NOT_FOUND: c_int = 1;
const TRY_AGAIN: c_int = 2;
const NO_RECOVERY: c_int = 3;

fn set_h_errno(value: c_int) {
    // SAFETY: this thread's h_errno slot.
    unsafe { *__h_errno_location() = value };
}

/// A remote answer for the hostent calls: canonical name and raw addresses.
struct Answer {
    name: String,
    family: c_int,
    addrs: Vec<Vec<u8>>,
}

enum Outcome {
    Bypass,
    Found(Answer),
    /// `h_errno` value.
    Failed(c_int),
}

/// Resolve `name` remotely for `family` (AF_INET or AF_INET6).
///
/// # Safety
/// `name` must be null or NUL-terminated.
unsafe fn lookup(name: *const c_char, family: c_int) -> Outcome {
    if name.is_null() || (family != libc::AF_INET && family != libc::AF_INET6) {
        return Outcome::Bypass;
    }
    // SAFETY: caller guarantees NUL termination.
    let text = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    if ops::should_resolve_remotely(&text).is_err() {
        return Outcome::Bypass;
    }
    let want = if family == libc::AF_INET {
        AddrFamily::V4
    } else {
        AddrFamily::V6
    };
    let query = Query {
        name: text.clone(),
        family: want,
        socktype: SockType::Any,
        flags: 0,
    };
    match ops::lookup(query) {
        Err(HookError::Bypass(_)) => Outcome::Bypass,
        Err(e) if ops::eai_of(&e) == libc::EAI_AGAIN => Outcome::Failed(TRY_AGAIN),
        Err(e) if ops::eai_of(&e) == libc::EAI_NONAME => Outcome::Failed(HOST_NOT_FOUND),
        Err(_) => Outcome::Failed(NO_RECOVERY),
        Ok(reply) => {
            let addrs: Vec<Vec<u8>> = reply
                .addresses
                .iter()
                .filter_map(|ip| match (ip, family) {
                    (IpAddr::V4(v4), libc::AF_INET) => Some(v4.octets().to_vec()),
                    (IpAddr::V6(v6), libc::AF_INET6) => Some(v6.octets().to_vec()),
                    _ => None,
                })
                .collect();
            if addrs.is_empty() {
                Outcome::Failed(HOST_NOT_FOUND)
            } else {
                Outcome::Found(Answer {
                    name: reply.canonical_name.unwrap_or(text),
                    family,
                    addrs,
                })
            }
        }
    }
}

/// Lay `answer` out in the caller's buffer as a `hostent` (glibc's `_r`
/// contract). Returns `false` when `buf` is too small.
///
/// # Safety
/// `ret` must be writable and `buf` valid for `buflen` bytes.
unsafe fn fill(answer: &Answer, ret: *mut hostent, buf: *mut c_char, buflen: usize) -> bool {
    let ptr_size = std::mem::size_of::<*mut c_char>();
    let addr_len = answer.addrs.first().map_or(4, Vec::len);
    // Pointer arrays first (aligned), then addresses, then the name.
    let align = std::mem::align_of::<*mut c_char>();
    let offset = (align - (buf as usize % align)) % align;
    let aliases_at = offset;
    let addr_ptrs_at = aliases_at + ptr_size;
    let addrs_at = addr_ptrs_at + ptr_size * (answer.addrs.len() + 1);
    let name_at = addrs_at + addr_len * answer.addrs.len();
    let needed = name_at + answer.name.len() + 1;
    if needed > buflen {
        return false;
    }
    // SAFETY: every write below is within [buf, buf + needed) ⊆ the caller's buffer.
    unsafe {
        let base = buf.cast::<u8>();
        let aliases = base.add(aliases_at).cast::<*mut c_char>();
        *aliases = std::ptr::null_mut();
        let addr_ptrs = base.add(addr_ptrs_at).cast::<*mut c_char>();
        for (i, addr) in answer.addrs.iter().enumerate() {
            let at = base.add(addrs_at + i * addr_len);
            std::ptr::copy_nonoverlapping(addr.as_ptr(), at, addr_len);
            *addr_ptrs.add(i) = at.cast();
        }
        *addr_ptrs.add(answer.addrs.len()) = std::ptr::null_mut();
        let name = base.add(name_at);
        std::ptr::copy_nonoverlapping(answer.name.as_ptr(), name, answer.name.len());
        *name.add(answer.name.len()) = 0;
        (*ret).h_name = name.cast();
        (*ret).h_aliases = aliases;
        (*ret).h_addrtype = answer.family;
        (*ret).h_length = addr_len as c_int;
        (*ret).h_addr_list = addr_ptrs;
    }
    true
}

/// Per-thread storage for the non-reentrant calls (glibc's is per process;
/// valid until the next call on the same thread).
struct Static {
    ent: hostent,
    buf: Vec<u8>,
}

thread_local! {
    static STATIC: RefCell<Option<Box<Static>>> = const { RefCell::new(None) };
}

/// Answer a non-reentrant call from thread-local storage.
fn static_answer(answer: &Answer) -> *mut hostent {
    STATIC.with(|slot| {
        let mut slot = slot.borrow_mut();
        let storage = slot.get_or_insert_with(|| {
            Box::new(Static {
                // SAFETY: hostent is plain old data; fill() sets every field.
                ent: unsafe { std::mem::zeroed() },
                buf: Vec::new(),
            })
        });
        let needed = 64 + answer.name.len() + answer.addrs.len() * (16 + 8);
        storage.buf.resize(needed, 0);
        let buf = storage.buf.as_mut_ptr().cast::<c_char>();
        // SAFETY: the buffer is sized for this answer (checked by fill).
        if unsafe { fill(answer, &mut storage.ent, buf, needed) } {
            &mut storage.ent as *mut hostent
        } else {
            std::ptr::null_mut()
        }
    })
}

fn non_reentrant(outcome: Outcome, real: impl FnOnce() -> *mut hostent) -> *mut hostent {
    match outcome {
        Outcome::Bypass => real(),
        Outcome::Found(answer) => static_answer(&answer),
        Outcome::Failed(h) => {
            set_h_errno(h);
            std::ptr::null_mut()
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    let real = real!(gethostbyname: fn(*const c_char) -> *mut hostent);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(name) };
    };
    // SAFETY: gethostbyname(3): name is NUL-terminated.
    let outcome = unsafe { lookup(name, libc::AF_INET) };
    non_reentrant(outcome, || unsafe { real(name) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent {
    let real = real!(gethostbyname2: fn(*const c_char, c_int) -> *mut hostent);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(name, af) };
    };
    // SAFETY: name is NUL-terminated per the contract.
    let outcome = unsafe { lookup(name, af) };
    non_reentrant(outcome, || unsafe { real(name, af) })
}

type HostbynameR = unsafe extern "C" fn(
    *const c_char,
    *mut hostent,
    *mut c_char,
    size_t,
    *mut *mut hostent,
    *mut c_int,
) -> c_int;

/// Shared body of the `_r` variants.
///
/// # Safety
/// The glibc `gethostbyname_r` contract for every pointer.
unsafe fn reentrant(
    outcome: Outcome,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> Option<c_int> {
    match outcome {
        Outcome::Bypass => None,
        Outcome::Found(answer) => {
            // SAFETY: caller's buffer and out-parameters per the contract.
            unsafe {
                if fill(&answer, ret, buf, buflen) {
                    *result = ret;
                    Some(0)
                } else {
                    *result = std::ptr::null_mut();
                    if !h_errnop.is_null() {
                        *h_errnop = NO_RECOVERY;
                    }
                    Some(libc::ERANGE)
                }
            }
        }
        Outcome::Failed(h) => {
            // SAFETY: out-parameters per the contract.
            unsafe {
                *result = std::ptr::null_mut();
                if !h_errnop.is_null() {
                    *h_errnop = h;
                }
            }
            Some(if h == TRY_AGAIN {
                libc::EAGAIN
            } else {
                libc::ENOENT
            })
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname_r(
    name: *const c_char,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    let real: HostbynameR = real!(gethostbyname_r: fn(*const c_char, *mut hostent, *mut c_char, size_t, *mut *mut hostent, *mut c_int) -> c_int);
    if let Some(_g) = DetourGuard::enter() {
        // SAFETY: the caller upholds gethostbyname_r's contract.
        let answered = unsafe {
            let outcome = lookup(name, libc::AF_INET);
            reentrant(outcome, ret, buf, buflen, result, h_errnop)
        };
        if let Some(rc) = answered {
            return rc;
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(name, ret, buf, buflen, result, h_errnop) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    let real = real!(gethostbyname2_r: fn(*const c_char, c_int, *mut hostent, *mut c_char, size_t, *mut *mut hostent, *mut c_int) -> c_int);
    if let Some(_g) = DetourGuard::enter() {
        // SAFETY: the caller upholds gethostbyname2_r's contract.
        let answered = unsafe {
            let outcome = lookup(name, af);
            reentrant(outcome, ret, buf, buflen, result, h_errnop)
        };
        if let Some(rc) = answered {
            return rc;
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(name, af, ret, buf, buflen, result, h_errnop) }
}

/// Names of `ip` as the target knows them (its hosts file, then PTR).
fn reverse(ip: IpAddr) -> Result<Vec<String>, HookError> {
    crate::state::get().ok_or(HookError::Bypass("layer inactive"))?;
    match session::remote(Request::Reverse(ReverseRequest { address: ip }))? {
        Response::Reverse(reply) => Ok(reply.names),
        other => Err(session::protocol_violation(&other)),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getnameinfo(
    addr: *const sockaddr,
    addrlen: socklen_t,
    host: *mut c_char,
    hostlen: socklen_t,
    serv: *mut c_char,
    servlen: socklen_t,
    flags: c_int,
) -> c_int {
    let real = real!(getnameinfo: fn(*const sockaddr, socklen_t, *mut c_char, socklen_t, *mut c_char, socklen_t, c_int) -> c_int);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(addr, addrlen, host, hostlen, serv, servlen, flags) };
    };
    // SAFETY: getnameinfo(3): addr has addrlen readable bytes.
    let parsed = unsafe { sa::read(addr, addrlen) };
    let wants_name = !host.is_null() && hostlen > 0 && flags & libc::NI_NUMERICHOST == 0;
    let (Some(sock), true) = (parsed, wants_name) else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(addr, addrlen, host, hostlen, serv, servlen, flags) };
    };
    let names = match reverse(sock.ip()) {
        Ok(names) => names,
        Err(HookError::Bypass(_)) => {
            // SAFETY: forwarding the caller's arguments unchanged.
            return unsafe { real(addr, addrlen, host, hostlen, serv, servlen, flags) };
        }
        Err(_) => Vec::new(),
    };
    let name = match names.into_iter().next() {
        Some(name) => name,
        None if flags & libc::NI_NAMEREQD != 0 => return libc::EAI_NONAME,
        None => sock.ip().to_string(),
    };
    let name = if flags & libc::NI_NOFQDN != 0 {
        name.split('.').next().unwrap_or_default().to_string()
    } else {
        name
    };
    if name.len() + 1 > hostlen as usize {
        return libc::EAI_OVERFLOW;
    }
    // The service part is local knowledge (/etc/services): let libc do it.
    if !serv.is_null() && servlen > 0 {
        // SAFETY: only the service is asked for; host is null.
        let rc = unsafe {
            real(
                addr,
                addrlen,
                std::ptr::null_mut(),
                0,
                serv,
                servlen,
                flags | libc::NI_NUMERICHOST,
            )
        };
        if rc != 0 {
            return rc;
        }
    }
    // SAFETY: host has hostlen > name.len() writable bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(name.as_ptr(), host.cast::<u8>(), name.len());
        *host.add(name.len()) = 0;
    }
    0
}

/// The target's answer for a reverse lookup of `len` bytes at `addr`;
/// `None` for an address family or length the layer does not handle.
///
/// # Safety
/// `addr` must point to `len` readable bytes.
unsafe fn reverse_outcome(addr: *const libc::c_void, len: socklen_t, af: c_int) -> Option<Outcome> {
    if addr.is_null() {
        return None;
    }
    let ip = match (af, len) {
        // SAFETY: the caller passes `len` bytes of address.
        (libc::AF_INET, 4) => IpAddr::from(unsafe { *addr.cast::<[u8; 4]>() }),
        (libc::AF_INET6, 16) => IpAddr::from(unsafe { *addr.cast::<[u8; 16]>() }),
        _ => return None,
    };
    Some(match reverse(ip) {
        Err(HookError::Bypass(_)) => Outcome::Bypass,
        Ok(names) if !names.is_empty() => {
            let raw = match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            Outcome::Found(Answer {
                name: names[0].clone(),
                family: af,
                addrs: vec![raw],
            })
        }
        Ok(_) => Outcome::Failed(HOST_NOT_FOUND),
        Err(_) => Outcome::Failed(TRY_AGAIN),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyaddr(
    addr: *const libc::c_void,
    len: socklen_t,
    af: c_int,
) -> *mut hostent {
    let real = real!(gethostbyaddr: fn(*const libc::c_void, socklen_t, c_int) -> *mut hostent);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(addr, len, af) };
    };
    // SAFETY: the caller passes `len` bytes of address.
    match unsafe { reverse_outcome(addr, len, af) } {
        Some(outcome) => non_reentrant(outcome, || unsafe { real(addr, len, af) }),
        // SAFETY: forwarding the caller's arguments unchanged.
        None => unsafe { real(addr, len, af) },
    }
}

/// `gethostbyaddr_r` (CPython's `socket.gethostbyaddr` uses it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyaddr_r(
    addr: *const libc::c_void,
    len: socklen_t,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    let real = real!(gethostbyaddr_r: fn(*const libc::c_void, socklen_t, c_int, *mut hostent, *mut c_char, size_t, *mut *mut hostent, *mut c_int) -> c_int);
    if let Some(_g) = DetourGuard::enter() {
        // SAFETY: the caller upholds gethostbyaddr_r's contract.
        let answered = unsafe {
            reverse_outcome(addr, len, af)
                .and_then(|outcome| reentrant(outcome, ret, buf, buflen, result, h_errnop))
        };
        if let Some(rc) = answered {
            return rc;
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(addr, len, af, ret, buf, buflen, result, h_errnop) }
}
