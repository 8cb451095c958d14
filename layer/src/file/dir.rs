//! Remote directory streams: `opendir`/`fdopendir` of a remote directory
//! return a fake `DIR*` that pages entries from the agent with
//! `ReadDirBatch`; `readdir`, `closedir`, `dirfd`, `rewinddir`, `telldir` and
//! `seekdir` recognise it by address and pass every other `DIR*` to libc.
//!
//! glibc's own `scandir`, `glob`, `ftw`/`nftw` and `fts_*` call its internal
//! `opendir`, which interposition cannot reach: they list the local directory.
//! gnulib's `fts` (`find`, `du`, `grep -r`) uses `openat(O_DIRECTORY)` +
//! `fdopendir`, which are hooked.

use super::hooks::cstr;
use super::ops::{self, Routed};
use super::{FileInfo, RemoteHandle, stat};
use crate::error::{HookError, HookResult, errno_of, set_errno};
use crate::fd::{self, Managed, Shared};
use crate::guard::DetourGuard;
use crate::real::real;
use crate::sync::ForkMutex;
use libc::{DIR, c_char, c_int, c_long, dirent, dirent64};
use remora_protocol::fs::{DirEntry, FileType, Metadata};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The head of glibc's `struct __dirstream`. A fake `DIR` starts with it so
/// that a libc function the layer does not hook (and that reads the stream
/// directly) finds an empty buffer and fails cleanly on the fd instead of
/// reading garbage.
#[repr(C)]
#[derive(Debug)]
struct GlibcDirHead {
    fd: c_int,
    lock: c_int,
    allocation: usize,
    size: usize,
    offset: usize,
    filepos: i64,
    errcode: c_int,
}

/// One open remote directory stream; `*mut DIR` points at it.
#[repr(C)]
pub(crate) struct RemoteDir {
    head: GlibcDirHead,
    path: Arc<str>,
    metadata: Metadata,
    /// `None` after a rewind, until the next read reopens the directory.
    handle: Option<Shared<RemoteHandle>>,
    pending: VecDeque<DirEntry>,
    eof: bool,
    /// Entries returned so far (what `telldir` reports).
    pos: u64,
    /// Entries still to drop after a `seekdir`.
    skip: u64,
    /// What `dirfd` returns: the `fdopendir` fd or a lazily made placeholder.
    fd: c_int,
    ent: dirent,
    ent64: dirent64,
}

/// Addresses of the live fake `DIR`s, each with whether a thread is using it
/// right now ("checked out"). The lock is only held to check a stream out or
/// in, never while a stream talks to the intproxy (see [`crate::sync`]).
pub(crate) static DIRS: ForkMutex<Option<HashMap<usize, bool>>> = ForkMutex::new(None);
/// Number of live fake `DIR`s: local streams skip the lock when zero.
static OPEN_DIRS: AtomicUsize = AtomicUsize::new(0);

/// `d_type` for a protocol file type.
pub fn d_type(file_type: FileType) -> u8 {
    match file_type {
        FileType::Regular => libc::DT_REG,
        FileType::Directory => libc::DT_DIR,
        FileType::Symlink => libc::DT_LNK,
        FileType::Fifo => libc::DT_FIFO,
        FileType::Socket => libc::DT_SOCK,
        FileType::CharDevice => libc::DT_CHR,
        FileType::BlockDevice => libc::DT_BLK,
        FileType::Unknown => libc::DT_UNKNOWN,
    }
}

macro_rules! fill_fn {
    ($name:ident, $ty:ty) => {
        /// Fill a C directory entry; names longer than 255 bytes are cut
        /// (Linux file names cannot be longer). `off` is the `telldir`
        /// position after this entry.
        pub fn $name(ent: &mut $ty, entry: &DirEntry, off: u64) {
            let name = entry.name.as_bytes();
            let len = name.len().min(ent.d_name.len() - 1);
            for (dst, &src) in ent.d_name.iter_mut().zip(&name[..len]) {
                *dst = src as c_char;
            }
            ent.d_name[len] = 0;
            ent.d_ino = entry.ino;
            ent.d_off = off as i64;
            ent.d_type = d_type(entry.file_type);
            let header = std::mem::offset_of!($ty, d_name);
            let reclen = (header + len + 1)
                .next_multiple_of(8)
                .min(std::mem::size_of::<$ty>());
            ent.d_reclen = reclen as u16;
        }
    };
}

fill_fn!(fill_dirent, dirent);
fill_fn!(fill_dirent64, dirent64);

fn dot_entries(metadata: &Metadata) -> [DirEntry; 2] {
    // The parent's inode is unknown; nothing relies on `..`'s d_ino.
    let entry = |name: &str| DirEntry {
        name: name.to_owned(),
        ino: metadata.ino,
        file_type: FileType::Directory,
    };
    [entry("."), entry("..")]
}

impl RemoteDir {
    fn new(
        path: Arc<str>,
        metadata: Metadata,
        handle: Shared<RemoteHandle>,
        fd: c_int,
    ) -> Box<Self> {
        // SAFETY: dirent/dirent64 are plain old data; all-zero is valid.
        let (ent, ent64) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        let mut dir = Box::new(RemoteDir {
            head: GlibcDirHead {
                fd,
                lock: 0,
                allocation: 0,
                size: 0,
                offset: 0,
                filepos: 0,
                errcode: 0,
            },
            path,
            metadata,
            handle: Some(handle),
            pending: VecDeque::new(),
            eof: false,
            pos: 0,
            skip: 0,
            fd,
            ent,
            ent64,
        });
        dir.pending.extend(dot_entries(&dir.metadata));
        dir
    }

    /// The next entry, `None` at the end.
    fn next(&mut self) -> HookResult<Option<DirEntry>> {
        loop {
            let handle = match &self.handle {
                Some(handle) => handle.clone(),
                None => {
                    let reply = ops::open_dir(&self.path)?;
                    let handle = Arc::new(RemoteHandle::new(reply.fd));
                    self.handle = Some(handle.clone());
                    self.pending.extend(dot_entries(&self.metadata));
                    handle
                }
            };
            if let Some(entry) = self.pending.pop_front() {
                self.pos += 1;
                self.head.filepos = self.pos as i64;
                if self.skip > 0 {
                    self.skip -= 1;
                    continue;
                }
                return Ok(Some(entry));
            }
            if self.eof {
                return Ok(None);
            }
            let batch = ops::read_dir_batch(&handle)?;
            if batch.is_empty() {
                self.eof = true;
            }
            // "." and ".." were produced already, whether or not the agent lists them.
            self.pending.extend(
                batch
                    .into_iter()
                    .filter(|e| e.name != "." && e.name != ".."),
            );
        }
    }

    /// Restart the listing (reopened lazily), then drop `skip` entries.
    fn rewind(&mut self, skip: u64) {
        self.handle = None;
        self.pending.clear();
        self.eof = false;
        self.pos = 0;
        self.skip = skip;
        self.head.filepos = 0;
    }
}

/// Run `f` on the fake `DIR` at `dirp`; `None` when `dirp` is not one.
///
/// The stream is checked out for the duration of `f` (which may page entries
/// from the agent), so other streams and `fork` are not held up by it; a
/// second thread using the same stream waits for its turn.
fn with_dir<R>(dirp: *mut DIR, f: impl FnOnce(&mut RemoteDir) -> R) -> Option<R> {
    if dirp.is_null() || OPEN_DIRS.load(Ordering::Acquire) == 0 {
        return None;
    }
    checkout(dirp as usize, false)?;
    // SAFETY: registered addresses are live Box<RemoteDir>s (removed before
    // being freed), and the check-out makes this access exclusive.
    let out = f(unsafe { &mut *dirp.cast::<RemoteDir>() });
    if let Some(busy) = DIRS
        .lock()
        .as_mut()
        .and_then(|d| d.get_mut(&(dirp as usize)))
    {
        *busy = false;
    }
    Some(out)
}

/// Wait until the stream at `addr` is idle, then mark it busy (or, with
/// `unregister`, remove it). `None` when it is not a fake `DIR`.
fn checkout(addr: usize, unregister: bool) -> Option<()> {
    loop {
        {
            let mut dirs = DIRS.lock();
            let map = dirs.as_mut()?;
            let busy = map.get_mut(&addr)?;
            if !*busy {
                if unregister {
                    map.remove(&addr);
                } else {
                    *busy = true;
                }
                return Some(());
            }
        }
        std::thread::yield_now();
    }
}

/// In a forked child: streams another parent thread was using at the fork
/// may be half updated, so they are forgotten (and leaked). Using one then
/// reaches libc, which fails on its placeholder fd.
///
/// # Safety
/// Only from the `fork` child handler, while it holds [`DIRS`].
pub(crate) unsafe fn forget_busy_in_child() {
    // SAFETY: the child handler holds the lock and is the only thread.
    let dirs = unsafe { &mut *DIRS.data_ptr() };
    if let Some(map) = dirs.as_mut() {
        let before = map.len();
        map.retain(|_, busy| !*busy);
        OPEN_DIRS.fetch_sub(before - map.len(), Ordering::Release);
    }
}

fn register(dir: Box<RemoteDir>) -> *mut DIR {
    let ptr = Box::into_raw(dir);
    DIRS.lock()
        .get_or_insert_with(HashMap::new)
        .insert(ptr as usize, false);
    OPEN_DIRS.fetch_add(1, Ordering::Release);
    ptr.cast()
}

/// `opendir` of a remote path.
fn open(path: &std::ffi::CStr) -> HookResult<Routed<*mut DIR>> {
    let path = match ops::locate(libc::AT_FDCWD, path, false)? {
        Routed::Remote(path) => path,
        Routed::Local(local) => return Ok(Routed::Local(local)),
    };
    let reply = ops::open_dir(&path)?;
    if !stat::is_dir(reply.metadata.mode) && reply.metadata.mode != 0 {
        // The handle closes on drop.
        drop(RemoteHandle::new(reply.fd));
        return Err(HookError::Errno(libc::ENOTDIR));
    }
    let handle = Arc::new(RemoteHandle::new(reply.fd));
    Ok(Routed::Remote(register(RemoteDir::new(
        path.into(),
        reply.metadata,
        handle,
        -1,
    ))))
}

/// `fdopendir` of a remote directory's placeholder fd (the stream owns it).
fn open_fd(fd: c_int) -> HookResult<*mut DIR> {
    let info = match fd::get(fd) {
        Some(Managed::File(info)) if info.is_dir() => info,
        Some(Managed::File(_)) => return Err(HookError::Errno(libc::ENOTDIR)),
        _ => return Err(HookError::Bypass("not a remote directory")),
    };
    let reply = ops::open_dir(&info.path)?;
    let handle = Arc::new(RemoteHandle::new(reply.fd));
    Ok(register(RemoteDir::new(
        info.path,
        info.metadata,
        handle,
        fd,
    )))
}

/// The fd of a fake stream, making its placeholder on first use.
fn fd_of(dir: &mut RemoteDir) -> HookResult<c_int> {
    if dir.fd < 0 {
        let info = FileInfo {
            path: dir.path.clone(),
            metadata: dir.metadata,
            remote: None,
            stream: None,
        };
        // glibc's opendir opens with O_CLOEXEC; so does this.
        dir.fd = ops::placeholder(info, true)?;
        dir.head.fd = dir.fd;
    }
    Ok(dir.fd)
}

fn null_with(err: &HookError) -> *mut DIR {
    set_errno(errno_of(err));
    std::ptr::null_mut()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn opendir(name: *const c_char) -> *mut DIR {
    let real = real!(opendir: fn(*const c_char) -> *mut DIR);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(name) };
    };
    // SAFETY: opendir(3) contract: name is null or NUL-terminated.
    let Some(path) = (unsafe { cstr(name) }) else {
        return unsafe { real(name) };
    };
    match open(path) {
        Ok(Routed::Remote(dirp)) => dirp,
        // SAFETY: forwarding the caller's arguments unchanged.
        Ok(Routed::Local(_)) | Err(HookError::Bypass(_)) => unsafe { real(name) },
        Err(e) => null_with(&e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdopendir(fd: c_int) -> *mut DIR {
    let real = real!(fdopendir: fn(c_int) -> *mut DIR);
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd) };
    };
    match open_fd(fd) {
        Ok(dirp) => dirp,
        // SAFETY: forwarding the caller's arguments unchanged.
        Err(HookError::Bypass(_)) => unsafe { real(fd) },
        Err(e) => null_with(&e),
    }
}

/// Shared body of `readdir`/`readdir64`: `fill` copies the entry into the
/// stream's own buffer and returns its address.
fn next_entry<T>(
    dirp: *mut DIR,
    fill: impl FnOnce(&mut RemoteDir, &DirEntry) -> *mut T,
) -> Option<*mut T> {
    let _g = DetourGuard::enter()?;
    // readdir(3) callers tell the end from an error by errno (CPython's
    // listdir does): the locks and round trips below may set it (a
    // contended futex leaves EAGAIN), so success restores the caller's.
    let saved = crate::error::errno();
    let result = with_dir(dirp, |dir| {
        dir.next().map(|entry| entry.map(|e| fill(dir, &e)))
    });
    // Not ours: libc's readdir runs next and must see the caller's errno.
    let Some(result) = result else {
        set_errno(saved);
        return None;
    };
    Some(match result {
        Ok(Some(ptr)) => {
            set_errno(saved);
            ptr
        }
        // End of stream: NULL with errno untouched.
        Ok(None) => {
            set_errno(saved);
            std::ptr::null_mut()
        }
        Err(e) => {
            set_errno(errno_of(&e));
            std::ptr::null_mut()
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readdir(dirp: *mut DIR) -> *mut dirent {
    let real = real!(readdir: fn(*mut DIR) -> *mut dirent);
    let fill = |dir: &mut RemoteDir, e: &DirEntry| {
        fill_dirent(&mut dir.ent, e, dir.pos);
        &mut dir.ent as *mut dirent
    };
    // SAFETY: a stream not made by the layer goes to libc unchanged.
    next_entry(dirp, fill).unwrap_or_else(|| unsafe { real(dirp) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readdir64(dirp: *mut DIR) -> *mut dirent64 {
    let real = real!(readdir64: fn(*mut DIR) -> *mut dirent64);
    let fill = |dir: &mut RemoteDir, e: &DirEntry| {
        fill_dirent64(&mut dir.ent64, e, dir.pos);
        &mut dir.ent64 as *mut dirent64
    };
    // SAFETY: a stream not made by the layer goes to libc unchanged.
    next_entry(dirp, fill).unwrap_or_else(|| unsafe { real(dirp) })
}

/// Shared body of `readdir_r`/`readdir64_r`.
///
/// # Safety
/// `entry` and `result` must be valid for writes (readdir_r's contract).
unsafe fn next_entry_r<T>(
    dirp: *mut DIR,
    entry: *mut T,
    result: *mut *mut T,
    fill: fn(&mut T, &DirEntry, u64),
) -> Option<c_int> {
    let _g = DetourGuard::enter()?;
    let saved = crate::error::errno();
    let next = with_dir(dirp, |dir| dir.next().map(|e| e.map(|e| (e, dir.pos))));
    set_errno(saved);
    let next = next?;
    Some(match next {
        Ok(Some((e, pos))) => {
            // SAFETY: caller guarantees entry and result are writable.
            unsafe {
                fill(&mut *entry, &e, pos);
                *result = entry;
            }
            0
        }
        Ok(None) => {
            // SAFETY: caller guarantees result is writable.
            unsafe { *result = std::ptr::null_mut() };
            0
        }
        Err(e) => errno_of(&e),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readdir_r(
    dirp: *mut DIR,
    entry: *mut dirent,
    result: *mut *mut dirent,
) -> c_int {
    let real = real!(readdir_r: fn(*mut DIR, *mut dirent, *mut *mut dirent) -> c_int);
    // SAFETY: readdir_r(3) contract; other streams go to libc unchanged.
    unsafe {
        next_entry_r(dirp, entry, result, fill_dirent).unwrap_or_else(|| real(dirp, entry, result))
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readdir64_r(
    dirp: *mut DIR,
    entry: *mut dirent64,
    result: *mut *mut dirent64,
) -> c_int {
    let real = real!(readdir64_r: fn(*mut DIR, *mut dirent64, *mut *mut dirent64) -> c_int);
    // SAFETY: readdir64_r(3) contract; other streams go to libc unchanged.
    unsafe {
        next_entry_r(dirp, entry, result, fill_dirent64)
            .unwrap_or_else(|| real(dirp, entry, result))
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn closedir(dirp: *mut DIR) -> c_int {
    let real = real!(closedir: fn(*mut DIR) -> c_int);
    let ours = !dirp.is_null()
        && OPEN_DIRS.load(Ordering::Acquire) != 0
        && checkout(dirp as usize, true).is_some();
    if !ours {
        // SAFETY: a stream from libc's opendir.
        return unsafe { real(dirp) };
    }
    OPEN_DIRS.fetch_sub(1, Ordering::Release);
    let _g = DetourGuard::enter();
    // SAFETY: the address came from Box::into_raw in `register` and was just
    // unregistered, so nobody else can reach it.
    let dir = unsafe { Box::from_raw(dirp.cast::<RemoteDir>()) };
    if dir.fd >= 0 {
        drop(fd::remove(dir.fd));
        // SAFETY: the stream owns its fd (placeholder or fdopendir's).
        unsafe { libc::close(dir.fd) };
    }
    // Dropping the handle closes the remote directory.
    drop(dir);
    0
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dirfd(dirp: *mut DIR) -> c_int {
    let real = real!(dirfd: fn(*mut DIR) -> c_int);
    let ours = DetourGuard::enter().and_then(|_g| with_dir(dirp, fd_of));
    match ours {
        Some(Ok(fd)) => fd,
        Some(Err(e)) => crate::error::fail(&e),
        // SAFETY: a stream from libc's opendir.
        None => unsafe { real(dirp) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn rewinddir(dirp: *mut DIR) {
    let real = real!(rewinddir: fn(*mut DIR) -> ());
    let ours = DetourGuard::enter().and_then(|_g| with_dir(dirp, |d| d.rewind(0)));
    if ours.is_none() {
        // SAFETY: a stream from libc's opendir.
        unsafe { real(dirp) }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn telldir(dirp: *mut DIR) -> c_long {
    let real = real!(telldir: fn(*mut DIR) -> c_long);
    let ours = DetourGuard::enter().and_then(|_g| with_dir(dirp, |d| d.pos as c_long));
    // SAFETY: a stream from libc's opendir.
    ours.unwrap_or_else(|| unsafe { real(dirp) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn seekdir(dirp: *mut DIR, loc: c_long) {
    let real = real!(seekdir: fn(*mut DIR, c_long) -> ());
    let ours = DetourGuard::enter().and_then(|_g| with_dir(dirp, |d| d.rewind(loc.max(0) as u64)));
    if ours.is_none() {
        // SAFETY: a stream from libc's opendir.
        unsafe { real(dirp, loc) }
    }
}

// ---------------------------------------------------------------- getdents64
// `getdents64(fd, buf, len)` (the libc function, or `syscall(SYS_getdents64)`)
// on a remote directory's placeholder fd: the listing's cursor lives here,
// keyed by fd and tied to the open it belongs to (the `path` Arc of its fd
// table entry, shared by `dup`s, which share the kernel offset too). A
// cursor is checked out (removed) while it pages from the agent, so the
// lock is never held across a round trip.

/// A listing cursor and the open it belongs to (its fd entry's path).
type Cursor = (Arc<str>, Box<RemoteDir>);

/// Listing cursors of remote directory fds.
pub(crate) static CURSORS: ForkMutex<Option<HashMap<c_int, Cursor>>> = ForkMutex::new(None);

/// Size of the fixed part of `struct linux_dirent64` (before `d_name`).
const DIRENT64_HEADER: usize = 8 + 8 + 2 + 1;

/// `getdents64` on a remote directory fd; `Bypass` for every other fd.
pub fn list_remote(fd: c_int, buf: &mut [u8]) -> HookResult<usize> {
    let info = match fd::get(fd) {
        Some(Managed::File(info)) if info.is_dir() => info,
        Some(Managed::File(_)) => return Err(HookError::Errno(libc::ENOTDIR)),
        _ => return Err(HookError::Bypass("not a remote directory")),
    };
    let taken = CURSORS.lock().as_mut().and_then(|c| c.remove(&fd));
    // (A stale cursor of an earlier open is dropped below, after the lock.)
    let mut dir = match taken {
        Some((path, dir)) if Arc::ptr_eq(&path, &info.path) => dir,
        // A new listing (or the fd number now names another open).
        _ => {
            let reply = ops::open_dir(&info.path)?;
            let handle = Arc::new(RemoteHandle::new(reply.fd));
            RemoteDir::new(info.path.clone(), info.metadata, handle, fd)
        }
    };
    let result = fill_linux_dirents(&mut dir, buf);
    let replaced = CURSORS
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert(fd, (info.path, dir));
    // A cursor another thread put back meanwhile closes after the lock.
    drop(replaced);
    result
}

/// Write as many `linux_dirent64` records as fit into `buf`.
fn fill_linux_dirents(dir: &mut RemoteDir, buf: &mut [u8]) -> HookResult<usize> {
    let mut used = 0;
    loop {
        let entry = match dir.next() {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(used),
            Err(e) if used == 0 => return Err(e),
            Err(_) => return Ok(used),
        };
        let name = entry.name.as_bytes();
        let name_len = name.len().min(255);
        let reclen = (DIRENT64_HEADER + name_len + 1).next_multiple_of(8);
        if used + reclen > buf.len() {
            // Given back: the next call starts with it.
            dir.pending.push_front(entry);
            dir.pos -= 1;
            dir.head.filepos = dir.pos as i64;
            return if used == 0 {
                Err(HookError::Errno(libc::EINVAL))
            } else {
                Ok(used)
            };
        }
        let rec = &mut buf[used..used + reclen];
        rec.fill(0);
        rec[0..8].copy_from_slice(&entry.ino.to_ne_bytes());
        rec[8..16].copy_from_slice(&(dir.pos as i64).to_ne_bytes());
        rec[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
        rec[18] = d_type(entry.file_type);
        rec[DIRENT64_HEADER..DIRENT64_HEADER + name_len].copy_from_slice(&name[..name_len]);
        used += reclen;
    }
}

/// Shared body of the `getdents64` function and `syscall(SYS_getdents64)`:
/// `None` when `fd` is not a remote directory (call the kernel).
///
/// # Safety
/// `buf` must be null or have `len` writable bytes.
pub unsafe fn getdents64_hook(fd: c_int, buf: *mut u8, len: usize) -> Option<isize> {
    let _g = DetourGuard::enter()?;
    // Every other fd (the common case) goes to the kernel untouched.
    if !matches!(fd::get(fd), Some(Managed::File(_))) {
        return None;
    }
    // SAFETY: caller's contract.
    let out = match unsafe { super::hooks::out_slice(buf.cast(), len) } {
        Ok(out) => out,
        Err(e) => return Some(crate::error::fail(&e) as isize),
    };
    match list_remote(fd, out) {
        Ok(n) => Some(n as isize),
        Err(HookError::Bypass(_)) => None,
        Err(e) => Some(crate::error::fail(&e) as isize),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getdents64(fd: c_int, buf: *mut libc::c_void, len: usize) -> isize {
    // SAFETY: getdents64(2) contract: buf has len writable bytes.
    if let Some(n) = unsafe { getdents64_hook(fd, buf.cast(), len) } {
        return n;
    }
    let real = real!(getdents64: fn(c_int, *mut libc::c_void, usize) -> isize);
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, buf, len) }
}
