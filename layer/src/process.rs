//! Process creation: keep the layer consistent across `fork`/`vfork`.
//!
//! `fork` needs no hook: `pthread_atfork` handlers (see [`crate::session`])
//! keep the connection mutex consistent, and a child notices its new pid and
//! opens its own intproxy session on first use. `vfork` is turned into `fork`:
//! a vfork child shares the parent's memory, so any remote call it made before
//! `exec` would replace the parent's connection under its feet.
//! Exec'd children load the layer again through the inherited `LD_PRELOAD`.

use crate::real::real;
use libc::pid_t;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn vfork() -> pid_t {
    // SAFETY: fork has no preconditions; callers of vfork only exec or _exit.
    unsafe { real!(fork: fn() -> pid_t)() }
}
