//! stdio entry points. glibc's `fopen` opens through internal symbols that
//! interposition cannot see, so `fopen` itself is hooked: a remote snapshot
//! or directory becomes `fdopen(fd)`, a remote handle a `fopencookie` stream
//! whose callbacks forward to the agent, with a placeholder fd as its
//! `fileno` (so code reading `fileno(f)` directly, like libstdc++'s
//! `filebuf`, reaches the same handle); `fdopen` of a remote handle's
//! placeholder does the same;
//! `freopen` puts a remote fd under the caller's `FILE`. `fclose` is hooked because glibc closes the fd internally,
//! behind the `close` hook's back.

use super::RemoteHandle;
use super::hooks::{cstr, out_slice};
use super::ops::{self, Opened, Routed};
use crate::error::{HookError, HookResult, errno_of, fail, set_errno};
use crate::fd::{self, Shared};
use crate::guard::DetourGuard;
use crate::real::real;
use libc::{FILE, c_char, c_int, c_void, off64_t, size_t, ssize_t};
use std::ffi::CStr;

/// glibc's `cookie_io_functions_t`.
#[repr(C)]
struct CookieIoFunctions {
    read: Option<unsafe extern "C" fn(*mut c_void, *mut c_char, size_t) -> ssize_t>,
    write: Option<unsafe extern "C" fn(*mut c_void, *const c_char, size_t) -> ssize_t>,
    seek: Option<unsafe extern "C" fn(*mut c_void, *mut off64_t, c_int) -> c_int>,
    close: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
}

unsafe extern "C" {
    fn fopencookie(cookie: *mut c_void, mode: *const c_char, io: CookieIoFunctions) -> *mut FILE;
}

/// The state behind a cookie stream: the agent's handle, closed on drop.
#[derive(Debug)]
struct Cookie {
    handle: Shared<RemoteHandle>,
    /// The placeholder fd of an `fdopen`ed remote file: `fclose` closes it.
    fd: Option<c_int>,
}

/// A remote `fopen`'s result before it becomes a `FILE`.
enum Stream {
    Fd(c_int),
    Handle(super::FileInfo),
}

fn open(path: &CStr, flags: c_int) -> HookResult<Routed<Stream>> {
    let path = match ops::locate_open(libc::AT_FDCWD, path, flags)? {
        Routed::Remote(path) => path,
        Routed::Local(local) => return Ok(Routed::Local(local)),
    };
    // fopen creates files with 0666 (minus the umask, applied by the agent).
    match ops::open_remote(path, flags, 0o666)? {
        Opened::Native(fd) => Ok(Routed::Remote(Stream::Fd(fd))),
        Opened::Handle(info) if info.remote.is_some() => Ok(Routed::Remote(Stream::Handle(info))),
        Opened::Handle(_) => Err(HookError::Errno(libc::EIO)),
    }
}

/// # Safety
/// `mode` must be NUL-terminated.
unsafe fn stream_of(stream: Stream, mode: *const c_char) -> *mut FILE {
    match stream {
        Stream::Fd(fd) => {
            // SAFETY: fd is ours and open; mode is the caller's valid string.
            let fp = unsafe { libc::fdopen(fd, mode) };
            if fp.is_null() {
                let errno = std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO);
                drop(fd::remove(fd));
                // SAFETY: closing the fd this call opened.
                unsafe { libc::close(fd) };
                set_errno(errno);
            }
            fp
        }
        Stream::Handle(info) => {
            let Some(handle) = info.remote.clone() else {
                set_errno(libc::EIO);
                return std::ptr::null_mut();
            };
            // A placeholder fd gives the stream a `fileno`: libstdc++'s
            // `filebuf` (std::fstream) reads and writes `fileno(f)` directly,
            // which the fd hooks then send to the same remote handle.
            // SAFETY: mode is the caller's NUL-terminated string.
            let cloexec = unsafe { CStr::from_ptr(mode) }
                .to_bytes()
                .split(|c| *c == b',')
                .next()
                .is_some_and(|flags| flags.contains(&b'e'));
            let Ok(fd) = ops::placeholder(info, cloexec) else {
                // SAFETY: as above.
                return unsafe { cookie_stream(Cookie { handle, fd: None }, mode) };
            };
            // SAFETY: as above.
            let fp = unsafe {
                cookie_stream(
                    Cookie {
                        handle,
                        fd: Some(fd),
                    },
                    mode,
                )
            };
            if fp.is_null() {
                let errno = crate::error::errno();
                drop(fd::remove(fd));
                // SAFETY: the placeholder this call made.
                unsafe { libc::close(fd) };
                set_errno(errno);
            } else {
                // SAFETY: fp is the cookie stream just made.
                unsafe { give_fileno(fp, fd) };
            }
            fp
        }
    }
}

/// A `fopencookie` stream over a remote handle.
///
/// # Safety
/// `mode` must be NUL-terminated.
unsafe fn cookie_stream(cookie: Cookie, mode: *const c_char) -> *mut FILE {
    let cookie = Box::into_raw(Box::new(cookie));
    let io = CookieIoFunctions {
        read: Some(cookie_read),
        write: Some(cookie_write),
        seek: Some(cookie_seek),
        close: Some(cookie_close),
    };
    // SAFETY: the cookie stays valid until glibc calls cookie_close.
    let fp = unsafe { fopencookie(cookie.cast(), mode, io) };
    if fp.is_null() {
        // SAFETY: glibc did not take the cookie; reclaim it (an fdopen'ed
        // fd stays open, as fdopen's failure leaves it).
        drop(unsafe { Box::from_raw(cookie) });
    }
    fp
}

/// Shared body of `fopen`/`fopen64`.
///
/// # Safety
/// `path` and `mode` must be null or NUL-terminated; `local` must be the libc call.
unsafe fn fopen_hook(
    path: *const c_char,
    mode: *const c_char,
    local: impl FnOnce() -> *mut FILE,
) -> *mut FILE {
    let Some(_g) = DetourGuard::enter() else {
        return local();
    };
    // SAFETY: caller guarantees both are null or NUL-terminated.
    let (Some(cpath), Some(cmode)) = (unsafe { cstr(path) }, unsafe { cstr(mode) }) else {
        return local();
    };
    let Some(flags) = ops::fopen_flags(cmode.to_bytes()) else {
        return local();
    };
    match open(cpath, flags) {
        // SAFETY: mode is NUL-terminated (checked above).
        Ok(Routed::Remote(stream)) => unsafe { stream_of(stream, mode) },
        Ok(Routed::Local(_)) | Err(HookError::Bypass(_)) => local(),
        Err(e) => {
            set_errno(errno_of(&e));
            std::ptr::null_mut()
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut FILE {
    let real = real!(fopen: fn(*const c_char, *const c_char) -> *mut FILE);
    // SAFETY: fopen(3) contract; libc gets the caller's arguments.
    unsafe { fopen_hook(path, mode, || real(path, mode)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut FILE {
    let real = real!(fopen64: fn(*const c_char, *const c_char) -> *mut FILE);
    // SAFETY: fopen(3) contract; libc gets the caller's arguments.
    unsafe { fopen_hook(path, mode, || real(path, mode)) }
}

/// Shared body of `freopen`/`freopen64`. A remote file that becomes an fd
/// (snapshot, directory, write stream) takes the stream's place like a
/// local one: libc reopens `fp` on `/dev/null` with the same mode (keeping
/// the stream's fd number, as glibc does), then the remote fd is moved onto
/// that number. A remote file that needs a handle (read-write modes, reads
/// over the snapshot limit) cannot become this `FILE` (only a new cookie
/// stream could): `EOPNOTSUPP` with a one-line warning naming `fopen`.
/// On a failed remote open the original stream stays open (C closes it).
///
/// # Safety
/// freopen(3)'s contract; `local` must be the libc call.
unsafe fn freopen_hook(
    path: *const c_char,
    mode: *const c_char,
    fp: *mut FILE,
    local: impl FnOnce(*const c_char, *const c_char) -> *mut FILE,
) -> *mut FILE {
    let Some(_g) = DetourGuard::enter() else {
        return local(path, mode);
    };
    // SAFETY: caller guarantees both are null or NUL-terminated.
    let (Some(cpath), Some(cmode)) = (unsafe { cstr(path) }, unsafe { cstr(mode) }) else {
        // freopen(NULL, mode, fp) changes the mode of the same file.
        return local(path, mode);
    };
    let Some(flags) = ops::fopen_flags(cmode.to_bytes()) else {
        return local(path, mode);
    };
    if fp.is_null() {
        return local(path, mode);
    }
    let stream = match open(cpath, flags) {
        Ok(Routed::Remote(stream)) => stream,
        Ok(Routed::Local(_)) | Err(HookError::Bypass(_)) => {
            // glibc closes the old fd internally: forget what it was.
            forget_stream_fd(fp);
            return local(path, mode);
        }
        Err(e) => {
            set_errno(errno_of(&e));
            return std::ptr::null_mut();
        }
    };
    let fd = match stream {
        Stream::Fd(fd) => fd,
        Stream::Handle(info) => {
            drop(info);
            crate::session::warn(&format!(
                "remora: freopen of {} in mode {:?} is not supported (the target's file needs a                  handle: read-write, or bigger than {} MiB); open it with fopen instead",
                cpath.to_string_lossy(),
                cmode.to_string_lossy(),
                ops::SNAPSHOT_LIMIT >> 20
            ));
            set_errno(libc::EOPNOTSUPP);
            return std::ptr::null_mut();
        }
    };
    forget_stream_fd(fp);
    // /dev/null exists and takes every mode once 'x' (exclusive) is gone.
    let null_mode: Vec<u8> = cmode
        .to_bytes()
        .iter()
        .copied()
        .filter(|c| *c != b'x' && *c != b'm')
        .chain([0])
        .collect();
    let reopened = local(c"/dev/null".as_ptr(), null_mode.as_ptr().cast());
    if reopened.is_null() {
        let errno = crate::error::errno();
        drop(fd::remove(fd));
        // SAFETY: closing the fd the remote open made.
        unsafe { libc::close(fd) };
        set_errno(errno);
        return reopened;
    }
    // SAFETY: reopened is the caller's stream, open again.
    let target = unsafe { libc::fileno(reopened) };
    let cloexec = if flags & libc::O_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: both fds are open; dup3 replaces /dev/null with the remote fd.
    if target < 0 || target == fd || unsafe { libc::dup3(fd, target, cloexec) } < 0 {
        let errno = crate::error::errno();
        drop(fd::remove(fd));
        // SAFETY: closing the fd the remote open made.
        unsafe { libc::close(fd) };
        set_errno(if errno == 0 { libc::EIO } else { errno });
        return std::ptr::null_mut();
    }
    if let Some(entry) = fd::remove(fd) {
        fd::insert(target, entry);
    }
    // SAFETY: the remote open's fd, now duplicated onto the stream's.
    unsafe { libc::close(fd) };
    reopened
}

/// Forget the fd table entry of `fp`'s fd, which libc closes internally.
fn forget_stream_fd(fp: *mut FILE) {
    let saved = crate::error::errno();
    // SAFETY: fp is the caller's stream.
    let old = unsafe { libc::fileno(fp) };
    set_errno(saved);
    if old >= 0 {
        drop(fd::remove(old));
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn freopen(
    path: *const c_char,
    mode: *const c_char,
    fp: *mut FILE,
) -> *mut FILE {
    let real = real!(freopen: fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE);
    // SAFETY: freopen(3) contract; libc gets the caller's stream.
    unsafe { freopen_hook(path, mode, fp, |p, m| real(p, m, fp)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn freopen64(
    path: *const c_char,
    mode: *const c_char,
    fp: *mut FILE,
) -> *mut FILE {
    let real = real!(freopen64: fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE);
    // SAFETY: freopen(3) contract; libc gets the caller's stream.
    unsafe { freopen_hook(path, mode, fp, |p, m| real(p, m, fp)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fclose(fp: *mut FILE) -> c_int {
    let real = real!(fclose: fn(*mut FILE) -> c_int);
    let mut late = None;
    if !fp.is_null() {
        if let Some(_g) = DetourGuard::enter() {
            // Forget the fd while it is still open (after fclose another
            // thread could get the same number). fileno fails with EBADF on
            // cookie streams: keep the caller's errno.
            let saved = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            // SAFETY: fp is the caller's open stream.
            let fd = unsafe { libc::fileno(fp) };
            set_errno(saved);
            if fd >= 0 {
                late = late_stream_error(fp, fd);
                drop(fd::remove(fd));
            }
        }
    }
    // The guard is released: a cookie stream's flush and close callbacks
    // forward to the agent and need the layer.
    // SAFETY: forwarding the caller's arguments unchanged.
    let rc = unsafe { real(fp) };
    match late {
        // The stream is closed either way, as fclose(3) leaves it.
        Some(e) if rc == 0 => {
            set_errno(errno_of(&e));
            libc::EOF
        }
        _ => rc,
    }
}

/// For a stream on a write stream's socket: its buffer flushed and every
/// byte written in the target, or the first remote write error (glibc's
/// `fclose` closes the fd internally, out of the `close` hook's sight).
fn late_stream_error(fp: *mut FILE, fd: c_int) -> Option<HookError> {
    let stream = ops::write_stream(fd)?;
    // SAFETY: fp is the caller's open stream; flushing it is part of fclose.
    unsafe { libc::fflush(fp) };
    match ops::stream_sync(fd, stream, None) {
        Err(e @ (HookError::Remote(_) | HookError::Errno(_))) => Some(e),
        _ => None,
    }
}

/// # Safety
/// `cookie` must be the pointer given to `fopencookie` and not yet closed.
unsafe fn cookie_of<'a>(cookie: *mut c_void) -> &'a Cookie {
    // SAFETY: caller guarantees a live Box<Cookie>.
    unsafe { &*cookie.cast::<Cookie>() }
}

unsafe extern "C" fn cookie_read(cookie: *mut c_void, buf: *mut c_char, size: size_t) -> ssize_t {
    // Entered when possible; the callbacks work from inside the layer as well.
    let _g = DetourGuard::enter();
    // SAFETY: glibc passes our live cookie and a buffer of `size` bytes.
    let result = unsafe { out_slice(buf.cast(), size) }
        .and_then(|out| ops::read(&unsafe { cookie_of(cookie) }.handle, out));
    match result {
        Ok(n) => n as ssize_t,
        Err(e) => fail(&e) as ssize_t,
    }
}

unsafe extern "C" fn cookie_write(
    cookie: *mut c_void,
    buf: *const c_char,
    size: size_t,
) -> ssize_t {
    let _g = DetourGuard::enter();
    let data: &[u8] = if size == 0 || buf.is_null() {
        &[]
    } else {
        // SAFETY: glibc passes `size` readable bytes.
        unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), size) }
    };
    // SAFETY: glibc passes our live cookie.
    match ops::write(&unsafe { cookie_of(cookie) }.handle, data) {
        Ok(n) => n as ssize_t,
        // fopencookie's write must not return a negative value: 0 is the error.
        Err(e) => {
            set_errno(errno_of(&e));
            0
        }
    }
}

unsafe extern "C" fn cookie_seek(
    cookie: *mut c_void,
    offset: *mut off64_t,
    whence: c_int,
) -> c_int {
    let _g = DetourGuard::enter();
    // SAFETY: glibc passes our live cookie and a valid offset pointer.
    let (handle, requested) = unsafe { (&cookie_of(cookie).handle, *offset) };
    match ops::seek(handle, requested, whence) {
        Ok(pos) => {
            // SAFETY: as above.
            unsafe { *offset = pos };
            0
        }
        Err(e) => fail(&e),
    }
}

unsafe extern "C" fn cookie_close(cookie: *mut c_void) -> c_int {
    let _g = DetourGuard::enter();
    // SAFETY: glibc calls close once, with the pointer from Box::into_raw;
    // dropping it closes the remote handle.
    let cookie = unsafe { Box::from_raw(cookie.cast::<Cookie>()) };
    if let Some(fd) = cookie.fd {
        // fclose of an fdopen'ed stream closes its fd (the placeholder).
        drop(fd::remove(fd));
        // SAFETY: the placeholder fd this stream owns since fdopen.
        unsafe { libc::close(fd) };
    }
    drop(cookie);
    0
}

/// Offset of `_fileno` in glibc's `struct _IO_FILE` on LP64 (an `int` after
/// `_flags` and 13 pointers; `bits/types/struct_FILE.h`).
const FILENO_OFFSET: usize = 112;
/// What glibc's `fopencookie` stores there: "no file, but a real stream".
const COOKIE_FILENO: c_int = -2;

/// Make `fileno` of an `fdopen`ed cookie stream return its placeholder fd,
/// as `fdopen` promises: code that reads or writes `fileno(f)` directly
/// (libstdc++'s `filebuf`, `fstat(fileno(f))`) then reaches the same remote
/// handle through the fd hooks. glibc's cookie streams never use `_fileno`
/// for I/O (their callbacks do), and closing stays the cookie's `close`.
/// Only done when the field holds glibc's cookie marker, so another libc
/// layout is left alone.
///
/// # Safety
/// `fp` must be null or a stream returned by `fopencookie`.
unsafe fn give_fileno(fp: *mut FILE, fd: c_int) {
    if fp.is_null() || !cfg!(all(target_env = "gnu", target_pointer_width = "64")) {
        return;
    }
    // SAFETY: a glibc FILE is larger than FILENO_OFFSET + 4 bytes.
    let slot = unsafe { fp.cast::<u8>().add(FILENO_OFFSET).cast::<c_int>() };
    // SAFETY: as above; aligned (112 is a multiple of 4 in an aligned struct).
    if unsafe { slot.read() } == COOKIE_FILENO {
        // SAFETY: as above.
        unsafe { slot.write(fd) };
    }
}

/// `fdopen` of a remote file's placeholder: stdio would read the empty
/// placeholder through glibc's internal `read`, which the layer cannot
/// see, so the stream is a cookie stream on the remote handle instead
/// (its `fileno` is `fd`, see [`give_fileno`]; `fclose` closes `fd`).
/// Other fds go to libc.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    let real = real!(fdopen: fn(c_int, *const c_char) -> *mut FILE);
    if let Some(_g) = DetourGuard::enter() {
        if let (Some(handle), Some(_)) = (ops::remote_handle(fd), unsafe { cstr(mode) }) {
            // SAFETY: mode is NUL-terminated (checked).
            let fp = unsafe {
                cookie_stream(
                    Cookie {
                        handle,
                        fd: Some(fd),
                    },
                    mode,
                )
            };
            // SAFETY: fp is null or the cookie stream just made.
            unsafe { give_fileno(fp, fd) };
            return fp;
        }
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real(fd, mode) }
}
