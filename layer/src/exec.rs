//! Process images: children started with an explicit environment
//! (`execve`, `execvpe`, `execveat`, `fexecve`, `posix_spawn[p]`, and
//! `execv`/`execvp`, which pass `environ`) get the layer's variables back if
//! the program dropped them, so the whole process tree keeps seeing the
//! target (and its remote working directory, [`crate::file::cwd`], and the
//! write streams it inherits, [`crate::file::streams`]); a Go or statically
//! linked program, which the layer cannot reach, is started through `remora
//! supervise` instead ([`handoff`]); and `uname` reports the target's node
//! name like `gethostname`.

use crate::file::cwd::REMOTE_CWD_ENV;
use crate::file::streams::WRITE_STREAMS_ENV;
use crate::guard::DetourGuard;
use crate::real::real;
use crate::state::{INTPROXY_ADDR_ENV, LAYER_TOKEN_ENV};
use libc::{c_char, c_int, pid_t};
use std::ffi::{CStr, CString};
use std::sync::OnceLock;

pub mod handoff;

/// `KEY=VALUE` entries every child needs, captured when the layer started.
static INHERITED: OnceLock<Vec<(String, String)>> = OnceLock::new();

/// Remember the variables children must inherit (called from `state::init`).
pub fn capture_environment() {
    let keys = [
        "LD_PRELOAD",
        INTPROXY_ADDR_ENV,
        LAYER_TOKEN_ENV,
        remora_config::RESOLVED_CONFIG_ENV,
        handoff::SUPERVISE_EXE_ENV,
        remora_protocol::broker::BROKER_PATH_ENV,
        remora_protocol::broker::BROKER_DIRECT_ENV,
    ];
    let vars = keys
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    let _ = INHERITED.set(vars);
}

/// An environment block with the layer's variables restored.
struct Env {
    _owned: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

/// `None` when `envp` already carries the layer (or the layer is inactive).
///
/// # Safety
/// `envp` must be null or a NULL-terminated array of C strings.
unsafe fn patched(envp: *const *const c_char) -> Option<Env> {
    let inherited = INHERITED.get().filter(|v| !v.is_empty())?;
    crate::state::get()?;
    let mut entries: Vec<&CStr> = Vec::new();
    if !envp.is_null() {
        let mut i = 0;
        // SAFETY: NULL-terminated array per the contract.
        unsafe {
            while !(*envp.add(i)).is_null() {
                entries.push(CStr::from_ptr(*envp.add(i)));
                i += 1;
            }
        }
    }
    let has = |key: &str| {
        entries
            .iter()
            .any(|e| e.to_bytes().starts_with(format!("{key}=").as_bytes()))
    };
    let layer_path = inherited
        .iter()
        .find(|(k, _)| k == "LD_PRELOAD")
        .map(|(_, v)| v.as_str());
    let preload_ok = layer_path.is_none_or(|ours| {
        let first = ours.split(':').next().unwrap_or_default();
        entries.iter().any(|e| {
            e.to_bytes()
                .strip_prefix(b"LD_PRELOAD=")
                .is_some_and(|v| String::from_utf8_lossy(v).split(':').any(|p| p == first))
        })
    });
    // The remote working directory travels to the child in the environment.
    let cwd_prefix = format!("{REMOTE_CWD_ENV}=");
    let want_cwd = crate::file::cwd::remote().map(|dir| format!("{cwd_prefix}{dir}"));
    let has_cwd = entries
        .iter()
        .find(|e| e.to_bytes().starts_with(cwd_prefix.as_bytes()));
    let cwd_ok = has_cwd.map(|e| e.to_bytes()) == want_cwd.as_ref().map(|w| w.as_bytes());
    // So are the write streams the child inherits as fds.
    let streams_prefix = format!("{WRITE_STREAMS_ENV}=");
    let want_streams = crate::file::streams::env_value().map(|v| format!("{streams_prefix}{v}"));
    let has_streams = entries
        .iter()
        .find(|e| e.to_bytes().starts_with(streams_prefix.as_bytes()));
    let streams_ok =
        has_streams.map(|e| e.to_bytes()) == want_streams.as_ref().map(|w| w.as_bytes());
    if has(INTPROXY_ADDR_ENV) && preload_ok && cwd_ok && streams_ok {
        return None;
    }
    let mut owned: Vec<CString> = Vec::new();
    let mut ptrs: Vec<*const c_char> = Vec::new();
    for entry in &entries {
        let bytes = entry.to_bytes();
        if bytes.starts_with(b"LD_PRELOAD=") && !preload_ok {
            continue; // replaced below, keeping the program's own preloads
        }
        if bytes.starts_with(cwd_prefix.as_bytes()) {
            continue; // replaced below by this process's remote directory, if any
        }
        if bytes.starts_with(streams_prefix.as_bytes()) {
            continue; // replaced below by this process's write streams, if any
        }
        ptrs.push(entry.as_ptr());
    }
    if let Some(entry) = want_cwd {
        owned.push(CString::new(entry).ok()?);
    }
    if let Some(entry) = want_streams {
        owned.push(CString::new(entry).ok()?);
    }
    for (key, value) in inherited {
        if key == "LD_PRELOAD" {
            if preload_ok {
                continue;
            }
            let theirs = entries
                .iter()
                .find_map(|e| e.to_bytes().strip_prefix(b"LD_PRELOAD="));
            let value = match theirs {
                Some(t) if !t.is_empty() => format!("{value}:{}", String::from_utf8_lossy(t)),
                _ => value.clone(),
            };
            owned.push(CString::new(format!("LD_PRELOAD={value}")).ok()?);
        } else if !has(key) {
            owned.push(CString::new(format!("{key}={value}")).ok()?);
        }
    }
    ptrs.extend(owned.iter().map(|c| c.as_ptr()));
    ptrs.push(std::ptr::null());
    Some(Env {
        _owned: owned,
        ptrs,
    })
}

/// Call `exec` with `envp`, patched when the program dropped the layer.
///
/// # Safety
/// `envp` must be null or a NULL-terminated array of C strings.
unsafe fn with_layer_env<T>(
    envp: *const *const c_char,
    exec: impl FnOnce(*const *const c_char) -> T,
) -> T {
    let env = DetourGuard::enter().and_then(|_g| {
        // SAFETY: envp is a NULL-terminated array per the contract.
        unsafe { patched(envp) }
    });
    exec(env.as_ref().map_or(envp, |e| e.ptrs.as_ptr()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let real =
        real!(execve: fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int);
    // SAFETY: execve(2) contract: envp is a NULL-terminated array; the
    // caller's arguments are forwarded (with a patched environment), or a
    // Go/static program is started under `remora supervise`.
    unsafe {
        with_layer_env(envp, |envp| {
            match handoff::supervised(path, argv, envp, false) {
                Some(h) => real(h.exe, h.argv.as_ptr(), h.envp.as_ptr()),
                None => real(path, argv, envp),
            }
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let real =
        real!(execvpe: fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int);
    // SAFETY: execvpe(3) contract: envp is a NULL-terminated array; the
    // caller's arguments are forwarded (with a patched environment), or a
    // Go/static program is started under `remora supervise`.
    unsafe {
        with_layer_env(envp, |envp| {
            match handoff::supervised(file, argv, envp, true) {
                Some(h) => real(h.exe, h.argv.as_ptr(), h.envp.as_ptr()),
                None => real(file, argv, envp),
            }
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    flags: c_int,
) -> c_int {
    let real = real!(execveat: fn(c_int, *const c_char, *const *const c_char, *const *const c_char, c_int) -> c_int);
    let execve =
        real!(execve: fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int);
    // SAFETY: execveat(2) contract; the caller's arguments are forwarded
    // (with a patched environment), or a Go/static program is started
    // under `remora supervise` by its `/proc/self/fd` path.
    unsafe {
        with_layer_env(envp, |envp| {
            let by_fd = handoff::FdProgram::of_execveat(dirfd, path, flags);
            match by_fd.as_ref().and_then(|p| p.supervised(argv, envp)) {
                Some((h, fd)) => fd.exec(|| execve(h.exe, h.argv.as_ptr(), h.envp.as_ptr())),
                None => real(dirfd, path, argv, envp, flags),
            }
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let real = real!(fexecve: fn(c_int, *const *const c_char, *const *const c_char) -> c_int);
    let execve =
        real!(execve: fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int);
    // SAFETY: fexecve(3) contract; the caller's arguments are forwarded
    // (with a patched environment), or a Go/static program is started
    // under `remora supervise` by its `/proc/self/fd` path.
    unsafe {
        with_layer_env(envp, |envp| {
            let by_fd = handoff::FdProgram::of_fd(fd);
            match by_fd.as_ref().and_then(|p| p.supervised(argv, envp)) {
                Some((h, held)) => held.exec(|| execve(h.exe, h.argv.as_ptr(), h.envp.as_ptr())),
                None => real(fd, argv, envp),
            }
        })
    }
}

unsafe extern "C" {
    static environ: *const *const c_char;
}

/// `execv` passes `environ` to glibc's internal execve, which the layer
/// cannot see: a remote working directory set since start would be lost.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: execv(3) contract; `environ` is the process's environment.
    unsafe { execve(path, argv, environ) }
}

/// `execvp`: like [`execv`], searching `PATH`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: execvp(3) contract; `environ` is the process's environment.
    unsafe { execvpe(file, argv, environ) }
}

type Spawn = unsafe extern "C" fn(
    *mut pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *mut c_char,
    *const *mut c_char,
) -> c_int;

/// Shared body of `posix_spawn` and `posix_spawnp`.
///
/// # Safety
/// posix_spawn(3)'s contract for every argument.
#[allow(clippy::too_many_arguments)]
unsafe fn spawn(
    real: Spawn,
    pid: *mut pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
    search: bool,
) -> c_int {
    // SAFETY: posix_spawn(3) contract; libc gets the caller's arguments
    // (patched env), or `remora supervise` for a Go/static program.
    unsafe {
        with_layer_env(envp.cast(), |envp| {
            match handoff::supervised(path, argv.cast(), envp, search) {
                Some(h) => real(
                    pid,
                    h.exe,
                    actions,
                    attr,
                    h.argv.as_ptr().cast(),
                    h.envp.as_ptr().cast(),
                ),
                None => real(pid, path, actions, attr, argv, envp.cast()),
            }
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    let real: Spawn = real!(posix_spawn: fn(*mut pid_t, *const c_char, *const libc::posix_spawn_file_actions_t, *const libc::posix_spawnattr_t, *const *mut c_char, *const *mut c_char) -> c_int);
    // SAFETY: the caller upholds posix_spawn's contract.
    unsafe { spawn(real, pid, path, actions, attr, argv, envp, false) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut pid_t,
    file: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    let real: Spawn = real!(posix_spawnp: fn(*mut pid_t, *const c_char, *const libc::posix_spawn_file_actions_t, *const libc::posix_spawnattr_t, *const *mut c_char, *const *mut c_char) -> c_int);
    // SAFETY: the caller upholds posix_spawnp's contract.
    unsafe { spawn(real, pid, file, actions, attr, argv, envp, true) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn uname(buf: *mut libc::utsname) -> c_int {
    let real = real!(uname: fn(*mut libc::utsname) -> c_int);
    // SAFETY: forwarding the caller's arguments unchanged.
    let rc = unsafe { real(buf) };
    if rc != 0 || buf.is_null() {
        return rc;
    }
    if let Some(_g) = DetourGuard::enter() {
        if let Ok(host) = crate::dns::ops::hostname() {
            let bytes = host.as_bytes();
            // SAFETY: uname succeeded, so buf is a valid utsname; nodename is
            // a fixed array and we write at most its length including NUL.
            unsafe {
                let node = &mut (*buf).nodename;
                let n = bytes.len().min(node.len() - 1);
                for (dst, src) in node.iter_mut().zip(bytes[..n].iter()) {
                    *dst = *src as c_char;
                }
                node[n] = 0;
            }
        }
    }
    rc
}
