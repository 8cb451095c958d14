//! A Go or statically linked program started by a program that has the
//! layer: `LD_PRELOAD` cannot reach it, so the exec is turned into `remora
//! supervise -- PROGRAM ARGS…` (the seccomp supervisor, with the session's
//! environment), as `remora run` would have run it. Only when the CLI chose
//! the interception automatically (it then sets [`SUPERVISE_EXE_ENV`]); the
//! ELF check reads the file's headers (a few hundred bytes), not the whole
//! program.

use std::ffi::{CStr, CString, OsStr};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use libc::c_char;

/// Set by `remora run` (automatic interception): the `remora` executable
/// that supervises Go and static children.
pub const SUPERVISE_EXE_ENV: &str = "REMORA_SUPERVISE_EXE";
/// The `LD_PRELOAD` the child would have had: `remora supervise` takes it
/// out of its own environment (so the layer is not loaded into the
/// supervisor) and puts it back if it falls back to running the program
/// with the layer.
pub const HANDOFF_PRELOAD_ENV: &str = "REMORA_HANDOFF_PRELOAD";

/// Little-endian fields at `o` of `b` (callers check the length).
fn u16_at(b: &[u8], o: usize) -> usize {
    u16::from_le_bytes([b[o], b[o + 1]]) as usize
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(v)
}

/// Whether the ELF file at `path` needs the supervisor: no program
/// interpreter (statically linked), or a Go program (its `Go` build-id
/// note), whose own syscalls bypass libc. Scripts and unreadable files: no.
pub fn needs_supervisor(path: &std::path::Path) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 64];
    if file.read_exact(&mut head).is_err()
        || &head[..4] != b"\x7fELF"
        || head[4] != 2
        || head[5] != 1
    {
        return false; // not a 64-bit little-endian ELF
    }
    let (phoff, phentsize, phnum) = (
        u64_at(&head, 0x20),
        u16_at(&head, 0x36),
        u16_at(&head, 0x38),
    );
    if phentsize < 56 || phnum == 0 || phnum > 256 {
        return false;
    }
    let mut phdrs = vec![0u8; phentsize * phnum];
    if file.read_exact_at(&mut phdrs, phoff).is_err() {
        return false;
    }
    // PT_INTERP: dynamically linked, a Go program or not.
    if phdrs.chunks_exact(phentsize).any(|ph| u32_at(ph, 0) == 3) {
        return is_go(&file, &phdrs, phentsize);
    }
    true // no interpreter: statically linked
}

/// Whether a dynamically linked ELF is a Go program (cgo): one of its note
/// segments holds the `Go` build-id note.
fn is_go(file: &std::fs::File, phdrs: &[u8], phentsize: usize) -> bool {
    for ph in phdrs.chunks_exact(phentsize) {
        if u32_at(ph, 0) != 4 {
            continue;
        }
        let (off, size) = (u64_at(ph, 8), u64_at(ph, 32).min(4096) as usize);
        let mut data = vec![0u8; size];
        if file.read_exact_at(&mut data, off).is_err() {
            continue;
        }
        let mut at = 0;
        while at + 12 <= data.len() {
            let namesz = u32_at(&data, at) as usize;
            let descsz = u32_at(&data, at + 4) as usize;
            let name = data.get(at + 12..at + 12 + namesz).unwrap_or_default();
            if name == b"Go\0\0" || name == b"Go\0" {
                return true;
            }
            at += 12 + namesz.next_multiple_of(4) + descsz.next_multiple_of(4);
        }
    }
    false
}

/// `file` as exec would find it: itself when it has a slash, else the first
/// executable match in `PATH`.
pub fn resolve(file: &CStr) -> Option<std::path::PathBuf> {
    let bytes = file.to_bytes();
    if bytes.is_empty() {
        return None;
    }
    if bytes.contains(&b'/') {
        return Some(OsStr::from_bytes(bytes).into());
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(OsStr::from_bytes(bytes)))
        .find(|p| p.is_file())
}

/// The exec of `remora supervise -- PATH ARGS…` replacing an exec of a Go
/// or static program.
#[derive(Debug)]
pub struct Handoff {
    _owned: Vec<CString>,
    pub exe: *const c_char,
    pub argv: Vec<*const c_char>,
    pub envp: Vec<*const c_char>,
}

/// Collect a NULL-terminated array.
///
/// # Safety
/// `array` must be null or a NULL-terminated array of C strings.
unsafe fn entries<'a>(array: *const *const c_char) -> Vec<&'a CStr> {
    let mut out = Vec::new();
    if array.is_null() {
        return out;
    }
    let mut i = 0;
    // SAFETY: NULL-terminated array per the contract.
    unsafe {
        while !(*array.add(i)).is_null() {
            out.push(CStr::from_ptr(*array.add(i)));
            i += 1;
        }
    }
    out
}

/// `Some` when `program` (found in `PATH` if `search`) is a Go or static
/// program and `remora run` chose the interception automatically.
///
/// # Safety
/// `argv` and `envp` must be null or NULL-terminated arrays of C strings
/// (`envp`: the environment the child gets, already with the layer's
/// variables).
pub unsafe fn supervised(
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    search: bool,
) -> Option<Handoff> {
    if program.is_null() {
        return None;
    }
    let _g = crate::guard::DetourGuard::enter()?;
    // SAFETY: exec's contract: a C string.
    let program = unsafe { CStr::from_ptr(program) };
    // SAFETY: exec's contract.
    let env = unsafe { entries(envp) };
    let exe_prefix = format!("{SUPERVISE_EXE_ENV}=");
    let exe = env
        .iter()
        .find_map(|e| e.to_bytes().strip_prefix(exe_prefix.as_bytes()))
        .filter(|exe| !exe.is_empty())?;
    let path = if search {
        resolve(program)?
    } else {
        OsStr::from_bytes(program.to_bytes()).into()
    };
    if !needs_supervisor(&path) {
        return None;
    }
    let mut owned = vec![
        CString::new(exe).ok()?,
        CString::new("supervise").ok()?,
        CString::new("--").ok()?,
        CString::new(path.as_os_str().as_bytes()).ok()?,
    ];
    let exe_at = 0;
    // SAFETY: exec's contract.
    let args = unsafe { entries(argv) };
    let mut argv: Vec<*const c_char> = Vec::new();
    let mut envp: Vec<*const c_char> = Vec::new();
    let mut renamed = None;
    for e in &env {
        match e.to_bytes().strip_prefix(b"LD_PRELOAD=") {
            Some(value) => {
                let mut entry = format!("{HANDOFF_PRELOAD_ENV}=").into_bytes();
                entry.extend_from_slice(value);
                renamed = Some(CString::new(entry).ok()?);
            }
            None => envp.push(e.as_ptr()),
        }
    }
    owned.extend(renamed);
    // The program's own argv[0] (busybox picks its applet by it).
    if let Some(argv0) = args.first() {
        let mut entry = format!("{ARGV0_ENV}=").into_bytes();
        entry.extend_from_slice(argv0.to_bytes());
        owned.push(CString::new(entry).ok()?);
    }
    for (i, c) in owned.iter().enumerate() {
        if i < 4 {
            argv.push(c.as_ptr());
        } else {
            envp.push(c.as_ptr());
        }
    }
    argv.extend(args.iter().skip(1).map(|a| a.as_ptr()));
    argv.push(std::ptr::null());
    envp.push(std::ptr::null());
    Some(Handoff {
        exe: owned[exe_at].as_ptr(),
        _owned: owned,
        argv,
        envp,
    })
}

/// The `argv[0]` the parent gave the program: `remora supervise` execs it
/// with that one (`remora_supervisor::ARGV0_ENV`).
pub const ARGV0_ENV: &str = "REMORA_HANDOFF_ARGV0";

/// Set on a hand-off by fd (`fexecve`, `execveat`) when the layer cleared
/// the fd's close-on-exec flag so `remora` could still open the program by
/// its `/proc/self/fd` path: `remora supervise` sets it again before its own
/// exec, so the program does not inherit an fd it would not have had.
pub const HANDOFF_CLOEXEC_FD_ENV: &str = "REMORA_HANDOFF_CLOEXEC_FD";

/// A program named through an fd (`fexecve(fd)`, `execveat(dirfd, path)`):
/// its `/proc/self/fd/N[/path]` path, which names the same file for as long
/// as fd `N` is open.
#[derive(Debug)]
pub struct FdProgram {
    path: CString,
    /// The fd the path goes through (`None`: a plain path).
    fd: Option<libc::c_int>,
}

impl FdProgram {
    /// `fexecve(fd, …)`.
    pub fn of_fd(fd: libc::c_int) -> Option<FdProgram> {
        (fd >= 0).then(|| FdProgram {
            path: CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default(),
            fd: Some(fd),
        })
    }

    /// `execveat(dirfd, path, …, flags)`.
    ///
    /// # Safety
    /// `path` must be null or a C string.
    pub unsafe fn of_execveat(
        dirfd: libc::c_int,
        path: *const c_char,
        flags: libc::c_int,
    ) -> Option<FdProgram> {
        if path.is_null() {
            return None;
        }
        // SAFETY: a C string per the contract.
        let name = unsafe { CStr::from_ptr(path) };
        let bytes = name.to_bytes();
        let program = if bytes.is_empty() {
            if flags & libc::AT_EMPTY_PATH == 0 {
                return None; // ENOENT from the kernel
            }
            return FdProgram::of_fd(dirfd);
        } else if bytes.starts_with(b"/") || dirfd == libc::AT_FDCWD {
            FdProgram {
                path: name.to_owned(),
                fd: None,
            }
        } else {
            let mut p = format!("/proc/self/fd/{dirfd}/").into_bytes();
            p.extend_from_slice(bytes);
            FdProgram {
                path: CString::new(p).ok()?,
                fd: Some(dirfd),
            }
        };
        // AT_SYMLINK_NOFOLLOW on a symlink: the kernel's ELOOP, not a hand-off.
        // (The layer's own lstat, not its hook.)
        let _g = crate::guard::DetourGuard::enter();
        let is_link = std::fs::symlink_metadata(OsStr::from_bytes(program.path.to_bytes()))
            .is_ok_and(|m| m.file_type().is_symlink());
        if flags & libc::AT_SYMLINK_NOFOLLOW != 0 && is_link {
            return None;
        }
        Some(program)
    }

    /// The hand-off of this program (see [`supervised`]), and the fd whose
    /// close-on-exec flag must be cleared for the exec.
    ///
    /// # Safety
    /// As [`supervised`].
    pub unsafe fn supervised(
        &self,
        argv: *const *const c_char,
        envp: *const *const c_char,
    ) -> Option<(Handoff, HeldFd)> {
        // SAFETY: forwarded contract; `path` is our own C string.
        let mut handoff = unsafe { supervised(self.path.as_ptr(), argv, envp, false) }?;
        // SAFETY: F_GETFD on an fd number: no memory involved.
        let flags = self
            .fd
            .map(|fd| (fd, unsafe { libc::fcntl(fd, libc::F_GETFD) }));
        let held = match flags {
            Some((fd, f)) if f >= 0 && f & libc::FD_CLOEXEC != 0 => {
                handoff.add_env(CString::new(format!("{HANDOFF_CLOEXEC_FD_ENV}={fd}")).ok()?);
                HeldFd { cloexec: Some(fd) }
            }
            _ => HeldFd { cloexec: None },
        };
        Some((handoff, held))
    }
}

/// The fd of a hand-off by fd, kept open across the exec of `remora`.
#[derive(Debug)]
pub struct HeldFd {
    /// An fd whose close-on-exec flag is cleared for the exec.
    cloexec: Option<libc::c_int>,
}

impl HeldFd {
    /// Run `exec` with the fd kept open across it; a failed exec (it
    /// returns) gets the flag back, with exec's errno.
    pub fn exec(self, exec: impl FnOnce() -> libc::c_int) -> libc::c_int {
        let Some(fd) = self.cloexec else {
            return exec();
        };
        // SAFETY: F_SETFD on the caller's fd; no memory involved.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        let rc = exec();
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        crate::error::set_errno(errno);
        rc
    }
}

impl Handoff {
    /// One more `KEY=VALUE` for `remora supervise`.
    fn add_env(&mut self, entry: CString) {
        let at = self.envp.len().saturating_sub(1); // before the NULL
        self.envp.insert(at, entry.as_ptr());
        // Moving the CString into the Vec does not move its bytes.
        self._owned.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_named_by_fd_go_through_proc_self_fd() {
        let p = FdProgram::of_fd(7).unwrap();
        assert_eq!(
            (p.path.to_str().unwrap(), p.fd),
            ("/proc/self/fd/7", Some(7))
        );
        assert!(FdProgram::of_fd(-1).is_none());
        let at = |dirfd, path: &CStr, flags| {
            // SAFETY: a valid C string.
            unsafe { FdProgram::of_execveat(dirfd, path.as_ptr(), flags) }
                .map(|p| (p.path.to_str().unwrap().to_owned(), p.fd))
        };
        assert_eq!(
            at(5, c"", libc::AT_EMPTY_PATH),
            Some(("/proc/self/fd/5".into(), Some(5)))
        );
        assert_eq!(at(5, c"", 0), None);
        assert_eq!(
            at(5, c"bin/x", 0),
            Some(("/proc/self/fd/5/bin/x".into(), Some(5)))
        );
        assert_eq!(at(5, c"/bin/x", 0), Some(("/bin/x".into(), None)));
        assert_eq!(at(libc::AT_FDCWD, c"x", 0), Some(("x".into(), None)));
    }

    #[test]
    fn classifies_static_dynamic_and_scripts() {
        assert!(!needs_supervisor(std::path::Path::new("/bin/sh")));
        assert!(!needs_supervisor(std::path::Path::new("/etc/hostname")));
        assert!(!needs_supervisor(std::path::Path::new("/nonexistent")));
        if std::path::Path::new("/bin/busybox").exists() {
            assert!(needs_supervisor(std::path::Path::new("/bin/busybox")));
        }
    }
}
