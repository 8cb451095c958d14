//! The listener fd: receive notifications, check they are still live,
//! answer them (continue, a value, an errno, or a new fd), and read or write
//! the notifying thread's memory through `/proc/TID/mem`.

use crate::abi::*;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// How a notified syscall is answered.
#[derive(Debug)]
pub enum Verdict {
    /// Run it as the program asked (the local case).
    Continue,
    /// It returns this value.
    Return(i64),
    /// It fails with this errno.
    Errno(i32),
    /// It returns a new fd in the program, a copy of this one.
    Fd { fd: OwnedFd, cloexec: bool },
    /// The same at exactly fd number `at` (replacing what was there).
    FdAt { fd: OwnedFd, at: u32, cloexec: bool },
    /// `fd` put in place of the program's fd `at` (closing what was
    /// there), then the call returns `then` (not the fd number).
    ReplaceFd {
        fd: OwnedFd,
        at: u32,
        cloexec: bool,
        then: i64,
    },
    /// Another thread answers it later (a blocking accept being waited for).
    Pending,
}

/// The listener returned by `seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)`.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

fn ioctl<T>(fd: &OwnedFd, request: libc::c_ulong, arg: *mut T) -> io::Result<libc::c_int> {
    // SAFETY: `arg` points to a live value of the type the ioctl expects.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Listener {
    pub fn new(fd: OwnedFd) -> Listener {
        Listener { fd }
    }

    /// Ask for synchronous wake-ups (Linux 6.6): the notifying thread hands
    /// its CPU straight to the supervisor and back, which roughly halves the
    /// cost of a notified call on a busy machine. Older kernels refuse
    /// (`EINVAL`/`ENOTTY`): notifications then work as before.
    pub fn sync_wake_up(&self) -> bool {
        // The ioctl takes the flags by value, not through a pointer.
        // SAFETY: a plain ioctl on our listener with an integer argument.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            )
        };
        rc == 0
    }

    /// The raw listener fd (for the probe's direct ioctls).
    pub fn raw(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }

    /// Whether a notification waits, after waiting at most `timeout`.
    pub fn readable(&self, timeout: std::time::Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
    }

    /// Wait until no process uses the filter any more (`POLLHUP`).
    pub fn wait_hangup(&self) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd; with no events asked, poll returns
            // only for POLLHUP/POLLERR.
            let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
            if rc > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                return;
            }
        }
    }

    /// Wait for the next notification. `Ok(None)`: it vanished (the thread
    /// was interrupted or died) before we got it; try again.
    pub fn recv(&self) -> io::Result<Option<SeccompNotif>> {
        let mut notif = SeccompNotif::default();
        match ioctl(&self.fd, SECCOMP_IOCTL_NOTIF_RECV, &mut notif) {
            Ok(_) => Ok(Some(notif)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the notification `id` still waits for an answer (its thread
    /// is alive and in the syscall): what we read from its memory belongs to it.
    pub fn id_valid(&self, id: u64) -> bool {
        let mut id = id;
        ioctl(&self.fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id).is_ok()
    }

    /// Install a copy of `fd` in the program of notification `id`: at
    /// number `at` (replacing what is there) or the lowest free one; with
    /// `send`, the kernel also answers the call with the new fd's number.
    fn add_fd(
        &self,
        id: u64,
        fd: &OwnedFd,
        at: Option<u32>,
        cloexec: bool,
        send: bool,
    ) -> io::Result<()> {
        let mut addfd = SeccompNotifAddfd {
            id,
            flags: if send { SECCOMP_ADDFD_FLAG_SEND } else { 0 }
                | if at.is_some() {
                    SECCOMP_ADDFD_FLAG_SETFD
                } else {
                    0
                },
            srcfd: fd.as_raw_fd() as u32,
            newfd: at.unwrap_or(0),
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        ioctl(&self.fd, SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd).map(|_| ())
    }

    /// Answer notification `id`: whether the kernel took the answer (an
    /// error means the call is gone: its thread was interrupted by a signal
    /// or died; callers that consumed something for it put it back).
    pub fn answer(&self, id: u64, verdict: Verdict) -> bool {
        let mut resp = SeccompNotifResp {
            id,
            ..Default::default()
        };
        match verdict {
            Verdict::Pending => return true,
            Verdict::Continue => resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE,
            Verdict::Return(v) => resp.val = v,
            Verdict::Errno(e) => resp.error = -e,
            // Without SEND: the fd is installed, the call answered next.
            Verdict::ReplaceFd {
                fd,
                at,
                cloexec,
                then,
            } => match self.add_fd(id, &fd, Some(at), cloexec, false) {
                Ok(()) => resp.val = then,
                Err(e) => resp.error = -e.raw_os_error().unwrap_or(libc::EIO),
            },
            // With SEND the kernel answers the syscall with the new fd.
            Verdict::Fd { fd, cloexec } => match self.add_fd(id, &fd, None, cloexec, true) {
                Ok(()) => return true,
                Err(e) => resp.error = -e.raw_os_error().unwrap_or(libc::EIO),
            },
            Verdict::FdAt { fd, at, cloexec } => {
                match self.add_fd(id, &fd, Some(at), cloexec, true) {
                    Ok(()) => return true,
                    Err(e) => resp.error = -e.raw_os_error().unwrap_or(libc::EIO),
                }
            }
        }
        ioctl(&self.fd, SECCOMP_IOCTL_NOTIF_SEND, &mut resp).is_ok()
    }
}

/// The memory of a notifying thread. Reads use `process_vm_readv` (one
/// syscall, no fd to open and close per notification: the local case's cost
/// is mostly syscalls); writes, rare (remote answers only), go through
/// `/proc/TID/mem`, opened when first needed.
#[derive(Debug)]
pub struct Memory {
    tid: u32,
    mem: std::cell::OnceCell<File>,
}

/// Longest path read from the program (`PATH_MAX`).
const PATH_MAX: usize = 4096;
const PAGE: usize = 4096;

impl Memory {
    /// The memory of thread `tid` (nothing is opened yet).
    pub fn open(tid: u32) -> io::Result<Memory> {
        Ok(Memory {
            tid,
            mem: std::cell::OnceCell::new(),
        })
    }

    /// Read into `buf` at `addr`; a short read is `EFAULT`. `buf` must not
    /// span a page boundary when the caller needs all-or-nothing per page
    /// (`process_vm_readv` never splits one iovec element).
    fn read_into(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` covers our own buffer; the remote side is only read.
        let n =
            unsafe { libc::process_vm_readv(self.tid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        Ok(())
    }

    /// `len` bytes at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        // Usually all mapped: one read.
        if len == 0 || self.read_into(addr, &mut buf).is_ok() {
            return Ok(buf);
        }
        let mut done = 0;
        // Page by page: one element never spans pages, so a fault is exact.
        while done < len {
            let at = addr + done as u64;
            let n = (PAGE - (at % PAGE as u64) as usize).min(len - done);
            self.read_into(at, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(buf)
    }

    /// A NUL-terminated string at `addr`, read page by page so the read never
    /// crosses into an unmapped page past the terminator.
    pub fn read_cstr(&self, addr: u64) -> io::Result<Vec<u8>> {
        if addr == 0 {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        let mut out = Vec::new();
        let mut chunk = [0u8; PAGE];
        let mut at = addr;
        while out.len() < PATH_MAX {
            // Most paths are short: read up to 256 bytes first (within the
            // page), then the rest of the page.
            let to_page_end = PAGE - (at % PAGE as u64) as usize;
            let n = to_page_end.min(if out.is_empty() { 256 } else { PAGE });
            self.read_into(at, &mut chunk[..n])?;
            if let Some(nul) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
            at += n as u64;
        }
        Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG))
    }

    /// Write `data` at `addr` (a buffer the syscall fills).
    pub fn write(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        let mem = match self.mem.get() {
            Some(mem) => mem,
            None => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(format!("/proc/{}/mem", self.tid))?;
                self.mem.get_or_init(|| file)
            }
        };
        mem.write_all_at(data, addr)
    }
}

/// The bytes of a plain-old-data value, to copy into the program.
pub fn bytes_of<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: `T` is a plain-old-data kernel struct (stat, statx): every
    // byte is initialised (they are built from `zeroed`).
    unsafe { std::slice::from_raw_parts((value as *const T).cast(), std::mem::size_of::<T>()) }
}
