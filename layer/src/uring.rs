//! io_uring: operations submitted to a ring are performed by the kernel
//! without any libc call the layer could see, so a program using io_uring
//! for the target's files or connections would silently reach local ones
//! (node's libuv with `UV_USE_IO_URING=1` stats and reads files through
//! its ring). While the layer is active, creating a ring is refused with
//! `ENOSYS`, which libuv, liburing users and most runtimes treat as "no
//! io_uring on this kernel" and fall back to ordinary calls; the program is
//! told once on stderr. Rings are caught at `syscall(SYS_io_uring_setup)`
//! (libuv, glibc-based code) and at liburing's exported `io_uring_setup`
//! and `io_uring_queue_init*` (liburing issues the system call itself).
//! `REMORA_ALLOW_IO_URING=1` lets rings through (the program then bypasses
//! remora for whatever it submits to them).

use crate::guard::DetourGuard;
use crate::real::real;
use libc::{c_int, c_long, c_uint, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

/// Environment variable that lets io_uring through.
pub const ALLOW_ENV: &str = "REMORA_ALLOW_IO_URING";

static WARNED: AtomicBool = AtomicBool::new(false);

/// Whether to refuse a ring now (warning once when refusing).
pub fn refuse() -> bool {
    if crate::state::get().is_none() {
        return false;
    }
    if std::env::var_os(ALLOW_ENV).is_some_and(|v| v == "1") {
        return false;
    }
    if !WARNED.swap(true, Ordering::Relaxed) {
        let _g = DetourGuard::enter();
        crate::session::warn(&format!(
            "remora: this program tried to use io_uring, whose operations remora cannot see \
             (they would reach local files and connections, not the target's); refused with \
             ENOSYS so it uses ordinary calls ({ALLOW_ENV}=1 allows it)"
        ));
    }
    true
}

/// liburing's `io_uring_setup`: `-errno` on failure.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn io_uring_setup(entries: c_uint, params: *mut c_void) -> c_int {
    if refuse() {
        return -libc::ENOSYS;
    }
    let real = real!(io_uring_setup: fn(c_uint, *mut c_void) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(entries, params) }
}

/// liburing's `io_uring_queue_init`: `-errno` on failure.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn io_uring_queue_init(
    entries: c_uint,
    ring: *mut c_void,
    flags: c_uint,
) -> c_int {
    if refuse() {
        return -libc::ENOSYS;
    }
    let real = real!(io_uring_queue_init: fn(c_uint, *mut c_void, c_uint) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(entries, ring, flags) }
}

/// liburing's `io_uring_queue_init_params`: `-errno` on failure.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn io_uring_queue_init_params(
    entries: c_uint,
    ring: *mut c_void,
    params: *mut c_void,
) -> c_int {
    if refuse() {
        return -libc::ENOSYS;
    }
    let real = real!(io_uring_queue_init_params: fn(c_uint, *mut c_void, *mut c_void) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(entries, ring, params) }
}

/// `syscall(SYS_io_uring_setup, ...)`: `-1` with `ENOSYS` when refused.
pub fn setup_via_syscall() -> Option<c_long> {
    if refuse() {
        crate::error::set_errno(libc::ENOSYS);
        Some(-1)
    } else {
        None
    }
}
