//! The blocking file operations, run on a namespace worker so every path
//! resolves (symlinks, `..`, absolute links) inside the target's mount
//! namespace.

use super::fd_table::{FdTable, Handle, SharedHandle};
use bytes::Bytes;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::AccessFlags;
use remora_protocol::fs::{
    DirEntry, FileType, FsReply, FsRequest, Metadata, OpenOptions, OpenReply, OpenRequest,
    SeekFrom, Timestamp,
};
use remora_protocol::{ErrorCode, RemoteError, RemoteFd, RemoteResult};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::sync::{Mutex, MutexGuard};

/// Largest read answered at once; a bigger request gets a short read, as
/// `read(2)` may give. Far below the frame limit.
pub const MAX_READ_LEN: u64 = 1024 * 1024;

/// Most entries in one directory batch.
pub const MAX_DIR_BATCH: u32 = 1024;

/// Perform one request for the client owning `fds`.
pub fn execute(fds: &Mutex<FdTable>, request: FsRequest) -> RemoteResult<FsReply> {
    match request {
        FsRequest::Open(open) => open_file(fds, open),
        FsRequest::Read { fd, len } => {
            let handle = get(fds, fd)?;
            let mut handle = lock(&handle);
            let file = plain_file(&mut handle, "read")?;
            let mut buf = vec![0; len.min(MAX_READ_LEN) as usize];
            let n = retry(|| file.read(&mut buf)).map_err(|e| io_err("read", &e))?;
            buf.truncate(n);
            Ok(FsReply::Data(Bytes::from(buf)))
        }
        FsRequest::Pread { fd, offset, len } => {
            let handle = get(fds, fd)?;
            let mut handle = lock(&handle);
            let file = plain_file(&mut handle, "pread")?;
            let mut buf = vec![0; len.min(MAX_READ_LEN) as usize];
            let n = retry(|| file.read_at(&mut buf, offset)).map_err(|e| io_err("pread", &e))?;
            buf.truncate(n);
            Ok(FsReply::Data(Bytes::from(buf)))
        }
        FsRequest::Write { fd, data } => {
            let handle = get(fds, fd)?;
            let mut handle = lock(&handle);
            let file = plain_file(&mut handle, "write")?;
            let n =
                write_fully(&data, |rest, _| file.write(rest)).map_err(|e| io_err("write", &e))?;
            Ok(FsReply::Written(n as u64))
        }
        FsRequest::Pwrite { fd, offset, data } => {
            let handle = get(fds, fd)?;
            let mut handle = lock(&handle);
            let file = plain_file(&mut handle, "pwrite")?;
            let n = write_fully(&data, |rest, done| {
                file.write_at(rest, offset + done as u64)
            })
            .map_err(|e| io_err("pwrite", &e))?;
            Ok(FsReply::Written(n as u64))
        }
        FsRequest::Seek { fd, from } => {
            let handle = get(fds, fd)?;
            let mut handle = lock(&handle);
            let file = plain_file(&mut handle, "seek")?;
            let from = match from {
                SeekFrom::Start(n) => std::io::SeekFrom::Start(n),
                SeekFrom::Current(n) => std::io::SeekFrom::Current(n),
                SeekFrom::End(n) => std::io::SeekFrom::End(n),
            };
            let pos = file.seek(from).map_err(|e| io_err("seek", &e))?;
            Ok(FsReply::Position(pos))
        }
        FsRequest::Fstat { fd } => {
            let handle = get(fds, fd)?;
            let handle = lock(&handle);
            let meta = handle.file().metadata().map_err(|e| io_err("fstat", &e))?;
            Ok(FsReply::Metadata(metadata(&meta)))
        }
        FsRequest::Stat {
            path,
            follow_symlinks,
        } => {
            let meta = if follow_symlinks {
                std::fs::metadata(&path)
            } else {
                std::fs::symlink_metadata(&path)
            };
            let meta = meta.map_err(|e| io_err(format!("stat {path}"), &e))?;
            Ok(FsReply::Metadata(metadata(&meta)))
        }
        FsRequest::Access { path, mode } => {
            let flags = AccessFlags::from_bits_truncate(mode.0 as libc::c_int);
            nix::unistd::access(path.as_str(), flags)
                .map_err(|e| errno_err(format!("access {path}"), e))?;
            Ok(FsReply::Done)
        }
        FsRequest::Ftruncate { fd, len } => {
            let handle = get(fds, fd)?;
            let mut handle = lock(&handle);
            let file = plain_file(&mut handle, "ftruncate")?;
            file.set_len(len).map_err(|e| io_err("ftruncate", &e))?;
            Ok(FsReply::Done)
        }
        FsRequest::Fsync { fd, data_only } => {
            let handle = get(fds, fd)?;
            let mut handle = lock(&handle);
            let file = plain_file(&mut handle, "fsync")?;
            let synced = if data_only {
                retry(|| file.sync_data())
            } else {
                retry(|| file.sync_all())
            };
            synced.map_err(|e| io_err(if data_only { "fdatasync" } else { "fsync" }, &e))?;
            Ok(FsReply::Done)
        }
        FsRequest::Close { fd } => {
            table(fds).remove(fd)?;
            Ok(FsReply::Done)
        }
        FsRequest::OpenDir { path } => {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let fd = nix::fcntl::open(path.as_str(), flags, Mode::empty())
                .map_err(|e| errno_err(format!("opendir {path}"), e))?;
            let file = File::from(fd);
            let meta = file
                .metadata()
                .map_err(|e| io_err(format!("fstat {path}"), &e))?;
            let handle = dir_handle(file).map_err(|e| io_err(format!("opendir {path}"), &e))?;
            let fd = table(fds).insert(handle)?;
            Ok(FsReply::Opened(OpenReply {
                fd,
                metadata: metadata(&meta),
                snapshot: None,
            }))
        }
        FsRequest::ReadDirBatch { fd, max } => read_dir_batch(fds, fd, max),
        FsRequest::ReadLink { path } => {
            let target =
                std::fs::read_link(&path).map_err(|e| io_err(format!("readlink {path}"), &e))?;
            Ok(FsReply::Path(target.to_string_lossy().into_owned()))
        }
        FsRequest::Canonicalize { path } => {
            let real =
                std::fs::canonicalize(&path).map_err(|e| io_err(format!("realpath {path}"), &e))?;
            Ok(FsReply::Path(real.to_string_lossy().into_owned()))
        }
        FsRequest::MkDir { path, mode } => {
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(&path)
                .map_err(|e| io_err(format!("mkdir {path}"), &e))?;
            Ok(FsReply::Done)
        }
        FsRequest::Unlink { path } => {
            std::fs::remove_file(&path).map_err(|e| io_err(format!("unlink {path}"), &e))?;
            Ok(FsReply::Done)
        }
        FsRequest::RmDir { path } => {
            std::fs::remove_dir(&path).map_err(|e| io_err(format!("rmdir {path}"), &e))?;
            Ok(FsReply::Done)
        }
        FsRequest::Rename { from, to } => {
            std::fs::rename(&from, &to)
                .map_err(|e| io_err(format!("rename {from} to {to}"), &e))?;
            Ok(FsReply::Done)
        }
        request @ (FsRequest::SetMode { .. }
        | FsRequest::SetOwner { .. }
        | FsRequest::SetTimes { .. }
        | FsRequest::Truncate { .. }
        | FsRequest::Link { .. }
        | FsRequest::Symlink { .. }
        | FsRequest::StatFs { .. }) => super::meta::execute(request),
    }
}

/// The `open(2)` flags for portable options. `O_CLOEXEC` always: nothing the
/// agent opens for a client may leak into another process.
pub fn open_flags(options: &OpenOptions) -> OFlag {
    let writes = options.write || options.append;
    let mut flags = OFlag::O_CLOEXEC
        | match (options.read, writes) {
            (true, true) => OFlag::O_RDWR,
            (false, true) => OFlag::O_WRONLY,
            _ => OFlag::O_RDONLY,
        };
    for (wanted, flag) in [
        (options.append, OFlag::O_APPEND),
        (options.create, OFlag::O_CREAT),
        (options.truncate, OFlag::O_TRUNC),
        (options.exclusive, OFlag::O_EXCL),
        (options.directory, OFlag::O_DIRECTORY),
        (options.nofollow, OFlag::O_NOFOLLOW),
    ] {
        if wanted {
            flags |= flag;
        }
    }
    flags
}

fn open_file(fds: &Mutex<FdTable>, request: OpenRequest) -> RemoteResult<FsReply> {
    let OpenRequest {
        path,
        options,
        mode,
        snapshot_limit,
    } = request;
    let fd = nix::fcntl::open(
        path.as_str(),
        open_flags(&options),
        Mode::from_bits_truncate(mode),
    )
    .map_err(|e| errno_err(format!("open {path}"), e))?;
    let mut file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| io_err(format!("fstat {path}"), &e))?;
    let read_only = !(options.write || options.append || options.truncate || options.create);
    if snapshot_limit > 0 && read_only && meta.is_file() && meta.len() <= snapshot_limit {
        let mut content = Vec::with_capacity(meta.len() as usize);
        (&mut file)
            .take(snapshot_limit.saturating_add(1))
            .read_to_end(&mut content)
            .map_err(|e| io_err(format!("read {path}"), &e))?;
        if content.len() as u64 <= snapshot_limit {
            // The handle is closed right here, when `file` goes out of scope.
            return Ok(FsReply::Opened(OpenReply {
                fd: table(fds).reserve(),
                metadata: metadata(&meta),
                snapshot: Some(Bytes::from(content)),
            }));
        }
        // It grew past the limit while being read: hand out a normal handle.
        file.rewind()
            .map_err(|e| io_err(format!("seek {path}"), &e))?;
    }
    let fd = table(fds).insert(Handle::File(file))?;
    Ok(FsReply::Opened(OpenReply {
        fd,
        metadata: metadata(&meta),
        snapshot: None,
    }))
}

/// A directory handle over `file`, which must be a directory: the listing
/// reads through a duplicate of the descriptor, which shares its offset.
fn dir_handle(file: File) -> std::io::Result<Handle> {
    let dup = OwnedFd::from(file.try_clone()?);
    let entries = Dir::from_fd(dup)?.into_iter();
    Ok(Handle::Dir { file, entries })
}

fn read_dir_batch(fds: &Mutex<FdTable>, fd: RemoteFd, max: u32) -> RemoteResult<FsReply> {
    let shared = get(fds, fd)?;
    let mut handle = lock(&shared);
    let entries = dir_entries(&mut handle).map_err(|e| io_err("readdir", &e))?;
    let mut batch = Vec::new();
    for entry in entries.take(max.clamp(1, MAX_DIR_BATCH) as usize) {
        let entry = entry.map_err(|e| errno_err("readdir", e))?;
        batch.push(DirEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            ino: entry.ino(),
            file_type: entry.file_type().map_or(FileType::Unknown, file_type),
        });
    }
    Ok(FsReply::DirEntries(batch))
}

/// The directory stream of a handle. A directory opened with
/// `open(O_DIRECTORY)` and listed later (`fdopendir`) becomes a directory
/// handle on first use; a regular file is not a directory.
fn dir_entries(handle: &mut Handle) -> std::io::Result<&mut nix::dir::OwningIter> {
    if let Handle::File(file) = handle {
        // Checked first: `fdopendir` on a non-directory would leak the dup.
        if !file.metadata()?.is_dir() {
            return Err(Errno::ENOTDIR.into());
        }
        let file = file.try_clone()?;
        *handle = dir_handle(file)?;
    }
    match handle {
        Handle::Dir { entries, .. } => Ok(entries),
        Handle::File(_) => Err(Errno::ENOTDIR.into()),
    }
}

fn file_type(t: nix::dir::Type) -> FileType {
    use nix::dir::Type;
    match t {
        Type::Fifo => FileType::Fifo,
        Type::CharacterDevice => FileType::CharDevice,
        Type::Directory => FileType::Directory,
        Type::BlockDevice => FileType::BlockDevice,
        Type::File => FileType::Regular,
        Type::Symlink => FileType::Symlink,
        Type::Socket => FileType::Socket,
    }
}

/// Every field of `stat`, from the standard library's view of it.
pub fn metadata(meta: &std::fs::Metadata) -> Metadata {
    let stamp = |secs: i64, nanos: i64| Timestamp {
        secs,
        nanos: nanos.clamp(0, 999_999_999) as u32,
    };
    Metadata {
        dev: meta.dev(),
        ino: meta.ino(),
        mode: meta.mode(),
        nlink: meta.nlink(),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev(),
        size: meta.size(),
        blksize: meta.blksize(),
        blocks: meta.blocks(),
        atime: stamp(meta.atime(), meta.atime_nsec()),
        mtime: stamp(meta.mtime(), meta.mtime_nsec()),
        ctime: stamp(meta.ctime(), meta.ctime_nsec()),
    }
}

/// Only a plain file handle reads, writes and seeks: a directory being listed
/// answers like `read(2)` on a directory does.
fn plain_file<'h>(handle: &'h mut Handle, op: &str) -> RemoteResult<&'h mut File> {
    match handle {
        Handle::File(file) => Ok(file),
        Handle::Dir { .. } => Err(RemoteError::new(
            ErrorCode::IsADirectory,
            format!("{op}: the handle is an open directory"),
        )),
    }
}

fn table(fds: &Mutex<FdTable>) -> MutexGuard<'_, FdTable> {
    // A panic while holding the lock (caught by the worker) cannot leave the
    // map itself half-updated, so the data is still good.
    fds.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn get(fds: &Mutex<FdTable>, fd: RemoteFd) -> RemoteResult<SharedHandle> {
    table(fds).get(fd)
}

fn lock(handle: &SharedHandle) -> MutexGuard<'_, Handle> {
    // As above: a handle is a plain file or directory stream either way.
    handle
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write all of `data` with `write(rest, done)`, looping on short writes
/// (and `EINTR`), so a frame's bytes are never half-written silently. An error
/// after some bytes went out reports those bytes; the caller's next write
/// then meets the error.
pub(crate) fn write_fully(
    data: &[u8],
    mut write: impl FnMut(&[u8], usize) -> std::io::Result<usize>,
) -> std::io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match write(&data[done..], done) {
            Ok(0) => {
                return if done > 0 {
                    Ok(done)
                } else {
                    Err(std::io::ErrorKind::WriteZero.into())
                };
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) if done > 0 => return Ok(done),
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn retry<T>(mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// An I/O error as the client sees it: the OS errno, and what was attempted.
pub fn io_err(context: impl std::fmt::Display, err: &std::io::Error) -> RemoteError {
    RemoteError::from_io(context, err)
}

/// The same for a `nix` errno.
pub fn errno_err(context: impl std::fmt::Display, errno: Errno) -> RemoteError {
    io_err(context, &std::io::Error::from(errno))
}
