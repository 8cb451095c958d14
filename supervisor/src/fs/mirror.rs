//! Read-write opens of the target's files (fs mode `write`): the program
//! gets a *mirror*, a local `memfd` holding the file's content, installed at
//! an fd number in [`FdRange`] (the top of the program's fd space). Reads,
//! seeks, `fstat` and read-only `mmap` run natively on it. Every call that
//! changes the file (`write`, `pwrite64`, `writev`, `pwritev(2)`,
//! `ftruncate`, `fchmod`, `fchown`, `fsync`) is notified — the filter
//! checks the fd number, so the same calls on every other fd never are — and
//! done on the target's file first; then the kernel does it on the mirror
//! (`CONTINUE`), so both hold the same bytes. The mirror is found by its
//! inode, so `fork`, `exec` and `dup` (emulated, to keep the copy in the
//! range) share it, with one file position as usual.
//!
//! What cannot be kept in step fails with an errno and a one-line warning:
//! a writable shared `mmap` (`ENODEV`), `fallocate` (`EOPNOTSUPP`),
//! `dup2` onto an fd outside the range (`EOPNOTSUPP`), `sendfile`/`splice`
//! into a mirror (`EINVAL`, callers fall back to `write`) and
//! `copy_file_range` into one (`EXDEV`, likewise).

use super::reopen;
use super::write::open_options;
use crate::filter::FdRange;
use crate::notify::{Memory, Verdict};
use crate::{Call, Supervisor};
use remora_protocol::RemoteFd;
use remora_protocol::fs::{FsReply, FsRequest, OpenOptions, OpenRequest};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// The calls notified for fds in the range (see [`crate::filter::FS_WRITES`]).
pub const CALLS: &[libc::c_long] = &[
    libc::SYS_write,
    libc::SYS_pwrite64,
    libc::SYS_writev,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_fchmod,
    libc::SYS_fchown,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_mmap,
    libc::SYS_sendfile,
    libc::SYS_copy_file_range,
    libc::SYS_splice,
];

/// Largest payload of one remote write.
const WRITE_CHUNK: usize = 1 << 20;
/// Most iovec elements a `writev` may have (`IOV_MAX`).
const IOV_MAX: u64 = 1024;

/// The open mirrors, by the `(dev, ino)` of their `memfd`.
#[derive(Debug)]
pub struct Mirrors {
    fds: FdRange,
    files: HashMap<(u64, u64), Mirror>,
}

#[derive(Debug, Clone)]
struct Mirror {
    /// The target's file, open for reading and writing.
    remote: RemoteFd,
    path: String,
    /// Opened with `O_APPEND`: every write goes to the end.
    append: bool,
}

impl Mirrors {
    pub fn new(fds: FdRange) -> Mirrors {
        Mirrors {
            fds,
            files: HashMap::new(),
        }
    }
}

/// The `(dev, ino)` of fd `fd` of thread `tid`.
fn key_of(tid: u32, fd: i32) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/{tid}/fd/{fd}")).ok()?;
    Some((m.dev(), m.ino()))
}

/// The file position of fd `fd` of thread `tid`.
fn position(tid: u32, fd: i32) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/{tid}/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("pos:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The first fd number at or above `from` in the range that process `tgid`
/// does not use.
fn free_slot(fds: FdRange, tgid: u32, from: u32) -> Option<u32> {
    (from.max(fds.base)..fds.limit).find(|n| {
        std::fs::symlink_metadata(format!("/proc/{tgid}/fd/{n}"))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    })
}

impl Supervisor {
    /// A read-write `open` of the remote `path` (its writes may go to the
    /// target): a mirror at a free fd in the range.
    pub(super) fn open_mirror(
        &mut self,
        call: &Call,
        path: String,
        flags: i32,
        mode: u32,
    ) -> Verdict {
        let fds = self.mirrors.fds;
        let Some(slot) = call.tgid().and_then(|t| free_slot(fds, t, 0)) else {
            self.warn_once(&format!(
                "{path}: no free fd in {}..{} for a read-write open of the target's file; the \
                 program gets EMFILE",
                fds.base, fds.limit
            ));
            return Verdict::Errno(libc::EMFILE);
        };
        let options = OpenOptions {
            read: true,
            ..open_options(flags)
        };
        let request = OpenRequest {
            path: path.clone(),
            options,
            mode: if flags & libc::O_CREAT != 0 {
                mode & 0o7777
            } else {
                0
            },
            snapshot_limit: 0,
        };
        let opened = match self.fs(FsRequest::Open(request)) {
            Ok(FsReply::Opened(o)) => o,
            Ok(other) => return Verdict::Errno(self.unexpected(&other)),
            Err(e) => return Verdict::Errno(e.errno()),
        };
        let refuse = |sup: &mut Supervisor, why: String, errno: i32| {
            let _ = sup.fs(FsRequest::Close { fd: opened.fd });
            sup.warn_once(&why);
            Verdict::Errno(errno)
        };
        if opened.metadata.mode & libc::S_IFMT != libc::S_IFREG {
            let why = format!(
                "{path}: writing to the target's special files is not supported under seccomp \
                 interception; the program gets EROFS"
            );
            return refuse(self, why, libc::EROFS);
        }
        let size = opened.metadata.size;
        let file = match self.fetch_memfd(&path, "remora-rw", opened.fd, size) {
            Ok(f) => reopen(&f, true, flags & libc::O_APPEND != 0),
            Err(errno) => {
                let _ = self.fs(FsRequest::Close { fd: opened.fd });
                return Verdict::Errno(errno);
            }
        };
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                let _ = self.fs(FsRequest::Close { fd: opened.fd });
                return Verdict::Errno(e.raw_os_error().unwrap_or(libc::EIO));
            }
        };
        let Ok(meta) = file.metadata() else {
            let _ = self.fs(FsRequest::Close { fd: opened.fd });
            return Verdict::Errno(libc::EIO);
        };
        // The target's handle stays open while the session runs (`close`
        // is not notified); the map's entry names it.
        self.mirrors.files.insert(
            (meta.dev(), meta.ino()),
            Mirror {
                remote: opened.fd,
                path,
                append: flags & libc::O_APPEND != 0,
            },
        );
        Verdict::FdAt {
            fd: OwnedFd::from(file),
            at: slot,
            cloexec: flags & libc::O_CLOEXEC != 0,
        }
    }

    fn mirror(&self, call: &Call, fd: i32) -> Option<Mirror> {
        if self.mirrors.files.is_empty() || !self.mirrors.fds.contains(fd) {
            return None;
        }
        let key = key_of(call.tid, fd)?;
        self.mirrors.files.get(&key).cloned()
    }

    /// The remote path a mirror fd stands for (`fchmodat(fd, "",
    /// AT_EMPTY_PATH)` and the like).
    pub(crate) fn mirror_path(&self, call: &Call, fd: i32) -> Option<String> {
        self.mirror(call, fd).map(|m| m.path)
    }

    /// One of [`CALLS`], on an fd in the range.
    pub(crate) fn on_mirror(
        &mut self,
        call: &Call,
        mem: &Memory,
        nr: libc::c_long,
        a: &[u64; 6],
    ) -> std::io::Result<Verdict> {
        let fd_arg = match nr {
            libc::SYS_mmap => 4,
            libc::SYS_copy_file_range | libc::SYS_splice => 2,
            _ => 0,
        };
        let fd = a[fd_arg] as i32;
        let Some(m) = self.mirror(call, fd) else {
            return Ok(Verdict::Continue);
        };
        if !call.still_valid(self) {
            return Ok(Verdict::Errno(libc::EINTR));
        }
        Ok(match nr {
            libc::SYS_write => {
                let data = read_buf(mem, a[1], a[2])?;
                self.write_through(call, fd, &m, None, data)
            }
            libc::SYS_pwrite64 => {
                let data = read_buf(mem, a[1], a[2])?;
                self.write_through(call, fd, &m, Some(a[3]), data)
            }
            libc::SYS_writev | libc::SYS_pwritev | libc::SYS_pwritev2 => {
                let data = read_iov(mem, a[1], a[2])?;
                let flags = if nr == libc::SYS_pwritev2 {
                    a[5] as i32
                } else {
                    0
                };
                let offset = match nr {
                    libc::SYS_writev => None,
                    _ if a[3] as i64 == -1 && nr == libc::SYS_pwritev2 => None,
                    _ => Some(a[3]),
                };
                if flags & libc::RWF_APPEND != 0 {
                    return Ok(Verdict::Errno(libc::EOPNOTSUPP));
                }
                match self.write_through(call, fd, &m, offset, data) {
                    Verdict::Continue if flags & (libc::RWF_DSYNC | libc::RWF_SYNC) != 0 => {
                        self.sync_then_continue(&m, flags & libc::RWF_SYNC == 0)
                    }
                    other => other,
                }
            }
            libc::SYS_ftruncate => match self.fs(FsRequest::Ftruncate {
                fd: m.remote,
                len: a[1],
            }) {
                Ok(FsReply::Done) => Verdict::Continue,
                Ok(other) => Verdict::Errno(self.unexpected(&other)),
                Err(e) => Verdict::Errno(e.errno()),
            },
            libc::SYS_fsync => self.sync_then_continue(&m, false),
            libc::SYS_fdatasync => self.sync_then_continue(&m, true),
            libc::SYS_fchmod => match self.done(FsRequest::SetMode {
                path: m.path,
                mode: a[1] as u32 & 0o7777,
                follow_symlinks: true,
            }) {
                Verdict::Return(0) => Verdict::Continue,
                other => other,
            },
            // The mirror is ours: changing its owner could fail where the
            // target's file did not.
            libc::SYS_fchown => {
                let id = |v: u64| (v as u32 != u32::MAX).then_some(v as u32);
                self.done(FsRequest::SetOwner {
                    path: m.path,
                    uid: id(a[1]),
                    gid: id(a[2]),
                    follow_symlinks: true,
                })
            }
            libc::SYS_dup => self.dup_mirror(call, fd, 0, false),
            libc::SYS_fcntl => match a[1] as i32 {
                libc::F_DUPFD => self.dup_mirror(call, fd, a[2] as u32, false),
                libc::F_DUPFD_CLOEXEC => self.dup_mirror(call, fd, a[2] as u32, true),
                _ => Verdict::Continue,
            },
            libc::SYS_dup2 | libc::SYS_dup3 => {
                let to = a[1] as i32;
                if to == fd || self.mirrors.fds.contains(to) {
                    Verdict::Continue
                } else {
                    self.cannot(
                        &m.path,
                        "a copy of it at a low fd number (dup2) would not be kept in step",
                        libc::EOPNOTSUPP,
                    )
                }
            }
            libc::SYS_mmap => {
                let (prot, flags) = (a[2] as i32, a[3] as i32);
                if flags & libc::MAP_SHARED != 0 && prot & libc::PROT_WRITE != 0 {
                    self.cannot(&m.path, "a writable shared mmap", libc::ENODEV)
                } else {
                    Verdict::Continue
                }
            }
            libc::SYS_fallocate => self.cannot(&m.path, "fallocate", libc::EOPNOTSUPP),
            // Callers fall back to write(2), which is kept in step.
            libc::SYS_copy_file_range => Verdict::Errno(libc::EXDEV),
            _ => Verdict::Errno(libc::EINVAL),
        })
    }

    /// Warn once that `what` on the mirror of `path` is not supported; `errno`.
    fn cannot(&mut self, path: &str, what: &str, errno: i32) -> Verdict {
        let name = std::io::Error::from_raw_os_error(errno);
        self.warn_once(&format!(
            "{path}: {what} on a read-write open of the target's file is not supported under \
             seccomp interception; the program gets {name}"
        ));
        Verdict::Errno(errno)
    }

    /// Write `data` to the target's file (at `offset`, or at the fd's
    /// position, or at the end for `O_APPEND`); on success the kernel then
    /// writes the same bytes to the mirror.
    fn write_through(
        &mut self,
        call: &Call,
        fd: i32,
        m: &Mirror,
        offset: Option<u64>,
        data: Vec<u8>,
    ) -> Verdict {
        if data.is_empty() {
            return Verdict::Continue;
        }
        // With O_APPEND every write appends, pwrite too (Linux).
        let mut at = match (m.append, offset) {
            (true, _) => None,
            (false, Some(o)) => Some(o),
            (false, None) => match position(call.tid, fd) {
                Some(p) => Some(p),
                None => return Verdict::Errno(libc::EBADF),
            },
        };
        for chunk in data.chunks(WRITE_CHUNK) {
            let bytes = chunk.to_vec();
            let request = match at {
                Some(offset) => FsRequest::Pwrite {
                    fd: m.remote,
                    offset,
                    data: bytes.into(),
                },
                None => FsRequest::Write {
                    fd: m.remote,
                    data: bytes.into(),
                },
            };
            match self.fs(request) {
                Ok(FsReply::Written(n)) if n == chunk.len() as u64 => {}
                Ok(FsReply::Written(_)) => {
                    return self.cannot(&m.path, "a short write in the target", libc::EIO);
                }
                Ok(other) => return Verdict::Errno(self.unexpected(&other)),
                Err(e) => return Verdict::Errno(e.errno()),
            }
            at = at.map(|o| o + chunk.len() as u64);
        }
        Verdict::Continue
    }

    fn sync_then_continue(&mut self, m: &Mirror, data_only: bool) -> Verdict {
        match self.fs(FsRequest::Fsync {
            fd: m.remote,
            data_only,
        }) {
            Ok(FsReply::Done) => Verdict::Continue,
            Ok(other) => Verdict::Errno(self.unexpected(&other)),
            Err(e) => Verdict::Errno(e.errno()),
        }
    }

    /// `dup`/`F_DUPFD` of a mirror: the copy (same open file description)
    /// goes to a free fd in the range at or above `from`.
    fn dup_mirror(&mut self, call: &Call, fd: i32, from: u32, cloexec: bool) -> Verdict {
        let Some(tgid) = call.tgid() else {
            return Verdict::Errno(libc::ESRCH);
        };
        let Some(at) = free_slot(self.mirrors.fds, tgid, from) else {
            return Verdict::Errno(libc::EMFILE);
        };
        match crate::net::pidfd_getfd(tgid, fd) {
            Ok(copy) => Verdict::FdAt {
                fd: copy,
                at,
                cloexec,
            },
            Err(e) => Verdict::Errno(e.raw_os_error().unwrap_or(libc::EBADF)),
        }
    }
}

/// `len` bytes at `addr` of the program (one read when it is all mapped).
fn read_buf(mem: &Memory, addr: u64, len: u64) -> std::io::Result<Vec<u8>> {
    mem.read(addr, len as usize)
}

/// The bytes of an iovec array of `count` elements at `addr`, in order.
pub(crate) fn read_iov(mem: &Memory, addr: u64, count: u64) -> std::io::Result<Vec<u8>> {
    if count > IOV_MAX {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let raw = mem.read(addr, count as usize * 16)?;
    let mut out = Vec::new();
    for iov in raw.chunks_exact(16) {
        let base = u64::from_ne_bytes(iov[..8].try_into().unwrap_or_default());
        let len = u64::from_ne_bytes(iov[8..].try_into().unwrap_or_default());
        out.extend(mem.read(base, len as usize)?);
    }
    Ok(out)
}
