//! File syscalls: route paths by the fs policy, and emulate remote ones.
//! Remote regular files opened read-only are the target's file itself when
//! the agent's fd broker is offered (the local platform, [`crate::broker`]),
//! else read-only `memfd` snapshots; either is installed with `ADDFD`; remote directories become shadow directories (empty entries of
//! the right type) that `getdents64` lists natively; stat, readlink and
//! access answers are written into the program's buffers.

use crate::client::ClientError;
use crate::notify::{Memory, Verdict, bytes_of};
use crate::{Call, Supervisor};
use remora_config::FsDecision;
use remora_protocol::fs::{
    AccessMode, FileType, FsReply, FsRequest, Metadata, OpenOptions, OpenRequest,
};
use remora_protocol::{Request, Response};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub mod cwd;
pub mod mirror;
mod write;

/// Largest snapshot asked for inline in an open reply (one frame).
const INLINE_SNAPSHOT_LIMIT: u64 = 8 << 20;
/// Chunk of the `Pread`s that fetch bigger files.
const IO_CHUNK: u64 = 1 << 20;
/// Directory entries asked for per `ReadDirBatch`.
const DIR_BATCH: u32 = 256;

/// Where a path argument lives.
#[derive(Debug)]
enum Place {
    Local,
    Remote(String),
    NotFound,
}

impl Supervisor {
    fn fs(&mut self, request: FsRequest) -> Result<FsReply, ClientError> {
        match self.client().remote(Request::Fs(request))? {
            Response::Fs(reply) => Ok(reply),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Absolute remote path of `(dirfd, path)` if the policy says remote.
    fn place(
        &self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path_addr: u64,
        write: bool,
    ) -> std::io::Result<Place> {
        let raw = mem.read_cstr(path_addr)?;
        let Ok(text) = String::from_utf8(raw) else {
            return Ok(Place::Local);
        };
        if text.is_empty() {
            return Ok(Place::Local);
        }
        let dirfd = dirfd as i32;
        let abs = if text.starts_with('/') {
            text
        } else {
            // Relative to a virtual working directory in the target: remote
            // unless the fs config says not found (a local answer would
            // resolve against the real, different, working directory).
            if dirfd == libc::AT_FDCWD && !self.cwds.is_empty() {
                if let Some(cwd) = call.tgid().and_then(|t| self.cwds.remote_of(t)) {
                    // Resolved lexically (`..` of a symlink differs).
                    let abs = cwd::normalize(&format!("{cwd}/{text}"));
                    return Ok(match self.policies.fs.decide(&abs, write) {
                        FsDecision::Remote | FsDecision::RemoteWrite => Place::Remote(abs),
                        FsDecision::Local | FsDecision::NotFound => Place::NotFound,
                    });
                }
            }
            let base = if dirfd == libc::AT_FDCWD {
                match &self.start_cwd {
                    // No process has moved: every one is still where it started.
                    Some(cwd) => PathBuf::from(cwd),
                    None => std::fs::read_link(format!("/proc/{}/cwd", call.tid))?,
                }
            } else {
                std::fs::read_link(format!("/proc/{}/fd/{dirfd}", call.tid))?
            };
            let base = base.to_string_lossy().into_owned();
            if dirfd != libc::AT_FDCWD && self.shadow.remote_of(&base).is_none() {
                return Ok(Place::Local); // relative to a local directory fd
            }
            format!("{}/{}", base.trim_end_matches('/'), text)
        };
        if let Some(remote) = self.shadow.remote_of(&abs) {
            return Ok(Place::Remote(remote));
        }
        if !self.dns_remote && (abs == "/etc/hosts" || abs == "/etc/resolv.conf") {
            return Ok(Place::Local);
        }
        Ok(match self.policies.fs.decide(&abs, write) {
            FsDecision::Local => Place::Local,
            FsDecision::NotFound => Place::NotFound,
            FsDecision::Remote | FsDecision::RemoteWrite => Place::Remote(abs),
        })
    }

    /// `open(path, flags, mode)` and `openat(dirfd, path, flags, mode)`.
    pub(crate) fn open(
        &mut self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path: u64,
        flags: i32,
        mode: u32,
    ) -> std::io::Result<Verdict> {
        let write = opens_for_write(flags);
        let path = match self.place(call, mem, dirfd, path, write)? {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        if !call.still_valid(self) {
            return Ok(Verdict::Errno(libc::EINTR));
        }
        let cloexec = flags & libc::O_CLOEXEC != 0;
        if write {
            return Ok(self.open_for_write(call, path, flags, mode));
        }
        if flags & libc::O_PATH != 0 {
            self.warn_once(&format!(
                "{path}: O_PATH-opening the target's files is not supported under seccomp \
                 interception; the program gets EROFS"
            ));
            return Ok(Verdict::Errno(libc::EROFS));
        }
        if flags & libc::O_DIRECTORY == 0 && self.fast_path_allowed(&path) {
            match self.broker.open_read(&path, flags & libc::O_NOFOLLOW != 0) {
                crate::broker::OpenRead::File(fd) => {
                    if flags & libc::O_NONBLOCK != 0 {
                        use std::os::fd::AsRawFd;
                        // SAFETY: status flags of the descriptor we just received.
                        unsafe {
                            libc::fcntl(
                                fd.as_raw_fd(),
                                libc::F_SETFL,
                                libc::O_RDONLY | libc::O_NONBLOCK,
                            )
                        };
                    }
                    return Ok(Verdict::Fd { fd, cloexec });
                }
                crate::broker::OpenRead::Failed(errno) => return Ok(Verdict::Errno(errno)),
                crate::broker::OpenRead::NotRegular => {}
                crate::broker::OpenRead::Unavailable(why) => {
                    if let Some(why) = why {
                        self.warn_once(&why);
                    }
                }
            }
        }
        let request = OpenRequest {
            path: path.clone(),
            options: OpenOptions {
                read: true,
                nofollow: flags & libc::O_NOFOLLOW != 0,
                ..OpenOptions::default()
            },
            mode: 0,
            snapshot_limit: INLINE_SNAPSHOT_LIMIT,
        };
        let opened = match self.fs(FsRequest::Open(request)) {
            Ok(FsReply::Opened(o)) => o,
            Ok(other) => return Ok(Verdict::Errno(self.unexpected(&other))),
            Err(e) => return Ok(Verdict::Errno(e.errno())),
        };
        let is_dir = opened.metadata.mode & libc::S_IFMT == libc::S_IFDIR;
        if is_dir {
            if opened.snapshot.is_none() {
                let _ = self.fs(FsRequest::Close { fd: opened.fd });
            }
            return match self.shadow_dir(&path) {
                Ok(dir) => Ok(Verdict::Fd { fd: dir, cloexec }),
                Err(errno) => Ok(Verdict::Errno(errno)),
            };
        }
        if flags & libc::O_DIRECTORY != 0 {
            if opened.snapshot.is_none() {
                let _ = self.fs(FsRequest::Close { fd: opened.fd });
            }
            return Ok(Verdict::Errno(libc::ENOTDIR));
        }
        let file = match opened.snapshot {
            Some(data) => memfd(&path, "remora").and_then(|mut f| {
                use std::io::Write;
                f.write_all(&data).map(|()| f)
            }),
            None => {
                let file = self.fetch_memfd(&path, "remora", opened.fd, opened.metadata.size);
                let _ = self.fs(FsRequest::Close { fd: opened.fd });
                match file {
                    Ok(f) => Ok(f),
                    Err(errno) => return Ok(Verdict::Errno(errno)),
                }
            }
        };
        // Reopened read-only, so the program's writes fail as on a read-only file.
        Ok(match file.and_then(|f| reopen(&f, false, false)) {
            Ok(f) => Verdict::Fd {
                fd: OwnedFd::from(f),
                cloexec,
            },
            Err(e) => Verdict::Errno(e.raw_os_error().unwrap_or(libc::EIO)),
        })
    }

    /// Whether a read-only open of the target's `path` may take the local
    /// fast path (the agent's fd broker): as for the layer, only when this
    /// run can never write `path` in the target, so no read-write mirror or
    /// write stream can hold bytes the target's file does not have yet.
    fn fast_path_allowed(&self, path: &str) -> bool {
        self.broker.available() && self.policies.fs.decide(path, true) != FsDecision::RemoteWrite
    }

    /// A new `memfd` with the whole content of the open remote file `fd`
    /// (`size` bytes when opened), streamed in [`IO_CHUNK`] reads straight
    /// into it: nothing else holds the content, and all-zero chunks are
    /// left as holes (a sparse file stays sparse here). A file over half
    /// the memory available gets `EFBIG` and a one-line warning.
    pub(crate) fn fetch_memfd(
        &mut self,
        path: &str,
        prefix: &str,
        fd: remora_protocol::RemoteFd,
        size: u64,
    ) -> Result<std::fs::File, i32> {
        use std::os::unix::fs::FileExt;
        if let Some(available) = mem_available().filter(|a| size > a / 2) {
            self.warn_once(&format!(
                "{path}: the target's file is {} MiB, over half the memory available here ({}                  MiB): under seccomp interception it would be copied into memory; the program                  gets EFBIG",
                size >> 20,
                available >> 20
            ));
            return Err(libc::EFBIG);
        }
        let io = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        let file = memfd(path, prefix).map_err(io)?;
        file.set_len(size).map_err(io)?;
        let mut at = 0u64;
        loop {
            let reply = self.fs(FsRequest::Pread {
                fd,
                offset: at,
                len: IO_CHUNK,
            });
            match reply {
                Ok(FsReply::Data(d)) if d.is_empty() => break,
                Ok(FsReply::Data(d)) => {
                    if d.iter().any(|&b| b != 0) {
                        file.write_all_at(&d, at).map_err(io)?;
                    }
                    at += d.len() as u64;
                }
                Ok(other) => return Err(self.unexpected(&other)),
                Err(e) => return Err(e.errno()),
            }
        }
        // The file may have changed size since it was opened.
        file.set_len(at).map_err(io)?;
        Ok(file)
    }

    /// The shadow directory standing for the remote directory `path`, in
    /// sync with its entries, opened read-only.
    fn shadow_dir(&mut self, path: &str) -> Result<OwnedFd, i32> {
        let fd = match self.fs(FsRequest::OpenDir {
            path: path.to_owned(),
        }) {
            Ok(FsReply::Opened(o)) => o.fd,
            Ok(other) => return Err(self.unexpected(&other)),
            Err(e) => return Err(e.errno()),
        };
        let mut entries = Vec::new();
        loop {
            match self.fs(FsRequest::ReadDirBatch { fd, max: DIR_BATCH }) {
                Ok(FsReply::DirEntries(batch)) if batch.is_empty() => break,
                Ok(FsReply::DirEntries(batch)) => entries.extend(batch),
                Ok(other) => return Err(self.unexpected(&other)),
                Err(e) => return Err(e.errno()),
            }
        }
        let _ = self.fs(FsRequest::Close { fd });
        let dir = self
            .shadow
            .sync(path, &entries)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        std::fs::File::open(&dir)
            .map(OwnedFd::from)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    fn stat_remote(&mut self, path: String, follow: bool) -> Result<Metadata, i32> {
        match self.fs(FsRequest::Stat {
            path,
            follow_symlinks: follow,
        }) {
            Ok(FsReply::Metadata(m)) => Ok(m),
            Ok(other) => Err(self.unexpected(&other)),
            Err(e) => Err(e.errno()),
        }
    }

    /// `stat`, `lstat`, `newfstatat`: a `struct stat` written into `buf`.
    pub(crate) fn stat(
        &mut self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path: u64,
        buf: u64,
        follow: bool,
    ) -> std::io::Result<Verdict> {
        let path = match self.place(call, mem, dirfd, path, false)? {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        Ok(match self.stat_remote(path, follow) {
            Ok(m) => {
                let st = to_stat(&m);
                if call.still_valid(self) {
                    mem.write(buf, bytes_of(&st))?;
                }
                Verdict::Return(0)
            }
            Err(errno) => Verdict::Errno(errno),
        })
    }

    /// `statx(dirfd, path, flags, mask, buf)`.
    pub(crate) fn statx(
        &mut self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path: u64,
        flags: i32,
        buf: u64,
    ) -> std::io::Result<Verdict> {
        let path = match self.place(call, mem, dirfd, path, false)? {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        Ok(
            match self.stat_remote(path, flags & libc::AT_SYMLINK_NOFOLLOW == 0) {
                Ok(m) => {
                    let st = to_statx(&m);
                    if call.still_valid(self) {
                        mem.write(buf, bytes_of(&st))?;
                    }
                    Verdict::Return(0)
                }
                Err(errno) => Verdict::Errno(errno),
            },
        )
    }

    /// `readlink(path, buf, size)` and `readlinkat(dirfd, path, buf, size)`.
    pub(crate) fn readlink(
        &mut self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path: u64,
        buf: u64,
        size: u64,
    ) -> std::io::Result<Verdict> {
        let path = match self.place(call, mem, dirfd, path, false)? {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        Ok(match self.fs(FsRequest::ReadLink { path }) {
            Ok(FsReply::Path(target)) => {
                let bytes = target.as_bytes();
                let n = bytes.len().min(size as usize);
                if call.still_valid(self) {
                    mem.write(buf, &bytes[..n])?;
                }
                Verdict::Return(n as i64)
            }
            Ok(other) => Verdict::Errno(self.unexpected(&other)),
            Err(e) => Verdict::Errno(e.errno()),
        })
    }

    /// `access`, `faccessat`, `faccessat2`.
    pub(crate) fn access(
        &mut self,
        call: &Call,
        mem: &Memory,
        dirfd: i64,
        path: u64,
        mode: u32,
    ) -> std::io::Result<Verdict> {
        let path = match self.place(call, mem, dirfd, path, mode & libc::W_OK as u32 != 0)? {
            Place::Local => return Ok(Verdict::Continue),
            Place::NotFound => return Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(p) => p,
        };
        Ok(
            match self.fs(FsRequest::Access {
                path,
                mode: AccessMode(mode),
            }) {
                Ok(FsReply::Done) => Verdict::Return(0),
                Ok(other) => Verdict::Errno(self.unexpected(&other)),
                Err(e) => Verdict::Errno(e.errno()),
            },
        )
    }
}

/// Whether `open` flags modify the file (what the policy calls a write).
fn opens_for_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
        || flags & (libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) != 0
        || flags & libc::O_TMPFILE == libc::O_TMPFILE
}

/// A new, empty `memfd` named after `path`.
pub(crate) fn memfd(path: &str, prefix: &str) -> std::io::Result<std::fs::File> {
    let name: String = format!("{prefix}:{path}").chars().take(200).collect();
    let cname = std::ffi::CString::new(name.replace('\0', "")).unwrap_or_default();
    // SAFETY: a valid C string and flags.
    let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { std::fs::File::from_raw_fd(raw) })
}

/// A new open file description of `file` (read-only, or read-write and
/// appending as asked): its own offset and access mode.
pub(crate) fn reopen(
    file: &std::fs::File,
    write: bool,
    append: bool,
) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .append(append)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Shadow directories: `ROOT/<remote path>` mirrors a remote directory's
/// entries (empty files, directories, symlinks) so listing is native.
///
/// `ROOT` (`$TMPDIR/remora-shadow-PID-NANOS`) is created at the first
/// remote directory listed, and removed with everything in it when the
/// `Shadow` or a [`ShadowCleanup`] of it is dropped, whichever comes first
/// (the supervisor thread of `remora run` is never joined: its process
/// exits when the program does). Its owner holds an exclusive `flock` on it
/// while it lives, so a root whose owner was killed outright (`SIGKILL`) is
/// recognised and removed by the next supervisor that starts
/// ([`sweep_stale`]), in any pid namespace.
#[derive(Debug)]
pub struct Shadow {
    root: PathBuf,
    state: std::sync::Arc<std::sync::Mutex<ShadowState>>,
}

#[derive(Debug, Default)]
struct ShadowState {
    /// The root's open fd holding the `flock`, once created.
    lock: Option<std::fs::File>,
    /// Removed for good: nothing is created any more.
    closed: bool,
}

/// Name prefix of the shadow roots in the temporary directory.
const SHADOW_PREFIX: &str = "remora-shadow-";

/// A stale root is only removed when it was last changed this long ago:
/// a root just created is locked a moment after `mkdir`.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl Shadow {
    /// A shadow under the temporary directory (created when first used);
    /// removes the roots of supervisors that are gone.
    pub fn new() -> std::io::Result<Shadow> {
        Ok(Shadow::new_in(&std::env::temp_dir()))
    }

    /// [`Shadow::new`] under `dir`.
    pub fn new_in(dir: &Path) -> Shadow {
        sweep_stale(dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let root = dir.join(format!("{SHADOW_PREFIX}{}-{nanos}", std::process::id()));
        Shadow {
            root,
            state: std::sync::Arc::default(),
        }
    }

    /// A handle that removes the root when dropped (also while this
    /// `Shadow` lives on in another thread): nothing is created after.
    pub fn cleanup(&self) -> ShadowCleanup {
        ShadowCleanup {
            root: self.root.clone(),
            state: std::sync::Arc::clone(&self.state),
        }
    }

    /// The remote path a local path under the shadow root stands for.
    pub fn remote_of(&self, local: &str) -> Option<String> {
        let root = self.root.to_str()?;
        let rest = local.strip_prefix(root)?;
        match rest {
            "" => Some("/".to_owned()),
            r if r.starts_with('/') => Some(r.to_owned()),
            _ => None,
        }
    }

    /// Bring `ROOT/path` in line with `entries`; returns its local path.
    fn sync(
        &self,
        path: &str,
        entries: &[remora_protocol::fs::DirEntry],
    ) -> std::io::Result<PathBuf> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.closed {
            return Err(std::io::Error::from_raw_os_error(libc::ESHUTDOWN));
        }
        if state.lock.is_none() {
            // A fresh root (`create_dir` fails if someone made it first),
            // locked while this supervisor lives.
            std::fs::create_dir(&self.root)?;
            let dir = std::fs::File::open(&self.root)?;
            use std::os::fd::AsRawFd;
            // SAFETY: flock on our own open fd.
            if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                let _ = std::fs::remove_dir(&self.root);
                return Err(e);
            }
            state.lock = Some(dir);
        }
        let dir = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)?;
        let wanted: std::collections::HashMap<&str, FileType> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.file_type))
            .collect();
        for existing in std::fs::read_dir(&dir)?.flatten() {
            let name = existing.file_name();
            let keep = name.to_str().is_some_and(|n| wanted.contains_key(n));
            if !keep {
                let p = existing.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
        for (name, kind) in wanted {
            if name == "." || name == ".." || name.contains('/') {
                continue;
            }
            let p = dir.join(name);
            if p.symlink_metadata().is_ok() {
                continue;
            }
            match kind {
                FileType::Directory => std::fs::create_dir(&p)?,
                FileType::Symlink => std::os::unix::fs::symlink(".", &p)?,
                _ => drop(std::fs::File::create(&p)?),
            }
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        remove_root(&self.root, &self.state);
    }
}

/// Removes a [`Shadow`]'s root when dropped (see [`Shadow::cleanup`]).
#[derive(Debug)]
pub struct ShadowCleanup {
    root: PathBuf,
    state: std::sync::Arc<std::sync::Mutex<ShadowState>>,
}

impl Drop for ShadowCleanup {
    fn drop(&mut self) {
        remove_root(&self.root, &self.state);
    }
}

fn remove_root(root: &Path, state: &std::sync::Mutex<ShadowState>) {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.closed = true;
    if let Some(lock) = state.lock.take() {
        let _ = std::fs::remove_dir_all(root);
        drop(lock);
    }
}

/// Remove the shadow roots in `dir` whose supervisor is gone: nobody holds
/// their `flock` (a live supervisor does, whatever its pid namespace), and
/// they have not changed for [`STALE_AFTER`]. Only this user's roots.
pub fn sweep_stale(dir: &Path) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with(SHADOW_PREFIX)) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= STALE_AFTER);
        if !meta.is_dir() || meta.uid() != uid || !old {
            continue;
        }
        let Ok(handle) = std::fs::File::open(&path) else {
            continue;
        };
        // SAFETY: flock on our own open fd.
        if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn to_stat(m: &Metadata) -> libc::stat {
    // SAFETY: plain old data; all-zero is valid and clears padding.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_dev = m.dev;
    st.st_ino = m.ino;
    st.st_nlink = m.nlink as _;
    st.st_mode = m.mode;
    st.st_uid = m.uid;
    st.st_gid = m.gid;
    st.st_rdev = m.rdev;
    st.st_size = m.size as i64;
    st.st_blksize = m.blksize as _;
    st.st_blocks = m.blocks as _;
    st.st_atime = m.atime.secs;
    st.st_atime_nsec = i64::from(m.atime.nanos);
    st.st_mtime = m.mtime.secs;
    st.st_mtime_nsec = i64::from(m.mtime.nanos);
    st.st_ctime = m.ctime.secs;
    st.st_ctime_nsec = i64::from(m.ctime.nanos);
    st
}

fn dev_major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

fn dev_minor(dev: u64) -> u32 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
}

fn statx_time(t: remora_protocol::fs::Timestamp) -> libc::statx_timestamp {
    // SAFETY: plain old data; zero fills the unnamed padding.
    let mut ts: libc::statx_timestamp = unsafe { std::mem::zeroed() };
    ts.tv_sec = t.secs;
    ts.tv_nsec = t.nanos;
    ts
}

fn to_statx(m: &Metadata) -> libc::statx {
    // SAFETY: plain old data; all-zero is valid.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    st.stx_mask = libc::STATX_BASIC_STATS;
    st.stx_blksize = m.blksize as u32;
    st.stx_nlink = m.nlink as u32;
    st.stx_uid = m.uid;
    st.stx_gid = m.gid;
    st.stx_mode = m.mode as u16;
    st.stx_ino = m.ino;
    st.stx_size = m.size;
    st.stx_blocks = m.blocks;
    st.stx_atime = statx_time(m.atime);
    st.stx_ctime = statx_time(m.ctime);
    st.stx_mtime = statx_time(m.mtime);
    st.stx_rdev_major = dev_major(m.rdev);
    st.stx_rdev_minor = dev_minor(m.rdev);
    st.stx_dev_major = dev_major(m.dev);
    st.stx_dev_minor = dev_minor(m.dev);
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_protocol::fs::DirEntry;

    fn entry(name: &str, file_type: FileType) -> DirEntry {
        DirEntry {
            name: name.into(),
            ino: 1,
            file_type,
        }
    }

    fn age(path: &Path) {
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn the_root_is_made_at_the_first_listing_and_removed_by_a_cleanup_handle() {
        let tmp = tempfile::tempdir().unwrap();
        let shadow = Shadow::new_in(tmp.path());
        assert!(!shadow.root().exists(), "nothing made before a listing");
        let dir = shadow
            .sync(
                "/srv/www",
                &[
                    entry("index.html", FileType::Regular),
                    entry("img", FileType::Directory),
                ],
            )
            .unwrap();
        assert_eq!(dir, shadow.root().join("srv/www"));
        assert!(dir.join("index.html").is_file() && dir.join("img").is_dir());
        // The cleanup handle (what `run` keeps) removes it while the
        // shadow itself lives on (the never-joined serving thread's).
        drop(shadow.cleanup());
        assert!(!shadow.root().exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        let again = shadow.sync("/srv", &[]).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::ESHUTDOWN));
        assert!(!shadow.root().exists(), "nothing made after the cleanup");
    }

    #[test]
    fn dropping_the_shadow_removes_its_root() {
        let tmp = tempfile::tempdir().unwrap();
        let shadow = Shadow::new_in(tmp.path());
        shadow.sync("/a", &[entry("b", FileType::Regular)]).unwrap();
        let root = shadow.root().to_path_buf();
        assert!(root.exists());
        drop(shadow);
        assert!(!root.exists());
    }

    #[test]
    fn a_new_shadow_sweeps_roots_whose_supervisor_is_gone_and_only_those() {
        let tmp = tempfile::tempdir().unwrap();
        // A live supervisor's root: locked.
        let live = Shadow::new_in(tmp.path());
        live.sync("/srv", &[entry("x", FileType::Regular)]).unwrap();
        age(live.root());
        // A killed supervisor's root: nobody holds its lock.
        let dead = tmp.path().join("remora-shadow-4000000-1");
        std::fs::create_dir_all(dead.join("srv/www")).unwrap();
        std::fs::write(dead.join("srv/www/index.html"), "").unwrap();
        age(&dead);
        // One just made (not locked yet), and something else of the user.
        let young = tmp.path().join("remora-shadow-4000000-2");
        std::fs::create_dir(&young).unwrap();
        let other = tmp.path().join("remora-fd-1.sock");
        std::fs::create_dir(&other).unwrap();
        age(&other);

        let _next = Shadow::new_in(tmp.path());
        assert!(!dead.exists(), "the dead supervisor's root is removed");
        assert!(live.root().join("srv/x").exists(), "a live one stays");
        assert!(young.exists(), "a fresh one stays");
        assert!(other.exists(), "other names stay");
    }
}
