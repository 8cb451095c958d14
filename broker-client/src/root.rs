//! Read-only opens under the target's root without a round trip: the
//! broker hands over its root directory once ([`BrokerRequest::OpenRoot`]),
//! and each open is then an `openat2(root, path, RESOLVE_IN_ROOT)` in the
//! caller's own process, with the caller's credentials. Shared by the layer
//! and the supervisor.
//!
//! # Guarantees
//! The answer is the broker's ([`BrokerRequest::OpenRead`]) or
//! [`Direct::AskBroker`]: only outcomes the broker would give too are kept.
//! - Resolution: `RESOLVE_IN_ROOT` treats the descriptor as `/`, so absolute
//!   symlinks and `..` stay inside the target's root, as they do for the
//!   broker's thread (whose root is that directory); relative paths start
//!   there, as they do from the thread's working directory (the root too).
//! - Credentials: the caller's, where the broker uses the agent's (root). A
//!   refusal (`EACCES`, `EPERM`) is asked of the broker again, which may be
//!   allowed; nothing opens here that the broker would refuse, because the
//!   caller has no right the agent lacks.
//! - procfs answers by who asks (`/proc/self`, `/proc/thread-self`, and
//!   `/etc/mtab` links there), so a path under `/proc`, or any file that
//!   turns out to live on a procfs, is the broker's; so are magic links,
//!   which `RESOLVE_IN_ROOT` refuses (`EXDEV`), and every other error but
//!   `ENOENT` and `ENOTDIR` (the path does not exist in the target for
//!   anyone).
//! - The descriptor is the broker's: read-only, opened non-blocking (a FIFO
//!   cannot block) with `O_NOCTTY`, then made blocking; anything but a
//!   regular file is [`Direct::NotRegular`] and closed.
//!
//! [`BrokerRequest::OpenRoot`]: remora_protocol::broker::BrokerRequest::OpenRoot
//! [`BrokerRequest::OpenRead`]: remora_protocol::broker::BrokerRequest::OpenRead

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// What a direct open gave.
#[derive(Debug)]
pub enum Direct {
    /// The target's regular file, opened read-only.
    File(OwnedFd),
    /// It exists but is not a regular file (`BrokerReply::NotRegular`).
    NotRegular,
    /// It failed with this errno, as it would in the broker.
    Failed(i32),
    /// The broker's answer may differ: ask it.
    AskBroker,
    /// `openat2` is missing (a kernel before 5.6) or the root descriptor is
    /// unusable: ask the broker, now and from now on.
    Unsupported,
}

/// `struct open_how` of `linux/openat2.h` (`libc`'s is `non_exhaustive`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Open `path` read-only under `root` (the broker's root, see the module
/// docs); `nofollow`: `O_NOFOLLOW`; `cloexec`: `O_CLOEXEC`. The descriptor
/// takes the lowest free number, as `open` would give.
pub fn open_read(root: BorrowedFd<'_>, path: &str, nofollow: bool, cloexec: bool) -> Direct {
    if under_proc(path) {
        return Direct::AskBroker;
    }
    let Ok(cpath) = CString::new(path) else {
        return Direct::AskBroker;
    };
    let mut flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
    if nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    if cloexec {
        flags |= libc::O_CLOEXEC;
    }
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT,
    };
    let fd = loop {
        // SAFETY: `cpath` is a C string and `how` an `open_how` of the size
        // given, both alive for the call; the kernel only reads them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                cpath.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if rc >= 0 {
            // SAFETY: a descriptor the kernel just gave us.
            break unsafe { OwnedFd::from_raw_fd(rc as i32) };
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(errno @ (libc::ENOENT | libc::ENOTDIR)) => return Direct::Failed(errno),
            Some(libc::ENOSYS | libc::EBADF | libc::E2BIG) => return Direct::Unsupported,
            _ => return Direct::AskBroker,
        }
    };
    // SAFETY: all-zero `stat` and `statfs` are valid values, filled by the
    // kernel for the descriptor we own.
    let (st, fs, ok) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let mut fs: libc::statfs = std::mem::zeroed();
        let ok = libc::fstat(fd.as_raw_fd(), &mut st) == 0
            && libc::fstatfs(fd.as_raw_fd(), &mut fs) == 0;
        (st, fs, ok)
    };
    if !ok || fs.f_type == libc::PROC_SUPER_MAGIC {
        return Direct::AskBroker;
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Direct::NotRegular;
    }
    // SAFETY: clearing the status flags of the descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_RDONLY) } != 0 {
        return Direct::AskBroker;
    }
    Direct::File(fd)
}

/// Whether `path`, read as the target reads it from its root, starts in
/// `/proc` (`//proc`, `/./proc/`, `/../proc`, `proc/…` too: `..` of the
/// root is the root).
fn under_proc(path: &str) -> bool {
    path.split('/')
        .find(|c| !matches!(*c, "" | "." | ".."))
        .is_some_and(|first| first == "proc")
}

#[cfg(test)]
mod tests;
