//! Writes to the target's files (fs mode `write`, or paths in `read_write`),
//! as the layer does them: a write-only open becomes a local stream socket
//! whose bytes the intproxy writes to the remote file (`StreamWrites`), and
//! `mkdir`, `unlink`, `rmdir`, `rename`, `truncate`, `chmod`, `chown`,
//! `utimensat`, `link` and `symlink` of remote paths happen in the target. A read-write
//! open becomes a local mirror kept in step with the target's file (see
//! [`super::mirror`]).

use super::Place;
use crate::notify::{Memory, Verdict};
use crate::{Call, Supervisor};
use remora_protocol::fs::{FsReply, FsRequest, OpenOptions, OpenRequest, SetTime, Timestamp};
use remora_protocol::messages::{InterceptorAddr, LayerRequest, LayerResponse};
use std::os::fd::OwnedFd;

/// The protocol's open options for `open(2)` flags (the layer's `open_options`).
pub(super) fn open_options(flags: i32) -> OpenOptions {
    let access = flags & libc::O_ACCMODE;
    OpenOptions {
        read: access == libc::O_RDONLY || access == libc::O_RDWR,
        write: access == libc::O_WRONLY || access == libc::O_RDWR,
        append: flags & libc::O_APPEND != 0,
        create: flags & libc::O_CREAT != 0,
        truncate: flags & libc::O_TRUNC != 0,
        exclusive: flags & libc::O_EXCL != 0,
        directory: flags & libc::O_DIRECTORY != 0,
        nofollow: flags & libc::O_NOFOLLOW != 0,
    }
}

impl Supervisor {
    /// An `open` of the remote `path` that modifies it.
    pub(super) fn open_for_write(
        &mut self,
        call: &Call,
        path: String,
        flags: i32,
        mode: u32,
    ) -> Verdict {
        if flags & libc::O_TMPFILE == libc::O_TMPFILE {
            return Verdict::Errno(libc::EOPNOTSUPP);
        }
        // A path under a shadow directory is remote whatever the mode; the
        // fs config decides whether its writes may go to the target.
        if !matches!(
            self.policies.fs.decide(&path, true),
            remora_config::FsDecision::RemoteWrite
        ) {
            self.warn_once(&format!(
                "{path}: the fs config does not send writes to the target for this path, and it \
                 has no local copy; the program gets EROFS"
            ));
            return Verdict::Errno(libc::EROFS);
        }
        if flags & libc::O_PATH != 0 {
            self.warn_once(&format!(
                "{path}: O_PATH-opening the target's files is not supported under seccomp \
                 interception; the program gets EROFS"
            ));
            return Verdict::Errno(libc::EROFS);
        }
        if flags & libc::O_ACCMODE == libc::O_RDWR {
            return self.open_mirror(call, path, flags, mode);
        }
        let request = OpenRequest {
            path: path.clone(),
            options: open_options(flags),
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
        if opened.metadata.mode & libc::S_IFMT != libc::S_IFREG {
            let _ = self.fs(FsRequest::Close { fd: opened.fd });
            self.warn_once(&format!(
                "{path}: writing to the target's special files is not supported under seccomp \
                 interception; the program gets EROFS"
            ));
            return Verdict::Errno(libc::EROFS);
        }
        // The intproxy owns (and closes) the remote handle from here on.
        let reply = self.client().request(LayerRequest::StreamWrites {
            fd: opened.fd,
            path,
        });
        let interceptor = match reply {
            Ok(LayerResponse::Intercepted {
                interceptor: InterceptorAddr::Ip(a),
                ..
            }) => a,
            Ok(other) => return Verdict::Errno(self.unexpected(&other)),
            Err(e) => return Verdict::Errno(e.errno()),
        };
        match std::net::TcpStream::connect(interceptor) {
            Ok(stream) => {
                // Nothing is ever read from it: reads see end-of-file at once.
                let _ = stream.shutdown(std::net::Shutdown::Read);
                let fd = OwnedFd::from(stream);
                Verdict::Fd {
                    fd,
                    cloexec: flags & libc::O_CLOEXEC != 0,
                }
            }
            Err(e) => Verdict::Errno(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    /// `mkdir(path, mode)`, `mkdirat(dirfd, path, mode)`.
    pub(crate) fn mkdir(
        &mut self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path: u64,
        mode: u32,
    ) -> std::io::Result<Verdict> {
        let path = match self.place(call, mem, dirfd, path, true)? {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        Ok(self.done(FsRequest::MkDir {
            path,
            mode: mode & 0o7777,
        }))
    }

    /// `unlink`, `rmdir`, `unlinkat` (`AT_REMOVEDIR` removes a directory).
    pub(crate) fn unlink(
        &mut self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path: u64,
        dir: bool,
    ) -> std::io::Result<Verdict> {
        let path = match self.place(call, mem, dirfd, path, true)? {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        Ok(self.done(if dir {
            FsRequest::RmDir { path }
        } else {
            FsRequest::Unlink { path }
        }))
    }

    /// `rename`, `renameat`, `renameat2`: both ends in the target or both
    /// local; between the two, `EXDEV` as across mounts. `RENAME_NOREPLACE`
    /// is a check then the rename (not atomic); other flags are refused with
    /// `EINVAL` for remote paths (callers such as `mv` then fall back).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rename(
        &mut self,
        call: &Call,
        mem: &Memory,
        old_dirfd: i64,
        old: u64,
        new_dirfd: i64,
        new: u64,
        flags: u32,
    ) -> std::io::Result<Verdict> {
        let from = self.place(call, mem, old_dirfd, old, true)?;
        let to = self.place(call, mem, new_dirfd, new, true)?;
        let (from, to) = match (from, to) {
            (Place::Local, Place::Local) => return Ok(Verdict::Continue),
            (Place::Remote(a), Place::Remote(b)) => (a, b),
            (Place::NotFound, _) => return Ok(Verdict::Errno(libc::ENOENT)),
            _ => return Ok(Verdict::Errno(libc::EXDEV)),
        };
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Ok(Verdict::Errno(libc::EINVAL));
        }
        if flags & libc::RENAME_NOREPLACE != 0 {
            match self.stat_remote(to.clone(), false) {
                Ok(_) => return Ok(Verdict::Errno(libc::EEXIST)),
                Err(libc::ENOENT) => {}
                Err(errno) => return Ok(Verdict::Errno(errno)),
            }
        }
        Ok(self.done(FsRequest::Rename { from, to }))
    }

    /// `truncate(path, len)`.
    pub(crate) fn truncate(
        &mut self,
        call: &Call,
        mem: &Memory,
        path: u64,
        len: i64,
    ) -> std::io::Result<Verdict> {
        let path = match self.place(call, mem, libc::AT_FDCWD as i64, path, true)? {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        let Ok(len) = u64::try_from(len) else {
            return Ok(Verdict::Errno(libc::EINVAL));
        };
        Ok(self.done(FsRequest::Truncate { path, len }))
    }

    /// Where a `*at` metadata call acts. `AT_EMPTY_PATH` with an empty path
    /// means the fd itself: a mirror stands for its remote path, any other
    /// fd is local.
    fn meta_place(
        &mut self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path: u64,
        flags: i32,
    ) -> std::io::Result<Place> {
        if flags & libc::AT_EMPTY_PATH != 0 && mem.read_cstr(path)?.is_empty() {
            return Ok(match self.mirror_path(call, dirfd as i32) {
                Some(p) => Place::Remote(p),
                None => Place::Local,
            });
        }
        self.place(call, mem, dirfd, path, true)
    }

    /// `chmod`, `fchmodat`, `fchmodat2` (with `flags`).
    pub(crate) fn chmod(
        &mut self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path: u64,
        mode: u32,
        flags: i32,
    ) -> std::io::Result<Verdict> {
        let path = match self.meta_place(call, mem, dirfd, path, flags)? {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        Ok(self.done(FsRequest::SetMode {
            path,
            mode: mode & 0o7777,
            follow_symlinks: flags & libc::AT_SYMLINK_NOFOLLOW == 0,
        }))
    }

    /// `chown`, `lchown`, `fchownat`; `-1` leaves an id unchanged.
    pub(crate) fn chown(
        &mut self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path: u64,
        ids: [u64; 2],
        flags: i32,
    ) -> std::io::Result<Verdict> {
        let path = match self.meta_place(call, mem, dirfd, path, flags)? {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        let id = |v: u64| (v as u32 != u32::MAX).then_some(v as u32);
        Ok(self.done(FsRequest::SetOwner {
            path,
            uid: id(ids[0]),
            gid: id(ids[1]),
            follow_symlinks: flags & libc::AT_SYMLINK_NOFOLLOW == 0,
        }))
    }

    /// `utimensat(dirfd, path, times, flags)`; a null `path` is `dirfd`
    /// itself (`futimens`), a null `times` means both now.
    pub(crate) fn utimensat(
        &mut self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path: u64,
        times: u64,
        flags: i32,
    ) -> std::io::Result<Verdict> {
        let place = if path == 0 {
            match self.mirror_path(call, dirfd as i32) {
                Some(p) => Place::Remote(p),
                None => Place::Local,
            }
        } else {
            self.meta_place(call, mem, dirfd, path, flags)?
        };
        let path = match place {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        let (atime, mtime) = if times == 0 {
            (SetTime::Now, SetTime::Now)
        } else {
            let raw = mem.read(times, 32)?;
            let at = |o: usize| -> Option<SetTime> {
                let secs = i64::from_ne_bytes(raw[o..o + 8].try_into().ok()?);
                let nanos = i64::from_ne_bytes(raw[o + 8..o + 16].try_into().ok()?);
                match nanos {
                    libc::UTIME_NOW => Some(SetTime::Now),
                    libc::UTIME_OMIT => Some(SetTime::Omit),
                    n if (0..1_000_000_000).contains(&n) => Some(SetTime::At(Timestamp {
                        secs,
                        nanos: n as u32,
                    })),
                    _ => None,
                }
            };
            match (at(0), at(16)) {
                (Some(a), Some(m)) => (a, m),
                _ => return Ok(Verdict::Errno(libc::EINVAL)),
            }
        };
        Ok(self.done(FsRequest::SetTimes {
            path,
            atime,
            mtime,
            follow_symlinks: flags & libc::AT_SYMLINK_NOFOLLOW == 0,
        }))
    }

    /// `link`, `linkat` (`[dirfd, path]` each): both names in the target or
    /// both local; between the two, `EXDEV` as across mounts.
    pub(crate) fn link(
        &mut self,
        call: &Call,
        mem: &Memory,
        old: [i64; 2],
        new: [i64; 2],
    ) -> std::io::Result<Verdict> {
        let from = self.place(call, mem, old[0], old[1] as u64, true)?;
        let to = self.place(call, mem, new[0], new[1] as u64, true)?;
        Ok(match (from, to) {
            (Place::Local, Place::Local) => Verdict::Continue,
            (Place::Remote(from), Place::Remote(to)) => self.done(FsRequest::Link { from, to }),
            (Place::NotFound, _) | (_, Place::NotFound) => Verdict::Errno(libc::ENOENT),
            _ => Verdict::Errno(libc::EXDEV),
        })
    }

    /// `symlink(target, link)`, `symlinkat(target, dirfd, link)`: the
    /// link's content is never resolved, only where the link goes.
    pub(crate) fn symlink(
        &mut self,
        call: &Call,
        mem: &Memory,
        target: u64,
        dirfd: i64,
        link: u64,
    ) -> std::io::Result<Verdict> {
        let link = match self.place(call, mem, dirfd, link, true)? {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        let Ok(target) = String::from_utf8(mem.read_cstr(target)?) else {
            return Ok(Verdict::Errno(libc::EINVAL));
        };
        Ok(self.done(FsRequest::Symlink { target, link }))
    }

    /// A remote operation answered with `Done`: the call returns 0.
    pub(super) fn done(&mut self, request: FsRequest) -> Verdict {
        match self.fs(request) {
            Ok(FsReply::Done) => Verdict::Return(0),
            Ok(other) => Verdict::Errno(self.unexpected(&other)),
            Err(e) => Verdict::Errno(e.errno()),
        }
    }
}
