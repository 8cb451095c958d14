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

#[cfg(test)]
mod tests {
    use super::*;

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
