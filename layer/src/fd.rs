//! Book-keeping of the file descriptors the layer manages (remote-connected
//! sockets, remote files), and the `close`/`dup*`/`fcntl` hooks that keep it
//! consistent with the kernel's fd table. Calls that create fds of other
//! kinds clear stale entries in [`create`].

pub mod create;

use crate::error::fail;
use crate::guard::DetourGuard;
use crate::real::real;
use crate::session;
use crate::sync::ForkRwLock;
use libc::{c_int, c_ulong};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What the layer knows about one fd. Cloned on `dup` (an `Arc` inside keeps
/// shared remote resources alive until the last duplicate closes).
#[derive(Debug, Clone)]
pub enum Managed {
    Socket(crate::socket::SocketInfo),
    File(crate::file::FileInfo),
}

/// The table. A leaf lock (see [`crate::sync`]): entries are dropped only
/// after it is released, because dropping the last duplicate of a remote
/// handle is a round trip to the intproxy.
pub(crate) static TABLE: ForkRwLock<Option<HashMap<c_int, Managed>>> = ForkRwLock::new(None);
/// Number of entries: lets the hot path skip the lock when nothing is managed.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// fds below this have a bit in [`MANAGED`]; higher ones fall back to the table.
const BITMAP_FDS: c_int = 4096;
/// One bit per fd below [`BITMAP_FDS`]: set while the table has an entry for it.
/// Every `read`, `write`, `close` and local `open` of a program asks whether its fd
/// is managed; once any fd is (the session's streams, a pod file), answering "no"
/// from one atomic load instead of the table's lock and hash keeps local I/O at
/// libc speed. Changed only under the table's write lock, together with the entry.
static MANAGED: [AtomicU64; (BITMAP_FDS / 64) as usize] =
    [const { AtomicU64::new(0) }; (BITMAP_FDS / 64) as usize];

fn set_managed(fd: c_int, on: bool) {
    if (0..BITMAP_FDS).contains(&fd) {
        let (word, bit) = ((fd / 64) as usize, 1u64 << (fd % 64));
        if on {
            MANAGED[word].fetch_or(bit, Ordering::Release);
        } else {
            MANAGED[word].fetch_and(!bit, Ordering::Release);
        }
    }
}

/// Whether the table may have an entry for `fd`: false is certain, true means look.
#[inline]
pub(crate) fn maybe_managed(fd: c_int) -> bool {
    if COUNT.load(Ordering::Relaxed) == 0 || fd < 0 {
        return false;
    }
    if fd >= BITMAP_FDS {
        return true;
    }
    MANAGED[(fd / 64) as usize].load(Ordering::Acquire) & (1u64 << (fd % 64)) != 0
}

/// Start managing `fd` (replacing what was recorded for that number).
pub fn insert(fd: c_int, info: Managed) {
    let replaced = {
        let mut table = TABLE.write();
        let replaced = table.get_or_insert_with(HashMap::new).insert(fd, info);
        set_managed(fd, true);
        replaced
    };
    match replaced {
        // Dropped here, after the lock is released.
        Some(old) => drop(old),
        None => {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A copy of what is recorded for `fd`.
#[inline]
pub fn get(fd: c_int) -> Option<Managed> {
    if !maybe_managed(fd) {
        return None;
    }
    get_recorded(fd)
}

#[cold]
#[inline(never)]
fn get_recorded(fd: c_int) -> Option<Managed> {
    TABLE.read().as_ref()?.get(&fd).cloned()
}

/// A copy of every entry (for `exec`, which passes some on).
pub fn entries() -> Vec<(c_int, Managed)> {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return Vec::new();
    }
    TABLE
        .read()
        .as_ref()
        .map(|t| t.iter().map(|(fd, m)| (*fd, m.clone())).collect())
        .unwrap_or_default()
}

/// Forget `fd`; returns its entry.
#[inline]
pub fn remove(fd: c_int) -> Option<Managed> {
    if !maybe_managed(fd) {
        return None;
    }
    remove_recorded(fd)
}

#[cold]
#[inline(never)]
fn remove_recorded(fd: c_int) -> Option<Managed> {
    let mut table = TABLE.write();
    let removed = table.as_mut()?.remove(&fd);
    if removed.is_some() {
        set_managed(fd, false);
        COUNT.fetch_sub(1, Ordering::Relaxed);
    }
    drop(table);
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
    // Neither recorded nor the layer's own: one atomic load and a compare,
    // without the thread-local guard.
    if !maybe_managed(fd) && !session::is_session_fd(fd) {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd) };
    }
    // The layer closing its own fds (old sessions after fork) goes straight through.
    if let Some(_g) = DetourGuard::enter() {
        if session::is_session_fd(fd) {
            // Programs that close every fd (daemons, shells) must not cut the
            // layer off from its intproxy; pretend it worked.
            return 0;
        }
        // A write stream's remote errors are reported by its close, as a
        // file's write-back errors are: everything written so far reaches
        // the target first (see `file::ops::stream_sync`).
        let late = match crate::file::ops::write_stream(fd) {
            Some(stream) => match crate::file::ops::stream_sync(fd, stream, None) {
                Err(
                    e @ (crate::error::HookError::Remote(_) | crate::error::HookError::Errno(_)),
                ) => Some(e),
                _ => None,
            },
            None => None,
        };
        // Dropping the entry releases remote resources of its last duplicate.
        drop(remove(fd));
        // SAFETY: forwarding the caller's arguments unchanged.
        let rc = unsafe { real(fd) };
        return match late {
            // The fd is closed either way, as close(2) leaves it.
            Some(e) if rc == 0 => fail(&e),
            _ => rc,
        };
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

/// Entries of the fd table in `[first, last]`, removed under the lock and
/// returned so the caller drops them (releasing remote handles) after it.
fn take_range(first: c_int, last: c_int) -> Vec<Managed> {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return Vec::new();
    }
    let mut t = TABLE.write();
    let Some(map) = t.as_mut() else {
        return Vec::new();
    };
    let fds: Vec<c_int> = map
        .keys()
        .copied()
        .filter(|fd| (first..=last).contains(fd))
        .collect();
    let taken: Vec<Managed> = fds
        .iter()
        .filter_map(|fd| {
            let entry = map.remove(fd)?;
            set_managed(*fd, false);
            Some(entry)
        })
        .collect();
    COUNT.fetch_sub(taken.len(), Ordering::Relaxed);
    taken
}

/// The pieces of `[first, last]` that do not contain any of `skip`.
pub(crate) fn split_around(first: u32, last: u32, skip: &[i32]) -> Vec<(u32, u32)> {
    let mut holes: Vec<u32> = skip
        .iter()
        .filter(|fd| **fd >= 0)
        .map(|fd| *fd as u32)
        .filter(|fd| (first..=last).contains(fd))
        .collect();
    holes.sort_unstable();
    holes.dedup();
    let mut out = Vec::new();
    let mut start = first;
    for hole in holes {
        if hole > start {
            out.push((start, hole - 1));
        }
        match hole.checked_add(1) {
            Some(next) => start = next,
            None => return out,
        }
    }
    if start <= last {
        out.push((start, last));
    }
    out
}

/// `close_range` that spares the layer's own connections: daemons and
/// `subprocess`-style launchers close every fd above 2 this way, and the
/// layer must keep talking to its intproxy afterwards. Every mode forgets the
/// closed numbers: plain and `CLOSE_RANGE_UNSHARE` (which closes them in the
/// process's now private table). `CLOSE_RANGE_CLOEXEC` closes nothing now;
/// the entries stay valid until `exec` replaces the process (and the table).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(
    first: libc::c_uint,
    last: libc::c_uint,
    flags: c_int,
) -> c_int {
    let real = real!(close_range: fn(libc::c_uint, libc::c_uint, c_int) -> c_int);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(first, last, flags) };
    };
    let marks_only = flags & (libc::CLOSE_RANGE_CLOEXEC as c_int) != 0;
    if first > last || marks_only {
        // SAFETY: forwarding the caller's arguments unchanged (the layer's
        // own fds are close-on-exec already).
        return unsafe { real(first, last, flags) };
    }
    let mut sessions = session::session_fds();
    sessions.extend(crate::broker::broker_fds());
    let mut rc = 0;
    for (lo, hi) in split_around(first, last, &sessions) {
        // SAFETY: closing a sub-range of what the caller asked for.
        rc = unsafe { real(lo, hi, flags) };
        if rc != 0 {
            break;
        }
    }
    if rc == 0 {
        let end = last.min(c_int::MAX as libc::c_uint) as c_int;
        let taken = take_range(first.min(c_int::MAX as libc::c_uint) as c_int, end);
        // Released after the table lock: the last duplicate of a remote
        // handle closes it with a round trip.
        drop(taken);
    }
    rc
}

/// glibc's `closefrom` calls `close_range` internally, out of the hooks' reach.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn closefrom(low: c_int) {
    // SAFETY: same contract as closefrom: close everything from `low` up.
    unsafe { close_range(low.max(0) as libc::c_uint, libc::c_uint::MAX, 0) };
}
