//! `syscall(2)`: some programs reach newer system calls through the generic
//! wrapper instead of their libc functions (gnulib, used by coreutils' `mv`,
//! calls `syscall(SYS_renameat2, ...)`; libuv, under node, calls `statx`
//! this way). `renameat2`, `statx`, `openat2` and `getdents64` are routed to
//! the layer's own hooks, `io_uring_setup` is refused ([`crate::uring`]);
//! every other call goes to libc unchanged.
//!
//! `syscall` is variadic in C; on the ABIs we support (x86_64 SysV, aarch64
//! Linux) its arguments travel in registers, so six fixed `c_long` parameters
//! receive whatever the caller passed.

use crate::real::real;
use libc::{c_char, c_int, c_long};

#[unsafe(no_mangle)]
pub unsafe extern "C" fn syscall(
    number: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    if number == libc::SYS_renameat2 {
        // SAFETY: the caller passed renameat2's arguments.
        return unsafe {
            crate::file::hooks::renameat2(
                a1 as c_int,
                a2 as *const c_char,
                a3 as c_int,
                a4 as *const c_char,
                a5 as libc::c_uint,
            )
        } as c_long;
    }
    let real = real!(syscall: fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long);
    match number {
        // libuv (node's `fs.stat*`) calls statx this way.
        libc::SYS_statx => {
            // SAFETY: the caller passed statx's arguments.
            return unsafe {
                crate::file::stat::statx(
                    a1 as c_int,
                    a2 as *const c_char,
                    a3 as c_int,
                    a4 as libc::c_uint,
                    a5 as *mut libc::statx,
                )
            } as c_long;
        }
        libc::SYS_getdents64 => {
            // SAFETY: the caller passed getdents64's arguments.
            if let Some(n) = unsafe {
                crate::file::dir::getdents64_hook(a1 as c_int, a2 as *mut u8, a3 as usize)
            } {
                return n as c_long;
            }
        }
        // libuv (node) creates its rings this way.
        libc::SYS_io_uring_setup => {
            if let Some(refused) = crate::uring::setup_via_syscall() {
                return refused;
            }
        }
        libc::SYS_openat2 => {
            // SAFETY: the caller passed openat2's arguments.
            return unsafe { openat2(a1 as c_int, a2 as *const c_char, a3, a4, real) };
        }
        _ => {}
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(number, a1, a2, a3, a4, a5, a6) }
}

type RawSyscall =
    unsafe extern "C" fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long;

/// `openat2(dirfd, path, how, size)`: routed like `openat` with `how`'s
/// flags and mode. The `resolve` restrictions (`RESOLVE_BENEATH`...) are
/// applied to local paths only: the agent's open has no equivalent.
///
/// # Safety
/// openat2(2)'s contract: `how` points to `size` readable bytes.
unsafe fn openat2(
    dirfd: c_int,
    path: *const c_char,
    how: c_long,
    size: c_long,
    real: RawSyscall,
) -> c_long {
    let local = || {
        // SAFETY: forwarding the caller's arguments unchanged.
        unsafe {
            real(
                libc::SYS_openat2,
                dirfd as c_long,
                path as c_long,
                how,
                size,
                0,
                0,
            )
        }
    };
    let how_ptr = how as *const libc::open_how;
    if how_ptr.is_null() || (size as usize) < std::mem::size_of::<libc::open_how>() {
        return local();
    }
    // SAFETY: `how` has at least size_of::<open_how>() readable bytes (checked above).
    let how = unsafe { how_ptr.read_unaligned() };
    let (flags, mode) = (how.flags as c_int, how.mode as libc::c_uint);
    let local_at = |d: c_int, p: *const c_char| {
        if d == dirfd && p == path {
            local() as c_int
        } else {
            // An absolute path for a remote dirfd: same `how`, new path.
            // SAFETY: `how_ptr` is the caller's open_how, `p` a C string.
            unsafe {
                real(
                    libc::SYS_openat2,
                    d as c_long,
                    p as c_long,
                    how_ptr as c_long,
                    size,
                    0,
                    0,
                ) as c_int
            }
        }
    };
    // SAFETY: open_at's contract: path is the caller's; `local_at` is the libc call.
    (unsafe { crate::file::hooks::open_at(dirfd, path, flags, mode, local_at) }) as c_long
}
