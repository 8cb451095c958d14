//! Resolving the next definition of an interposed libc symbol (`dlsym(RTLD_NEXT)`).

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Look up `name` (NUL-terminated) after this library in the link order,
/// caching the answer in `slot`. Aborts when libc lacks the symbol: calling a
/// null function pointer would be worse.
pub fn resolve(slot: &AtomicPtr<c_void>, name: &'static [u8]) -> *mut c_void {
    let ptr = slot.load(Ordering::Acquire);
    if !ptr.is_null() {
        return ptr;
    }
    // SAFETY: `name` is a NUL-terminated static string; RTLD_NEXT is valid in a
    // shared object.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) };
    if found.is_null() {
        let msg = b"remora layer: libc symbol missing, aborting\n";
        // SAFETY: writing a static buffer to stderr.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        std::process::abort();
    }
    slot.store(found, Ordering::Release);
    found
}

/// `real!(connect: fn(c_int, *const sockaddr, socklen_t) -> c_int)` evaluates
/// to the libc `connect` that this layer shadows.
macro_rules! real {
    ($name:ident : fn($($arg:ty),* $(,)?) -> $ret:ty) => {{
        static SLOT: ::std::sync::atomic::AtomicPtr<::std::ffi::c_void> =
            ::std::sync::atomic::AtomicPtr::new(::std::ptr::null_mut());
        let ptr = $crate::real::resolve(&SLOT, concat!(stringify!($name), "\0").as_bytes());
        // SAFETY: the symbol has this C signature in every libc we support.
        #[allow(unused_unsafe)]
        let f = unsafe {
            ::std::mem::transmute::<*mut ::std::ffi::c_void, unsafe extern "C" fn($($arg),*) -> $ret>(ptr)
        };
        f
    }};
}
pub(crate) use real;

/// Like [`resolve`], trying `names` in order and returning null (instead of
/// aborting) when none exists: for symbols whose exported name differs
/// between libc versions (`__res_query` is a default symbol of old
/// libresolv, a compatibility one of glibc 2.34+, where `res_query` is it).
pub fn resolve_any(slot: &AtomicPtr<c_void>, names: &[&'static [u8]]) -> *mut c_void {
    let ptr = slot.load(Ordering::Acquire);
    if !ptr.is_null() {
        return ptr;
    }
    for name in names {
        // SAFETY: NUL-terminated static strings; RTLD_NEXT is valid here.
        let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) };
        if !found.is_null() {
            slot.store(found, Ordering::Release);
            return found;
        }
    }
    std::ptr::null_mut()
}
