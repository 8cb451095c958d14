//! `syscall(2)`: some programs reach newer system calls through the generic
//! wrapper instead of their libc functions (gnulib, used by coreutils' `mv`,
//! calls `syscall(SYS_renameat2, ...)`). Those numbers are routed to the
//! layer's own hooks; every other call goes to libc unchanged.
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
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(number, a1, a2, a3, a4, a5, a6) }
}
