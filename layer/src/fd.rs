//! Book-keeping of the file descriptors the layer manages (remote-connected
//! sockets, remote files), and the `close`/`dup*`/`fcntl` hooks that keep it
//! consistent with the kernel's fd table.

use crate::error::fail;
use crate::guard::DetourGuard;
use crate::real::real;
use crate::session;
use libc::{c_int, c_ulong};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What the layer knows about one fd. Cloned on `dup` (an `Arc` inside keeps
/// shared remote resources alive until the last duplicate closes).
#[derive(Debug, Clone)]
pub enum Managed {
    Socket(crate::socket::SocketInfo),
    File(crate::file::FileInfo),
}

static TABLE: RwLock<Option<HashMap<c_int, Managed>>> = RwLock::new(None);
/// Number of entries: lets the hot path skip the lock when nothing is managed.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Start managing `fd` (replacing what was recorded for that number).
pub fn insert(fd: c_int, info: Managed) {
    let mut t = TABLE.write();
    if t.get_or_insert_with(HashMap::new)
        .insert(fd, info)
        .is_none()
    {
        COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

/// A copy of what is recorded for `fd`.
pub fn get(fd: c_int) -> Option<Managed> {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    TABLE.read().as_ref()?.get(&fd).cloned()
}

/// Run `f` on the entry of `fd` under the write lock.
pub fn update<R>(fd: c_int, f: impl FnOnce(&mut Managed) -> R) -> Option<R> {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    TABLE.write().as_mut()?.get_mut(&fd).map(f)
}

/// Forget `fd`; returns its entry.
pub fn remove(fd: c_int) -> Option<Managed> {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let removed = TABLE.write().as_mut()?.remove(&fd);
    if removed.is_some() {
        COUNT.fetch_sub(1, Ordering::Relaxed);
    }
    removed
}

fn duplicate(old: c_int, new: c_int) {
    if new < 0 || old == new {
        return;
    }
    // dup2/dup3 silently closed `new` if it was open.
    drop(remove(new));
    if let Some(info) = get(old) {
        insert(new, info);
    }
}

/// Keep shared remote state alive while any duplicate is open.
pub type Shared<T> = Arc<T>;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let real = real!(close: fn(c_int) -> c_int);
    // The layer closing its own fds (old sessions after fork) goes straight through.
    if let Some(_g) = DetourGuard::enter() {
        if session::is_session_fd(fd) {
            // Programs that close every fd (daemons, shells) must not cut the
            // layer off from its intproxy; pretend it worked.
            return 0;
        }
        // Dropping the entry releases remote resources of its last duplicate.
        drop(remove(fd));
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd) }
}

/// `dup2`/`dup3` onto the layer's connection would silently replace it.
fn targets_session(new: c_int) -> bool {
    session::is_session_fd(new) && DetourGuard::enter().is_some()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(old: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    let new = unsafe { real!(dup: fn(c_int) -> c_int)(old) };
    if new >= 0 && COUNT.load(Ordering::Relaxed) != 0 {
        if let Some(_g) = DetourGuard::enter() {
            duplicate(old, new);
        }
    }
    new
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if targets_session(new) {
        return fail(&crate::error::HookError::Errno(libc::EBADF));
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    let ret = unsafe { real!(dup2: fn(c_int, c_int) -> c_int)(old, new) };
    if ret >= 0 && (COUNT.load(Ordering::Relaxed) != 0) {
        if let Some(_g) = DetourGuard::enter() {
            duplicate(old, ret);
        }
    }
    ret
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if targets_session(new) {
        return fail(&crate::error::HookError::Errno(libc::EBADF));
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    let ret = unsafe { real!(dup3: fn(c_int, c_int, c_int) -> c_int)(old, new, flags) };
    if ret >= 0 && COUNT.load(Ordering::Relaxed) != 0 {
        if let Some(_g) = DetourGuard::enter() {
            duplicate(old, ret);
        }
    }
    ret
}

fn after_fcntl(fd: c_int, cmd: c_int, ret: c_int) -> c_int {
    if ret >= 0
        && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC)
        && COUNT.load(Ordering::Relaxed) != 0
    {
        if let Some(_g) = DetourGuard::enter() {
            duplicate(fd, ret);
        }
    }
    ret
}

// `fcntl` is variadic in C; its optional third argument is always passed in a
// register on the ABIs we support (x86_64 SysV, aarch64 Linux), so a fixed
// `c_ulong` receives it unchanged whatever its real type.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    let ret = unsafe { real!(fcntl: fn(c_int, c_int, c_ulong) -> c_int)(fd, cmd, arg) };
    after_fcntl(fd, cmd, ret)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    let ret = unsafe { real!(fcntl64: fn(c_int, c_int, c_ulong) -> c_int)(fd, cmd, arg) };
    after_fcntl(fd, cmd, ret)
}
