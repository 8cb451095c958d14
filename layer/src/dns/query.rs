//! Raw DNS queries and asynchronous lookups answered by the target:
//!
//! * `res_query`, `res_search`, `res_querydomain` and their `res_n*` and
//!   `__res_*` names: glibc sends these to the nameservers of the local
//!   `/etc/resolv.conf` through internal calls the socket hooks cannot see.
//!   For a name the DNS policy sends to the target, the agent asks the
//!   target's nameservers (with its search list for `res_search`) and the
//!   reply message comes back as received. Failures set `h_errno` as glibc
//!   does (the global one; `res_n*` do not update `statp->res_h_errno`).
//! * `getaddrinfo_a`: glibc's worker threads call its internal
//!   `getaddrinfo`. Each request goes through this layer's `getaddrinfo`
//!   instead, before `getaddrinfo_a` returns (also with `GAI_NOWAIT`: the
//!   notification is then delivered at once), so `gai_error`,
//!   `gai_suspend` and `freeaddrinfo` work on the results unchanged.

use super::ops;
use crate::error::{HookError, HookResult};
use crate::guard::DetourGuard;
use crate::real::real;
use crate::session;
use libc::{c_char, c_int, c_void};
use remora_protocol::dns::DnsQueryRequest;
use remora_protocol::{ErrorCode, Request, Response};
use std::ffi::CStr;

unsafe extern "C" {
    fn __h_errno_location() -> *mut c_int;
}

// netdb.h's h_errno values.
const HOST_NOT_FOUND: c_int = 1;
const TRY_AGAIN: c_int = 2;
const NO_RECOVERY: c_int = 3;
const NO_DATA: c_int = 4;

fn set_h_errno(code: c_int) {
    // SAFETY: glibc's thread-local h_errno slot.
    unsafe { *__h_errno_location() = code };
}

/// What a remote raw query produced: the reply message, or an `h_errno`.
enum Answered {
    Message(bytes::Bytes),
    Failed(c_int),
}

fn query(name: &str, class: c_int, rtype: c_int, search: bool) -> HookResult<Answered> {
    ops::should_resolve_remotely(name)?;
    let (Ok(class), Ok(rtype)) = (u16::try_from(class), u16::try_from(rtype)) else {
        return Err(HookError::Errno(libc::EINVAL));
    };
    let request = Request::DnsQuery(DnsQueryRequest {
        name: name.to_owned(),
        class,
        rtype,
        search,
    });
    match session::remote(request) {
        Ok(Response::DnsAnswer(answer)) => Ok(Answered::Message(answer.message)),
        Ok(other) => Err(session::protocol_violation(&other)),
        // An agent without raw queries: the local resolver, as before.
        Err(HookError::Remote(e)) if e.code == ErrorCode::Unsupported => {
            Err(HookError::Bypass("the agent cannot answer raw DNS queries"))
        }
        Err(HookError::Remote(e)) if e.code == ErrorCode::Forbidden => {
            Ok(Answered::Failed(NO_RECOVERY))
        }
        Err(HookError::Remote(e)) if e.code == ErrorCode::NameNotResolved => {
            Ok(Answered::Failed(HOST_NOT_FOUND))
        }
        Err(HookError::Remote(_)) => Ok(Answered::Failed(TRY_AGAIN)),
        Err(e) => Err(e),
    }
}

/// Copy the reply into the caller's buffer (cut to `anslen`, with the TC
/// bit set then) and return what `res_query` returns.
///
/// # Safety
/// `answer` must have `anslen` writable bytes.
unsafe fn deliver(answered: Answered, answer: *mut u8, anslen: c_int) -> c_int {
    let message = match answered {
        Answered::Message(m) => m,
        Answered::Failed(code) => {
            set_h_errno(code);
            return -1;
        }
    };
    let room = usize::try_from(anslen).unwrap_or(0);
    let n = message.len().min(room);
    if n > 0 && !answer.is_null() {
        // SAFETY: caller guarantees anslen writable bytes; n <= anslen.
        unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), answer, n) };
        if n < message.len() && n > 2 {
            // SAFETY: byte 2 is inside the copied header.
            unsafe { *answer.add(2) |= 0x02 };
        }
    }
    let (rcode, answers) = if message.len() >= 12 {
        (
            message[3] & 0x0f,
            u16::from_be_bytes([message[6], message[7]]),
        )
    } else {
        (2, 0)
    };
    match (rcode, answers) {
        (0, 0) => {
            set_h_errno(NO_DATA);
            -1
        }
        (0, _) => n as c_int,
        (3, _) => {
            set_h_errno(HOST_NOT_FOUND);
            -1
        }
        (2, _) => {
            set_h_errno(TRY_AGAIN);
            -1
        }
        _ => {
            set_h_errno(NO_RECOVERY);
            -1
        }
    }
}

/// Shared body of the query entry points; `None`: call libc.
///
/// # Safety
/// `name` NUL-terminated or null; `answer` with `anslen` writable bytes.
unsafe fn hook(
    name: *const c_char,
    domain: *const c_char,
    class: c_int,
    rtype: c_int,
    answer: *mut u8,
    anslen: c_int,
    search: bool,
) -> Option<c_int> {
    let _g = DetourGuard::enter()?;
    if name.is_null() {
        return None;
    }
    // SAFETY: caller's contract.
    let name = unsafe { CStr::from_ptr(name) }.to_str().ok()?;
    let full = if domain.is_null() {
        name.to_owned()
    } else {
        // SAFETY: caller's contract.
        let domain = unsafe { CStr::from_ptr(domain) }.to_str().ok()?;
        format!("{}.{}", name.trim_end_matches('.'), domain)
    };
    match query(&full, class, rtype, search) {
        // SAFETY: caller's contract.
        Ok(answered) => Some(unsafe { deliver(answered, answer, anslen) }),
        Err(HookError::Bypass(_)) => None,
        Err(_) => {
            set_h_errno(TRY_AGAIN);
            Some(-1)
        }
    }
}

/// Define `res_query`-shaped entry points under each of their names.
/// The libc function behind a resolver hook: `names` are its spellings
/// (`res_query`, `__res_query`), tried in order; `None` when libc has none.
fn next_fn(
    slot: &'static std::sync::atomic::AtomicPtr<c_void>,
    names: &[&'static [u8]],
) -> Option<*mut c_void> {
    let ptr = crate::real::resolve_any(slot, names);
    (!ptr.is_null()).then_some(ptr)
}

/// The failure of a resolver call libc cannot make either.
fn unavailable() -> c_int {
    set_h_errno(NO_RECOVERY);
    -1
}

macro_rules! query_hooks {
    ($search:expr => $($name:ident / $other:literal),+) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            dname: *const c_char,
            class: c_int,
            rtype: c_int,
            answer: *mut u8,
            anslen: c_int,
        ) -> c_int {
            // SAFETY: res_query(3) contract.
            if let Some(n) = unsafe { hook(dname, std::ptr::null(), class, rtype, answer, anslen, $search) } {
                return n;
            }
            static SLOT: std::sync::atomic::AtomicPtr<c_void> =
                std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
            let names: [&[u8]; 2] = [concat!(stringify!($name), "\0").as_bytes(), $other];
            let Some(ptr) = next_fn(&SLOT, &names) else {
                return unavailable();
            };
            // SAFETY: the symbol has res_query's C signature.
            let real: unsafe extern "C" fn(*const c_char, c_int, c_int, *mut u8, c_int) -> c_int =
                unsafe { std::mem::transmute(ptr) };
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real(dname, class, rtype, answer, anslen) }
        }
    )+};
}

macro_rules! nquery_hooks {
    ($search:expr => $($name:ident / $other:literal),+) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            statp: *mut c_void,
            dname: *const c_char,
            class: c_int,
            rtype: c_int,
            answer: *mut u8,
            anslen: c_int,
        ) -> c_int {
            // SAFETY: res_nquery(3) contract.
            if let Some(n) = unsafe { hook(dname, std::ptr::null(), class, rtype, answer, anslen, $search) } {
                return n;
            }
            static SLOT: std::sync::atomic::AtomicPtr<c_void> =
                std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
            let names: [&[u8]; 2] = [concat!(stringify!($name), "\0").as_bytes(), $other];
            let Some(ptr) = next_fn(&SLOT, &names) else {
                return unavailable();
            };
            // SAFETY: the symbol has res_nquery's C signature.
            let real: unsafe extern "C" fn(*mut c_void, *const c_char, c_int, c_int, *mut u8, c_int) -> c_int =
                unsafe { std::mem::transmute(ptr) };
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real(statp, dname, class, rtype, answer, anslen) }
        }
    )+};
}

query_hooks!(false => res_query / b"__res_query\0", __res_query / b"res_query\0");
query_hooks!(true => res_search / b"__res_search\0", __res_search / b"res_search\0");
nquery_hooks!(false => res_nquery / b"__res_nquery\0", __res_nquery / b"res_nquery\0");
nquery_hooks!(true => res_nsearch / b"__res_nsearch\0", __res_nsearch / b"res_nsearch\0");

macro_rules! querydomain_hooks {
    ($($name:ident / $other:literal),+) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            name: *const c_char,
            domain: *const c_char,
            class: c_int,
            rtype: c_int,
            answer: *mut u8,
            anslen: c_int,
        ) -> c_int {
            // SAFETY: res_querydomain(3) contract.
            if let Some(n) = unsafe { hook(name, domain, class, rtype, answer, anslen, false) } {
                return n;
            }
            static SLOT: std::sync::atomic::AtomicPtr<c_void> =
                std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
            let names: [&[u8]; 2] = [concat!(stringify!($name), "\0").as_bytes(), $other];
            let Some(ptr) = next_fn(&SLOT, &names) else {
                return unavailable();
            };
            // SAFETY: the symbol has res_querydomain's C signature.
            let real: unsafe extern "C" fn(*const c_char, *const c_char, c_int, c_int, *mut u8, c_int) -> c_int =
                unsafe { std::mem::transmute(ptr) };
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real(name, domain, class, rtype, answer, anslen) }
        }
    )+};
}

querydomain_hooks!(
    res_querydomain / b"__res_querydomain\0",
    __res_querydomain / b"res_querydomain\0"
);

macro_rules! nquerydomain_hooks {
    ($($name:ident / $other:literal),+) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            statp: *mut c_void,
            name: *const c_char,
            domain: *const c_char,
            class: c_int,
            rtype: c_int,
            answer: *mut u8,
            anslen: c_int,
        ) -> c_int {
            // SAFETY: res_nquerydomain(3) contract.
            if let Some(n) = unsafe { hook(name, domain, class, rtype, answer, anslen, false) } {
                return n;
            }
            static SLOT: std::sync::atomic::AtomicPtr<c_void> =
                std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
            let names: [&[u8]; 2] = [concat!(stringify!($name), "\0").as_bytes(), $other];
            let Some(ptr) = next_fn(&SLOT, &names) else {
                return unavailable();
            };
            // SAFETY: the symbol has res_nquerydomain's C signature.
            let real: unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, c_int, c_int, *mut u8, c_int) -> c_int =
                unsafe { std::mem::transmute(ptr) };
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe { real(statp, name, domain, class, rtype, answer, anslen) }
        }
    )+};
}

nquerydomain_hooks!(
    res_nquerydomain / b"__res_nquerydomain\0",
    __res_nquerydomain / b"res_nquerydomain\0"
);

// ---------------------------------------------------------------- getaddrinfo_a

/// glibc's `struct gaicb`.
#[repr(C)]
struct Gaicb {
    ar_name: *const c_char,
    ar_service: *const c_char,
    ar_request: *const libc::addrinfo,
    ar_result: *mut libc::addrinfo,
    ret: c_int,
    _reserved: [c_int; 5],
}

const GAI_WAIT: c_int = 0;
const GAI_NOWAIT: c_int = 1;

/// `struct sigevent`'s `SIGEV_THREAD` members, which the libc crate does
/// not name: the function and attributes follow the three leading fields.
#[repr(C)]
struct SigeventThread {
    value: libc::sigval,
    signo: c_int,
    notify: c_int,
    function: Option<unsafe extern "C" fn(libc::sigval)>,
    attributes: *mut c_void,
}

#[derive(Clone, Copy)]
struct SendSigval(libc::sigval);
// SAFETY: the value is the program's opaque token for its own callback.
unsafe impl Send for SendSigval {}

/// Deliver a `GAI_NOWAIT` completion as the program asked.
///
/// # Safety
/// `sev` must be null or a valid `sigevent`.
unsafe fn notify(sev: *const libc::sigevent) {
    if sev.is_null() {
        return;
    }
    // SAFETY: valid sigevent per the contract; the thread members overlay
    // the union that follows its leading fields.
    let thread = unsafe { &*sev.cast::<SigeventThread>() };
    match thread.notify {
        libc::SIGEV_SIGNAL => {
            // SAFETY: queueing the program's own signal to itself.
            unsafe { libc::sigqueue(libc::getpid(), thread.signo, thread.value) };
        }
        libc::SIGEV_THREAD => {
            if let Some(function) = thread.function {
                let value = SendSigval(thread.value);
                std::thread::spawn(move || {
                    let value = value;
                    // SAFETY: the program's callback with its own value.
                    unsafe { function(value.0) };
                });
            }
        }
        _ => {}
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getaddrinfo_a(
    mode: c_int,
    list: *mut *mut c_void,
    nitems: c_int,
    sev: *mut libc::sigevent,
) -> c_int {
    let real =
        real!(getaddrinfo_a: fn(c_int, *mut *mut c_void, c_int, *mut libc::sigevent) -> c_int);
    let active = crate::state::get().is_some() && DetourGuard::enter().is_some();
    if !active || (mode != GAI_WAIT && mode != GAI_NOWAIT) || nitems < 0 || list.is_null() {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(mode, list, nitems, sev) };
    }
    for i in 0..nitems as usize {
        // SAFETY: list holds nitems entries (getaddrinfo_a(3)).
        let item = unsafe { *list.add(i) }.cast::<Gaicb>();
        if item.is_null() {
            continue;
        }
        // SAFETY: a live gaicb of the caller; getaddrinfo is this layer's hook.
        unsafe {
            let cb = &mut *item;
            cb.ar_result = std::ptr::null_mut();
            cb.ret = super::hooks::getaddrinfo(
                cb.ar_name,
                cb.ar_service,
                cb.ar_request,
                &mut cb.ar_result,
            );
        }
    }
    if mode == GAI_NOWAIT {
        // SAFETY: the caller's sigevent or null.
        unsafe { notify(sev) };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the layer inactive every spelling reaches libc (glibc 2.34+
    /// exports `__res_query` only as a compatibility symbol, which
    /// `dlsym` cannot find: the hook must fall back to `res_query`). A name
    /// too long to encode fails inside libc before any packet is sent.
    #[test]
    fn every_spelling_reaches_libc_when_the_layer_is_inactive() {
        let long = vec![b'a'; 300].into_iter().chain([0]).collect::<Vec<u8>>();
        let mut answer = [0u8; 512];
        // SAFETY: a NUL-terminated name and a 512-byte buffer.
        let rcs = unsafe {
            [
                __res_query(long.as_ptr().cast(), 1, 1, answer.as_mut_ptr(), 512),
                res_query(long.as_ptr().cast(), 1, 1, answer.as_mut_ptr(), 512),
                __res_search(long.as_ptr().cast(), 1, 1, answer.as_mut_ptr(), 512),
            ]
        };
        assert_eq!(rcs, [-1, -1, -1]);
    }
}
