//! Process creation: keep the layer consistent across `fork`/`vfork`.
//!
//! `fork` needs no hook: [`install_fork_handlers`] registers `pthread_atfork`
//! handlers that take every lock a hook can take (in
//! [`crate::sync::LOCK_ORDER`]) before the address space is copied, release
//! them in the parent and reset them in the child. So the child of a
//! multithreaded program never inherits a lock that a vanished thread held.
//! The child notices its new pid and opens its own intproxy connections on
//! first use.
//!
//! `vfork` becomes `fork` (a vfork child shares the parent's memory, so any
//! remote call it made before `exec` would corrupt the parent's connection
//! pool), but keeps its meaning for the parent: it returns only once the
//! child has exec'd or exited. A close-on-exec pipe tells: its write end
//! closes in the child at either event, and the parent reads until EOF.
//! Exec'd children load the layer again through the inherited `LD_PRELOAD`.

use crate::real::real;
use crate::sync;
use libc::pid_t;
use std::sync::Once;

static HANDLERS: Once = Once::new();

/// Register the fork handlers (once per process; they survive in children).
pub fn install_fork_handlers() {
    HANDLERS.call_once(|| {
        // SAFETY: registering plain extern "C" functions without arguments.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    });
}

/// Take every layer lock, in [`sync::LOCK_ORDER`]. Each is a leaf held only
/// for map operations, so this waits microseconds, never for the network.
extern "C" fn prepare() {
    sync::hold_mutex(&crate::session::POOL);
    sync::hold_mutex(&crate::broker::POOL);
    sync::hold_rwlock(&crate::fd::TABLE);
    sync::hold_mutex(&crate::file::dir::DIRS);
    sync::hold_mutex(&crate::file::dir::CURSORS);
    sync::hold_mutex(&crate::dns::hooks::OURS);
    sync::hold_mutex(&crate::dns::HOSTNAMES);
    sync::hold_mutex(&crate::socket::UDP_ROUTES);
}

/// Release what [`prepare`] took, in reverse order.
extern "C" fn parent() {
    // SAFETY: `prepare` took each of these on this thread.
    unsafe {
        sync::release_mutex(&crate::socket::UDP_ROUTES);
        sync::release_mutex(&crate::dns::HOSTNAMES);
        sync::release_mutex(&crate::dns::hooks::OURS);
        sync::release_mutex(&crate::file::dir::CURSORS);
        sync::release_mutex(&crate::file::dir::DIRS);
        sync::release_rwlock(&crate::fd::TABLE);
        sync::release_mutex(&crate::broker::POOL);
        sync::release_mutex(&crate::session::POOL);
    }
}

/// The child's only thread: fix up state other threads were using, then free
/// the locks (no sleeper exists here to wake).
extern "C" fn child() {
    // SAFETY: this is the fork child handler and `prepare` holds the locks.
    unsafe {
        crate::file::dir::forget_busy_in_child();
        sync::reset_mutex(&crate::socket::UDP_ROUTES);
        sync::reset_mutex(&crate::dns::HOSTNAMES);
        sync::reset_mutex(&crate::dns::hooks::OURS);
        sync::reset_mutex(&crate::file::dir::CURSORS);
        sync::reset_mutex(&crate::file::dir::DIRS);
        sync::reset_rwlock(&crate::fd::TABLE);
        sync::reset_mutex(&crate::broker::POOL);
        sync::reset_mutex(&crate::session::POOL);
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn vfork() -> pid_t {
    let fork = real!(fork: fn() -> pid_t);
    // The pipe is the layer's own: its calls must not reach the hooks.
    let guard = crate::guard::DetourGuard::enter();
    let mut fds = [-1; 2];
    // SAFETY: pipe2 fills a 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        // SAFETY: fork has no preconditions; callers of vfork only exec or _exit.
        return unsafe { fork() };
    }
    let [read_end, write_end] = fds;
    // SAFETY: as above.
    let pid = unsafe { fork() };
    if pid == 0 {
        // The child keeps the write end until exec (close-on-exec) or exit.
        // SAFETY: closing our copy of the read end.
        unsafe { libc::close(read_end) };
        drop(guard);
        return 0;
    }
    // SAFETY: closing the parent's write end, then reading until every copy is
    // gone: EOF means the child exec'd or exited.
    unsafe {
        libc::close(write_end);
        let mut byte = 0u8;
        if pid > 0 {
            loop {
                let n = libc::read(read_end, (&raw mut byte).cast(), 1);
                if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                    break;
                }
            }
        }
        libc::close(read_end);
    }
    drop(guard);
    pid
}
