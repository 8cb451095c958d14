//! Safe logic of the file hooks: route paths by policy, talk to the agent, and
//! turn remote files into descriptors (snapshots or placeholders).

use super::{FileInfo, RemoteHandle, stat};
use crate::error::{HookError, HookResult};
use crate::fd::{self, Managed, Shared};
use crate::{session, state};
use bytes::Bytes;
use libc::{c_char, c_int};
use remora_config::FsDecision;
use remora_protocol::fs::{
    AccessMode, FsReply, FsRequest, Metadata, OpenOptions, OpenReply, OpenRequest, SeekFrom,
};
use remora_protocol::{MAX_FRAME_LEN, Request, Response};
use std::ffi::{CStr, CString};
use std::sync::Arc;

/// Read-only regular files up to this size become in-memory snapshots
/// (`memfd`) that the application reads natively, without any hook.
pub const SNAPSHOT_LIMIT: u64 = 64 << 20;
/// Room left in a frame for everything of an `Opened` reply but the content.
const FRAME_HEADROOM: u64 = 64 << 10;
/// Largest snapshot asked for inline in the open reply: the reply must fit one
/// frame ([`MAX_FRAME_LEN`]). Bigger snapshots are fetched with `Pread`s.
pub const INLINE_SNAPSHOT_LIMIT: u64 = {
    let frame = MAX_FRAME_LEN as u64 - FRAME_HEADROOM;
    if frame < SNAPSHOT_LIMIT {
        frame
    } else {
        SNAPSHOT_LIMIT
    }
};
/// Largest payload of one read or write request.
pub const IO_CHUNK: usize = 1 << 20;
// Every reply carrying file content must fit one frame.
const _: () = assert!(INLINE_SNAPSHOT_LIMIT < MAX_FRAME_LEN as u64 && IO_CHUNK < MAX_FRAME_LEN);
/// Directory entries asked for per `ReadDirBatch`.
pub const DIR_BATCH: u32 = 128;
/// `memfd` name prefix of a snapshot (visible in `/proc/PID/fd`).
const SNAPSHOT_PREFIX: &str = "remora:";
/// `memfd` name prefix of a placeholder that only reserves an fd number.
const PLACEHOLDER_PREFIX: &str = "remora-remote:";
/// Longest `memfd` name the kernel accepts is 249 bytes; keep well below.
const MEMFD_NAME_MAX: usize = 200;

/// Where a path-taking call happens.
#[derive(Debug)]
pub enum Routed<T> {
    /// Done in the target, with this result.
    Remote(T),
    /// Call libc. `Some(path)`: with `(AT_FDCWD, path)` instead of the
    /// caller's `(dirfd, path)`, because the dirfd is a remote directory's
    /// placeholder that the kernel cannot resolve against.
    Local(Option<CString>),
}

/// Unwrap a [`Routed::Remote`] or return the [`Routed::Local`] from the function.
macro_rules! remote_or_return {
    ($routed:expr) => {
        match $routed {
            Routed::Remote(value) => value,
            Routed::Local(local) => return Ok(Routed::Local(local)),
        }
    };
}

/// Match the expected reply variant or report a protocol violation.
macro_rules! expect_reply {
    ($reply:expr, $pat:pat => $out:expr) => {
        match $reply {
            $pat => Ok($out),
            other => Err(session::protocol_violation(&other)),
        }
    };
}

/// Send one file request to the agent.
pub fn fs(request: FsRequest) -> HookResult<FsReply> {
    match session::remote(Request::Fs(request))? {
        Response::Fs(reply) => Ok(reply),
        other => Err(session::protocol_violation(&other)),
    }
}

fn done(request: FsRequest) -> HookResult<()> {
    expect_reply!(fs(request)?, FsReply::Done => ())
}

/// `path` joined to the absolute directory `base` (no file-system access).
pub fn absolutize(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        return path.to_owned();
    }
    let mut rel = path;
    while let Some(rest) = rel.strip_prefix("./") {
        rel = rest.trim_start_matches('/');
    }
    let base = base.trim_end_matches('/');
    match rel {
        "" | "." if base.is_empty() => "/".to_owned(),
        "" | "." => base.to_owned(),
        _ => format!("{base}/{rel}"),
    }
}

fn cwd() -> HookResult<String> {
    std::env::current_dir()
        .map_err(|_| HookError::Bypass("no working directory"))?
        .into_os_string()
        .into_string()
        .map_err(|_| HookError::Bypass("working directory is not UTF-8"))
}

/// The path of the remote directory that `fd` stands for, if it is one.
fn remote_dir(fd: c_int) -> Option<Arc<str>> {
    match fd::get(fd)? {
        Managed::File(info) if info.is_dir() => Some(info.path),
        _ => None,
    }
}

/// Make `path` absolute (relative to `dirfd`, which may be `AT_FDCWD`) and
/// ask the policy where it lives.
///
/// # Errors
/// `Bypass` when the layer is inactive, the path is empty or not UTF-8, or it
/// is relative to a local directory fd; `ENOENT` for the policy's `not_found`.
pub fn locate(dirfd: c_int, path: &CStr, write: bool) -> HookResult<Routed<String>> {
    let state = state::get().ok_or(HookError::Bypass("layer inactive"))?;
    let bytes = path.to_bytes();
    if bytes.is_empty() {
        return Err(HookError::Bypass("empty path"));
    }
    if bytes[0] == b'/' {
        // Absolute paths (the common case) are decided on the C string's
        // bytes: a local answer needs neither a copy nor a UTF-8 pass.
        return match state.policies.fs.decide_bytes(bytes, write) {
            FsDecision::Local => Ok(Routed::Local(None)),
            FsDecision::NotFound => Err(HookError::Errno(libc::ENOENT)),
            FsDecision::Remote | FsDecision::RemoteWrite => Ok(Routed::Remote(
                path.to_str()
                    .map_err(|_| HookError::Bypass("path is not UTF-8"))?
                    .to_owned(),
            )),
        };
    }
    let text = path
        .to_str()
        .map_err(|_| HookError::Bypass("path is not UTF-8"))?;
    let (abs, via_remote_dir) = if dirfd == libc::AT_FDCWD {
        match super::cwd::remote() {
            // Relative to the remote working directory: a local answer must
            // be given to libc as an absolute path.
            Some(base) => (absolutize(&base, text), true),
            None => (absolutize(&cwd()?, text), false),
        }
    } else {
        let dir = remote_dir(dirfd).ok_or(HookError::Bypass("relative to a local dirfd"))?;
        (absolutize(&dir, text), true)
    };
    match state.policies.fs.decide(&abs, write) {
        FsDecision::Local if via_remote_dir => {
            // Cannot fail: built from a C string and a directory path.
            let c = CString::new(abs).map_err(|_| HookError::Errno(libc::EINVAL))?;
            Ok(Routed::Local(Some(c)))
        }
        FsDecision::Local => Ok(Routed::Local(None)),
        FsDecision::NotFound => Err(HookError::Errno(libc::ENOENT)),
        FsDecision::Remote | FsDecision::RemoteWrite => Ok(Routed::Remote(abs)),
    }
}

/// Whether a call on `path` goes to libc without entering the layer at all:
/// the layer is inactive, or `path` is absolute and the fs policy keeps it
/// local for this kind of access (`write`). The decision is pure (no lock,
/// no remote call, no hooked libc call), so the hot local case skips the
/// detour guard's thread-local accesses; any other answer takes the guarded
/// path, which decides the same way. The common local paths are answered
/// from precomputed data without measuring the string
/// ([`super::local_paths`]); the others get the policy's full decision.
///
/// # Safety
/// `path` must point to a NUL-terminated string.
#[inline]
pub unsafe fn stays_local(path: *const c_char, write: bool) -> bool {
    let Some(state) = state::get() else {
        return true;
    };
    // SAFETY: the caller guarantees a NUL-terminated string.
    if unsafe { state.local_paths.certainly_local(path) } {
        return true;
    }
    // SAFETY: as above.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    bytes.first() == Some(&b'/')
        && state.policies.fs.decide_bytes(bytes, write) == FsDecision::Local
}

/// After a local call that returned `fd`: forget what the fd table may still
/// hold for that number ([`forget_stale`]), entering the guard only when
/// there is something to forget (dropping a remote handle is a remote call).
/// A call the layer itself made (the guard already held) forgets nothing, as
/// the guarded path never did: its locks may be held around this call.
#[inline]
pub fn forget_stale_unguarded(fd: c_int) {
    if fd::maybe_managed(fd)
        && let Some(_g) = crate::guard::DetourGuard::enter()
    {
        forget_stale(fd);
    }
}

/// [`locate`] for an `open` with `flags`, warning once when read mode sends
/// a write-open of a file the target has to a local file.
pub fn locate_open(dirfd: c_int, path: &CStr, flags: c_int) -> HookResult<Routed<String>> {
    let routed = locate(dirfd, path, opens_for_write(flags))?;
    if let Routed::Local(_) = routed {
        super::read_mode::check(dirfd, path, flags);
    }
    Ok(routed)
}

/// Whether `open` flags modify the file (what the policy calls a write).
pub fn opens_for_write(flags: c_int) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
        || flags & (libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) != 0
        || flags & libc::O_TMPFILE == libc::O_TMPFILE
}

/// Translate `open(2)` flags to the protocol's portable options.
pub fn open_options(flags: c_int) -> OpenOptions {
    let access = flags & libc::O_ACCMODE;
    let tmpfile = flags & libc::O_TMPFILE == libc::O_TMPFILE;
    OpenOptions {
        read: access == libc::O_RDONLY || access == libc::O_RDWR,
        write: access == libc::O_WRONLY || access == libc::O_RDWR,
        append: flags & libc::O_APPEND != 0,
        create: flags & libc::O_CREAT != 0,
        truncate: flags & libc::O_TRUNC != 0,
        exclusive: flags & libc::O_EXCL != 0,
        // O_TMPFILE contains the O_DIRECTORY bit.
        directory: flags & libc::O_DIRECTORY != 0 && !tmpfile,
        nofollow: flags & libc::O_NOFOLLOW != 0,
    }
}

/// The `open(2)` flags equivalent to an `fopen(3)` mode string, `None` when
/// the mode is invalid (libc then reports `EINVAL` itself).
pub fn fopen_flags(mode: &[u8]) -> Option<c_int> {
    let (first, rest) = mode.split_first()?;
    let mut flags = match first {
        b'r' => libc::O_RDONLY,
        b'w' => libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        b'a' => libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        _ => return None,
    };
    for &c in rest {
        match c {
            b'+' => flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR,
            b'e' => flags |= libc::O_CLOEXEC,
            b'x' => flags |= libc::O_EXCL,
            // ",ccs=..." ends the flags; 'b', 't', 'm', 'c' change nothing here.
            b',' => break,
            _ => {}
        }
    }
    Some(flags)
}

/// What a remote open produced.
#[derive(Debug)]
pub enum Opened {
    /// A real fd the application uses natively (snapshot or directory
    /// placeholder), already recorded in the fd table.
    Native(c_int),
    /// An agent handle, still to be given an fd placeholder or a stdio cookie.
    Handle(FileInfo),
}

/// `open`/`openat`: a real fd for a remote file, or where to call libc.
pub fn open(dirfd: c_int, path: &CStr, flags: c_int, mode: u32) -> HookResult<Routed<c_int>> {
    let path = remote_or_return!(locate_open(dirfd, path, flags)?);
    match open_remote(path, flags, mode)? {
        Opened::Native(fd) => Ok(Routed::Remote(fd)),
        Opened::Handle(info) => placeholder(info, flags & libc::O_CLOEXEC != 0).map(Routed::Remote),
    }
}

/// Open the target's `path` (already routed remote) with `open(2)` flags.
pub fn open_remote(path: String, flags: c_int, mode: u32) -> HookResult<Opened> {
    let cloexec = flags & libc::O_CLOEXEC != 0;
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        return Err(HookError::Errno(libc::EOPNOTSUPP));
    }
    if flags & (libc::O_DIRECTORY | libc::O_PATH) != 0 {
        let metadata = stat_remote(&path, flags & libc::O_NOFOLLOW == 0)?;
        if flags & libc::O_DIRECTORY != 0 && !stat::is_dir(metadata.mode) {
            return Err(HookError::Errno(libc::ENOTDIR));
        }
        let info = FileInfo {
            path: path.into(),
            metadata,
            remote: None,
            stream: None,
        };
        return placeholder(info, cloexec).map(Opened::Native);
    }
    let write = opens_for_write(flags);
    if !write && fast_path_allowed(&path) {
        if let Some(fd) = open_fast(&path, flags)? {
            return Ok(Opened::Native(fd));
        }
    }
    let request = OpenRequest {
        path: path.clone(),
        options: open_options(flags),
        mode: if flags & libc::O_CREAT != 0 {
            mode & 0o7777
        } else {
            0
        },
        snapshot_limit: if write { 0 } else { INLINE_SNAPSHOT_LIMIT },
    };
    let OpenReply {
        fd: remote_fd,
        metadata,
        snapshot,
    } = expect_reply!(fs(FsRequest::Open(request))?, FsReply::Opened(reply) => reply)?;
    if write && flags & libc::O_ACCMODE == libc::O_WRONLY && stat::is_regular(metadata.mode) {
        // The intproxy owns (and closes) the remote handle from here on.
        return stream_writes(&path, remote_fd, metadata, cloexec).map(Opened::Native);
    }
    let path: Arc<str> = path.into();
    if let Some(content) = snapshot {
        // The agent already closed its handle.
        return native_snapshot(path, metadata, &content, cloexec).map(Opened::Native);
    }
    let handle = Arc::new(RemoteHandle::new(remote_fd));
    if stat::is_dir(metadata.mode) {
        // A read-only open of a directory: only its path matters from now on.
        drop(handle);
        let info = FileInfo {
            path,
            metadata,
            remote: None,
            stream: None,
        };
        return placeholder(info, cloexec).map(Opened::Native);
    }
    if !write && stat::is_regular(metadata.mode) && metadata.size <= SNAPSHOT_LIMIT {
        let fd = memfd(SNAPSHOT_PREFIX, &path, cloexec)?;
        match read_whole(&handle, metadata.size, fd) {
            Ok(Some(len)) => {
                drop(handle);
                let fd = read_only(fd, cloexec);
                return Ok(Opened::Native(record_snapshot(fd, path, metadata, len)));
            }
            Ok(None) => close_quietly(fd),
            Err(e) => {
                close_quietly(fd);
                return Err(e);
            }
        }
    }
    Ok(Opened::Handle(FileInfo {
        path,
        metadata,
        remote: Some(handle),
        stream: None,
    }))
}

/// Whether a read-only open of `path` may take the local fast path: only
/// when this run can never write `path` remotely, so no write stream of the
/// intproxy can hold bytes for it that the target does not have yet (the
/// proxied path waits for those; the fast path does not see them).
fn fast_path_allowed(path: &str) -> bool {
    crate::broker::available()
        && state::get().is_some_and(|s| s.policies.fs.decide(path, true) != FsDecision::RemoteWrite)
}

/// Open `path` through the local fast path: the target's file itself,
/// opened read-only under its root, here when that gives the broker's
/// answer ([`crate::broker::open_direct`]), else by the broker inside the
/// target's mount namespace. `None`: not a regular file, or no fast path;
/// the proxied path serves it.
fn open_fast(path: &str, flags: c_int) -> HookResult<Option<c_int>> {
    use remora_broker_client::root::Direct;
    use remora_protocol::broker::{BrokerReply, BrokerRequest};
    use std::os::fd::IntoRawFd;
    let nofollow = flags & libc::O_NOFOLLOW != 0;
    let cloexec = flags & libc::O_CLOEXEC != 0;
    let fd = match crate::broker::open_direct(path, nofollow, cloexec) {
        Some(Direct::File(fd)) => fd.into_raw_fd(),
        Some(Direct::NotRegular) => return Ok(None),
        Some(Direct::Failed(errno)) => return Err(HookError::Errno(errno)),
        Some(Direct::AskBroker | Direct::Unsupported) | None => {
            let request = BrokerRequest::OpenRead {
                path: path.to_owned(),
                nofollow,
            };
            let received = match crate::broker::call(&request, cloexec) {
                Ok(received) => received,
                Err(HookError::Bypass(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            if received.reply == BrokerReply::NotRegular {
                if let Some(fd) = received.fd {
                    close_quietly(fd);
                }
                return Ok(None);
            }
            crate::broker::expect_fd(received)?.1
        }
    };
    if flags & libc::O_NONBLOCK != 0 {
        // SAFETY: setting status flags on the descriptor we just received.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_RDONLY | libc::O_NONBLOCK) };
    }
    forget_stale(fd);
    Ok(Some(fd))
}

/// A write-only remote file as a local stream socket (see the intproxy's
/// `file_stream`): a kernel fd, so stdio's internal writes and exec'd
/// children (`cmd > file` in a shell) reach the target too. Seeking it fails
/// with `ESPIPE`, like a pipe.
fn stream_writes(
    path: &str,
    remote: remora_protocol::RemoteFd,
    metadata: Metadata,
    cloexec: bool,
) -> HookResult<c_int> {
    use remora_protocol::messages::{InterceptorAddr, LayerRequest, LayerResponse};
    let request = LayerRequest::StreamWrites {
        fd: remote,
        path: path.to_owned(),
    };
    let addr = match session::request(request)? {
        LayerResponse::Intercepted {
            interceptor: InterceptorAddr::Ip(addr),
            ..
        } => addr,
        other => return Err(session::protocol_violation(&other)),
    };
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let kind = libc::SOCK_STREAM | if cloexec { libc::SOCK_CLOEXEC } else { 0 };
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(family, kind, 0) };
    if fd < 0 {
        return Err(HookError::Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ));
    }
    let target = crate::sockaddr::encode(addr, family);
    // SAFETY: `target` is a valid sockaddr; the layer's guard makes this the real connect.
    if unsafe { libc::connect(fd, target.as_ptr(), target.len) } != 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        close_quietly(fd);
        return Err(HookError::Errno(errno));
    }
    // Nothing is ever read from it: make reads see end-of-file at once.
    // SAFETY: shutting down the read half of our own socket.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    record(
        fd,
        FileInfo {
            path: path.into(),
            metadata,
            remote: None,
            stream: Some(addr),
        },
    );
    Ok(fd)
}

/// The intproxy's end of the write stream behind `fd`, if `fd` is one.
pub fn write_stream(fd: c_int) -> Option<std::net::SocketAddr> {
    match fd::get(fd)? {
        Managed::File(FileInfo {
            stream: Some(addr), ..
        }) => Some(addr),
        _ => None,
    }
}

/// How long [`stream_sync`] waits for the intproxy to take the bytes of
/// the stream out of the kernel at most (the reply timeout).
fn stream_ack_deadline() -> std::time::Duration {
    session::reply_timeout()
}

/// Whether the kernel still holds bytes written to socket `fd` that its
/// peer has not acknowledged (`SIOCOUTQ`).
fn unacknowledged(fd: c_int) -> bool {
    let mut queued: c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int; `fd` is the caller's socket.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    rc == 0 && queued > 0
}

/// `fsync`/`close` of a write stream: wait until the intproxy's kernel has
/// every byte written so far (acknowledged), then ask the intproxy to write
/// them to the target (and `sync: Some(data_only)`: to sync the file). The
/// stream's first remote error, if any, is the result: a failed remote
/// write reaches the program here. `Bypass` with an intproxy too old to ask.
pub fn stream_sync(fd: c_int, stream: std::net::SocketAddr, sync: Option<bool>) -> HookResult<()> {
    use remora_protocol::messages::{LayerRequest, LayerResponse};
    if !session::intproxy_supports(remora_protocol::Capabilities::STREAM_SYNC) {
        return Err(HookError::Bypass("the intproxy cannot sync write streams"));
    }
    let deadline = std::time::Instant::now() + stream_ack_deadline();
    let mut pause = std::time::Duration::from_micros(50);
    while unacknowledged(fd) && std::time::Instant::now() < deadline {
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(5));
    }
    match session::request(LayerRequest::StreamSync { stream, sync })? {
        LayerResponse::StreamSynced => Ok(()),
        other => Err(session::protocol_violation(&other)),
    }
}

fn native_snapshot(
    path: Arc<str>,
    metadata: Metadata,
    content: &[u8],
    cloexec: bool,
) -> HookResult<c_int> {
    let fd = snapshot_fd(&path, content, cloexec)?;
    Ok(record_snapshot(fd, path, metadata, content.len() as u64))
}

/// Manage `fd`, a snapshot of `path` holding `len` bytes; `fd`.
fn record_snapshot(fd: c_int, path: Arc<str>, mut metadata: Metadata, len: u64) -> c_int {
    // What the fd holds is what fstat must report.
    metadata.size = len;
    record(
        fd,
        FileInfo {
            path,
            metadata,
            remote: None,
            stream: None,
        },
    );
    fd
}

/// `Pread`s in flight at once while fetching a snapshot (over as many of
/// the process's intproxy connections): the intproxy and the agent copy one
/// chunk while the next is read.
const SNAPSHOT_PIPELINE: usize = 4;

/// Fetch a whole remote file with pipelined `Pread`s into `fd` (a new
/// `memfd`), each chunk written as it arrives; its length, or `None` when
/// it grew past [`SNAPSHOT_LIMIT`] meanwhile (the handle's position is
/// untouched).
fn read_whole(handle: &RemoteHandle, expected: u64, fd: c_int) -> HookResult<Option<u64>> {
    let mut len = 0u64;
    let mut too_big = false;
    let offsets = (0u64..).map(|i| i * IO_CHUNK as u64);
    let requests = offsets.map(|offset| {
        Request::Fs(FsRequest::Pread {
            fd: handle.fd,
            offset,
            len: IO_CHUNK as u64,
        })
    });
    // One request when the file fits a chunk: no read-ahead past its end.
    let depth = if expected < IO_CHUNK as u64 {
        1
    } else {
        SNAPSHOT_PIPELINE
    };
    session::remote_pipelined(requests, depth, |response| {
        let chunk = match response {
            Response::Fs(FsReply::Data(data)) => data,
            other => return Err(session::protocol_violation(&other)),
        };
        if len + chunk.len() as u64 > SNAPSHOT_LIMIT {
            too_big = true;
            return Ok(false);
        }
        write_all(fd, &chunk)?;
        len += chunk.len() as u64;
        // A short chunk is the end (the agent answers up to IO_CHUNK).
        Ok(chunk.len() == IO_CHUNK)
    })?;
    Ok((!too_big).then_some(len))
}

/// Start managing `fd`, first releasing whatever a stale entry held (an fd
/// closed behind the layer's back, e.g. by glibc-internal `fclose`).
fn record(fd: c_int, info: FileInfo) {
    drop(fd::remove(fd));
    fd::insert(fd, Managed::File(info));
}

/// Forget a stale entry for an fd number the kernel just handed out.
pub fn forget_stale(fd: c_int) {
    // Looking first keeps the common case (nothing recorded) on the read lock.
    if fd >= 0 && fd::get(fd).is_some() {
        drop(fd::remove(fd));
    }
}

/// The `memfd` name for `path`: prefix + base name, bounded.
pub fn memfd_name(prefix: &str, path: &str) -> CString {
    let base = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let mut end = base.len().min(MEMFD_NAME_MAX);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    let name: Vec<u8> = prefix
        .bytes()
        .chain(base[..end].bytes())
        .filter(|&b| b != 0)
        .collect();
    // Cannot fail: NUL bytes were filtered out.
    CString::new(name).unwrap_or_default()
}

fn last_errno() -> HookError {
    HookError::Errno(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn memfd(prefix: &str, path: &str, cloexec: bool) -> HookResult<c_int> {
    let name = memfd_name(prefix, path);
    let flags = if cloexec { libc::MFD_CLOEXEC } else { 0 };
    // SAFETY: `name` is NUL-terminated.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 { Err(last_errno()) } else { Ok(fd) }
}

fn close_quietly(fd: c_int) {
    // SAFETY: closing an fd this module created and still owns.
    unsafe { libc::close(fd) };
}

/// An empty `memfd` that reserves an fd number for a remote file, recorded
/// with `info`.
pub fn placeholder(info: FileInfo, cloexec: bool) -> HookResult<c_int> {
    let fd = memfd(PLACEHOLDER_PREFIX, &info.path, cloexec)?;
    record(fd, info);
    Ok(fd)
}

fn write_all(fd: c_int, mut data: &[u8]) -> HookResult<()> {
    while !data.is_empty() {
        // SAFETY: `data` is a valid buffer of data.len() bytes.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(HookError::Errno(err.raw_os_error().unwrap_or(libc::EIO)));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// A read-only fd at offset 0 holding `content`.
fn snapshot_fd(path: &str, content: &[u8], cloexec: bool) -> HookResult<c_int> {
    let fd = memfd(SNAPSHOT_PREFIX, path, cloexec)?;
    if let Err(e) = write_all(fd, content) {
        close_quietly(fd);
        return Err(e);
    }
    Ok(read_only(fd, cloexec))
}

/// `fd`, a filled `memfd`, made read-only at offset 0.
fn read_only(fd: c_int, cloexec: bool) -> c_int {
    // Reopen read-only under the same number, so writes fail with EBADF as
    // they would on a file opened O_RDONLY, and open's lowest-free-fd
    // guarantee holds.
    let cloexec_flag = if cloexec { libc::O_CLOEXEC } else { 0 };
    let proc_path = memfd_proc_path(fd);
    // SAFETY: `proc_path` is NUL-terminated.
    let ro = unsafe { libc::open(proc_path.as_ptr(), libc::O_RDONLY | cloexec_flag) };
    if ro >= 0 {
        // SAFETY: both fds are ours; dup3 atomically replaces the writable one.
        let rc = unsafe { libc::dup3(ro, fd, cloexec_flag) };
        close_quietly(ro);
        if rc >= 0 {
            return fd;
        }
    }
    // No /proc: keep the writable memfd, rewound.
    // SAFETY: seeking an fd we own.
    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    fd
}

fn memfd_proc_path(fd: c_int) -> CString {
    // Cannot fail: digits only.
    CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default()
}

/// The agent handle behind a placeholder `fd`; `None` (one atomic load when
/// nothing is managed) for every other fd.
pub fn remote_handle(fd: c_int) -> Option<Shared<RemoteHandle>> {
    match fd::get(fd)? {
        Managed::File(FileInfo {
            remote: Some(handle),
            ..
        }) => Some(handle),
        _ => None,
    }
}

/// Run a transfer of `total` bytes as requests of at most [`IO_CHUNK`];
/// `step(done, want)` moves up to `want` bytes and says how many it moved.
/// Stops at the first short step; an error after progress reports the
/// progress (the error comes back on the next call).
pub fn chunked(
    total: usize,
    mut step: impl FnMut(usize, usize) -> HookResult<usize>,
) -> HookResult<usize> {
    let mut done = 0;
    while done < total {
        let want = (total - done).min(IO_CHUNK);
        match step(done, want) {
            Ok(n) => {
                done += n.min(want);
                if n < want {
                    break;
                }
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

fn copy_in(buf: &mut [u8], done: usize, data: &Bytes) -> usize {
    let n = data.len().min(buf.len() - done);
    buf[done..done + n].copy_from_slice(&data[..n]);
    n
}

/// `read` on a remote handle, at its current position.
pub fn read(handle: &RemoteHandle, buf: &mut [u8]) -> HookResult<usize> {
    let total = buf.len();
    chunked(total, |done, want| {
        let data = expect_reply!(
            fs(FsRequest::Read { fd: handle.fd, len: want as u64 })?,
            FsReply::Data(data) => data
        )?;
        Ok(copy_in(buf, done, &data))
    })
}

/// `pread` on a remote handle.
pub fn pread(handle: &RemoteHandle, buf: &mut [u8], offset: i64) -> HookResult<usize> {
    let offset = u64::try_from(offset).map_err(|_| HookError::Errno(libc::EINVAL))?;
    let total = buf.len();
    chunked(total, |done, want| {
        let request = FsRequest::Pread {
            fd: handle.fd,
            offset: offset + done as u64,
            len: want as u64,
        };
        let data = expect_reply!(fs(request)?, FsReply::Data(data) => data)?;
        Ok(copy_in(buf, done, &data))
    })
}

/// `write` on a remote handle, at its current position (or end, with O_APPEND).
pub fn write(handle: &RemoteHandle, buf: &[u8]) -> HookResult<usize> {
    chunked(buf.len(), |done, want| {
        let data = Bytes::copy_from_slice(&buf[done..done + want]);
        let n = expect_reply!(
            fs(FsRequest::Write { fd: handle.fd, data })?,
            FsReply::Written(n) => n
        )?;
        Ok(n as usize)
    })
}

/// `pwrite` on a remote handle.
pub fn pwrite(handle: &RemoteHandle, buf: &[u8], offset: i64) -> HookResult<usize> {
    let offset = u64::try_from(offset).map_err(|_| HookError::Errno(libc::EINVAL))?;
    chunked(buf.len(), |done, want| {
        let data = Bytes::copy_from_slice(&buf[done..done + want]);
        let request = FsRequest::Pwrite {
            fd: handle.fd,
            offset: offset + done as u64,
            data,
        };
        let n = expect_reply!(fs(request)?, FsReply::Written(n) => n)?;
        Ok(n as usize)
    })
}

/// The protocol's seek origin for `lseek(2)` arguments.
pub fn seek_from(offset: i64, whence: c_int) -> HookResult<SeekFrom> {
    match whence {
        libc::SEEK_SET => u64::try_from(offset)
            .map(SeekFrom::Start)
            .map_err(|_| HookError::Errno(libc::EINVAL)),
        libc::SEEK_CUR => Ok(SeekFrom::Current(offset)),
        libc::SEEK_END => Ok(SeekFrom::End(offset)),
        // SEEK_DATA/SEEK_HOLE have no protocol equivalent.
        _ => Err(HookError::Errno(libc::EINVAL)),
    }
}

/// `lseek` on a remote handle; the new position.
pub fn seek(handle: &RemoteHandle, offset: i64, whence: c_int) -> HookResult<i64> {
    let from = seek_from(offset, whence)?;
    let pos = expect_reply!(
        fs(FsRequest::Seek { fd: handle.fd, from })?,
        FsReply::Position(pos) => pos
    )?;
    i64::try_from(pos).map_err(|_| HookError::Errno(libc::EOVERFLOW))
}

/// `ftruncate` on a remote handle.
pub fn ftruncate(handle: &RemoteHandle, len: i64) -> HookResult<()> {
    let len = u64::try_from(len).map_err(|_| HookError::Errno(libc::EINVAL))?;
    done(FsRequest::Ftruncate { fd: handle.fd, len })
}

/// `fsync` (`data_only`: `fdatasync`) of a remote handle, in the target.
pub fn fsync(handle: &RemoteHandle, data_only: bool) -> HookResult<()> {
    done(FsRequest::Fsync {
        fd: handle.fd,
        data_only,
    })
}

/// Remote metadata of a managed fd (`fstat`); `Bypass` for other fds.
pub fn fd_metadata(fd: c_int) -> HookResult<Metadata> {
    match fd::get(fd) {
        Some(Managed::File(info)) => match &info.remote {
            Some(handle) => fstat_remote(handle),
            None => Ok(info.metadata),
        },
        _ => Err(HookError::Bypass("fd is not a remote file")),
    }
}

fn fstat_remote(handle: &RemoteHandle) -> HookResult<Metadata> {
    expect_reply!(fs(FsRequest::Fstat { fd: handle.fd })?, FsReply::Metadata(m) => m)
}

/// `Stat` of a remote path.
pub fn stat_remote(path: &str, follow_symlinks: bool) -> HookResult<Metadata> {
    let request = FsRequest::Stat {
        path: path.to_owned(),
        follow_symlinks,
    };
    expect_reply!(fs(request)?, FsReply::Metadata(m) => m)
}

/// `fstatat(dirfd, path, flags)`: `AT_EMPTY_PATH` with an empty path means
/// the fd itself, `AT_SYMLINK_NOFOLLOW` means `lstat`.
pub fn stat_at(dirfd: c_int, path: &CStr, flags: c_int) -> HookResult<Routed<Metadata>> {
    if path.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
        return fd_metadata(dirfd).map(Routed::Remote);
    }
    let path = remote_or_return!(locate(dirfd, path, false)?);
    stat_remote(&path, flags & libc::AT_SYMLINK_NOFOLLOW == 0).map(Routed::Remote)
}

/// `access`/`faccessat`. A `W_OK` check is routed like a write, so it answers
/// for the file a following open for writing would reach.
pub fn access(dirfd: c_int, path: &CStr, mode: c_int) -> HookResult<Routed<()>> {
    let path = remote_or_return!(locate(dirfd, path, mode & libc::W_OK != 0)?);
    let mode = AccessMode((mode & (libc::R_OK | libc::W_OK | libc::X_OK)) as u32);
    done(FsRequest::Access { path, mode }).map(Routed::Remote)
}

/// `readlink`/`readlinkat`: the link's target.
pub fn readlink(dirfd: c_int, path: &CStr) -> HookResult<Routed<String>> {
    let path = remote_or_return!(locate(dirfd, path, false)?);
    expect_reply!(fs(FsRequest::ReadLink { path })?, FsReply::Path(p) => Routed::Remote(p))
}

/// `realpath`: the canonical path, resolved in the target.
pub fn canonicalize(path: &CStr) -> HookResult<Routed<String>> {
    let path = remote_or_return!(locate(libc::AT_FDCWD, path, false)?);
    expect_reply!(fs(FsRequest::Canonicalize { path })?, FsReply::Path(p) => Routed::Remote(p))
}

/// `mkdir`/`mkdirat`.
pub fn mkdir(dirfd: c_int, path: &CStr, mode: u32) -> HookResult<Routed<()>> {
    let path = remote_or_return!(locate(dirfd, path, true)?);
    done(FsRequest::MkDir {
        path,
        mode: mode & 0o7777,
    })
    .map(Routed::Remote)
}

/// `unlink`/`unlinkat` (`AT_REMOVEDIR` removes a directory).
pub fn unlink(dirfd: c_int, path: &CStr, flags: c_int) -> HookResult<Routed<()>> {
    let path = remote_or_return!(locate(dirfd, path, true)?);
    let request = if flags & libc::AT_REMOVEDIR != 0 {
        FsRequest::RmDir { path }
    } else {
        FsRequest::Unlink { path }
    };
    done(request).map(Routed::Remote)
}

/// Where a `rename` happens.
#[derive(Debug)]
pub enum Renamed {
    Remote,
    /// Call libc, with absolute replacements as in [`Routed::Local`].
    Local(Option<CString>, Option<CString>),
}

/// `rename`/`renameat`: both ends in the target, or both local; a rename
/// between the two file systems fails with `EXDEV` like across mounts.
/// `renameat2` flags: `RENAME_NOREPLACE` is emulated remotely (a check, then
/// the rename: not atomic), other flags are refused with `EINVAL` for remote
/// paths so callers such as `mv` fall back to plain semantics.
pub fn rename(
    old_dirfd: c_int,
    old: &CStr,
    new_dirfd: c_int,
    new: &CStr,
    flags: libc::c_uint,
) -> HookResult<Renamed> {
    let side = |dirfd, path| match locate(dirfd, path, true) {
        Err(HookError::Bypass(_)) => Ok(Routed::Local(None)),
        other => other,
    };
    match (side(old_dirfd, old)?, side(new_dirfd, new)?) {
        (Routed::Remote(from), Routed::Remote(to)) => {
            if flags & !libc::RENAME_NOREPLACE != 0 {
                return Err(HookError::Errno(libc::EINVAL));
            }
            if flags & libc::RENAME_NOREPLACE != 0 {
                match stat_remote(&to, false) {
                    Ok(_) => return Err(HookError::Errno(libc::EEXIST)),
                    Err(HookError::Remote(e)) if e.code == remora_protocol::ErrorCode::NotFound => {
                    }
                    Err(e) => return Err(e),
                }
            }
            done(FsRequest::Rename { from, to }).map(|()| Renamed::Remote)
        }
        (Routed::Local(a), Routed::Local(b)) => Ok(Renamed::Local(a, b)),
        _ => Err(HookError::Errno(libc::EXDEV)),
    }
}

/// Whether `path` is remote, for the extended-attribute calls (the protocol
/// has none: remote files have no extended attributes).
pub fn xattr_path(path: &CStr) -> HookResult<Routed<()>> {
    remote_or_return!(locate(libc::AT_FDCWD, path, false)?);
    Ok(Routed::Remote(()))
}

/// Whether `fd` is a remote file, for the extended-attribute calls.
pub fn is_remote_fd(fd: c_int) -> bool {
    matches!(fd::get(fd), Some(Managed::File(_)))
}

/// Open a remote directory for listing.
pub fn open_dir(path: &str) -> HookResult<OpenReply> {
    let request = FsRequest::OpenDir {
        path: path.to_owned(),
    };
    expect_reply!(fs(request)?, FsReply::Opened(reply) => reply)
}

/// The next batch of entries of a remote directory; empty at the end.
pub fn read_dir_batch(handle: &RemoteHandle) -> HookResult<Vec<remora_protocol::fs::DirEntry>> {
    let request = FsRequest::ReadDirBatch {
        fd: handle.fd,
        max: DIR_BATCH,
    };
    expect_reply!(fs(request)?, FsReply::DirEntries(entries) => entries)
}
