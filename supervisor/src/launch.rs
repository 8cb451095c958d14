//! Starting the program under the filter: between `fork` and `exec` the
//! child sets `no_new_privs`, installs the filter with a new listener and
//! sends the listener to the supervisor over a socketpair (`SCM_RIGHTS`).
//! Everything the child does there is a raw syscall on memory prepared
//! before the fork: no allocation, no lock.

use crate::abi::{
    SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    SECCOMP_SET_MODE_FILTER,
};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Install the filter in the calling process; returns the listener fd.
/// Signals wait for the supervisor's answer where the kernel can do that
/// (`WAIT_KILLABLE_RECV`, Linux 5.19: see [`crate::signals`]); older kernels
/// refuse the flag (`EINVAL`) and get the filter without it.
///
/// # Safety
/// Async-signal-safe: only raw syscalls on `prog`, which must outlive the call.
unsafe fn install(prog: &[libc::sock_filter]) -> io::Result<(RawFd, bool)> {
    // SAFETY: plain prctl/seccomp syscalls on valid pointers.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr().cast_mut(),
        };
        let seccomp = |flags: libc::c_uint| {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                flags,
                &fprog as *const libc::sock_fprog,
            )
        };
        let mut killable = true;
        let mut fd =
            seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV);
        if fd < 0 && *libc::__errno_location() == libc::EINVAL {
            killable = false;
            fd = seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER);
        }
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((fd as RawFd, killable))
    }
}

/// Send `fd` over the unix socket `sock` (async-signal-safe).
unsafe fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    #[repr(C)]
    struct Cmsg {
        hdr: libc::cmsghdr,
        fd: RawFd,
    }
    // SAFETY: zeroed msghdr/cmsghdr are valid; pointers stay on this frame.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut cmsg: Cmsg = std::mem::zeroed();
        cmsg.hdr.cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        cmsg.hdr.cmsg_level = libc::SOL_SOCKET;
        cmsg.hdr.cmsg_type = libc::SCM_RIGHTS;
        cmsg.fd = fd;
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = (&mut cmsg as *mut Cmsg).cast();
        msg.msg_controllen = std::mem::size_of::<Cmsg>();
        // The filter is already installed when the listener is sent, and
        // nobody could answer a notified sendmsg yet: MSG_FASTOPEN (ignored
        // on a unix socket) is the mark that the filter lets through
        // (`When::UnlessFlag`).
        if libc::sendmsg(sock, &msg, crate::filter::UNNOTIFIED_SENDMSG) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receive one fd sent with [`send_fd`].
fn recv_fd(sock: &UnixStream) -> io::Result<OwnedFd> {
    // SAFETY: as in send_fd; the received fd is checked before use.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut space = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&space);
        if libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) <= 0 {
            return Err(io::Error::other("the child sent no seccomp listener"));
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::other("the child sent no seccomp listener"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Spawn `command` under a filter notifying `notified` (`fds`: see
/// [`crate::filter::FdRange`]); returns the child
/// and the listener.
pub fn spawn(
    mut command: Command,
    notified: &[(libc::c_long, crate::filter::When)],
    fds: crate::filter::FdRange,
) -> io::Result<(Child, OwnedFd)> {
    let prog = crate::filter::program(notified, fds);
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes raw syscalls on memory prepared above.
    unsafe {
        command.pre_exec(move || {
            // Without its supervisor the program's notified calls would all
            // fail: it dies with it (remora forwards signals, so this is for
            // a remora that was killed outright).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
                || libc::getppid() != parent
            {
                return Err(io::Error::other("the supervisor is gone"));
            }
            let (listener, _) = install(&prog)?;
            send_fd(theirs_fd, listener)?;
            libc::close(listener);
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(theirs);
    let listener = recv_fd(&ours)?;
    Ok((child, listener))
}

/// What the last [`probe`] learnt of `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`:
/// 0 not probed, 1 works, 2 refused.
static SYNC_WAKE_UP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether the kernel took `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (Linux 6.6:
/// the notifying thread hands its CPU straight to the supervisor) in the
/// last [`probe`]; `None` before one got that far.
pub fn sync_wake_up_probed() -> Option<bool> {
    match SYNC_WAKE_UP.load(std::sync::atomic::Ordering::Relaxed) {
        1 => Some(true),
        2 => Some(false),
        _ => None,
    }
}

/// What the last [`probe`] learnt of `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`:
/// 0 not probed, 1 taken, 2 refused.
static KILLABLE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether the kernel took `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (Linux
/// 5.19: no answer of the supervisor is lost to a signal, see
/// [`crate::signals`]) in the last successful [`probe`]; `None` before one.
pub fn wait_killable_probed() -> Option<bool> {
    match KILLABLE.load(std::sync::atomic::Ordering::Relaxed) {
        1 => Some(true),
        2 => Some(false),
        _ => None,
    }
}

/// Whether seccomp user notification works here with everything the
/// supervisor uses: a forked child installs a filter notifying `getppid`;
/// the parent takes a copy of one of the child's fds (`pidfd_getfd`, as for
/// `connect` and `listen`) and answers the call with a new fd
/// (`SECCOMP_IOCTL_NOTIF_ADDFD` + `SECCOMP_ADDFD_FLAG_SEND`, as for remote
/// opens). `Err` says what is missing.
pub fn probe() -> Result<(), String> {
    use crate::abi::*;
    let prog = vec![
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_getppid as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_USER_NOTIF,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let theirs_fd = theirs.as_raw_fd();
    // SAFETY: the child only makes raw syscalls and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: child side: raw syscalls only, then _exit.
        unsafe {
            let code = match install(&prog) {
                Ok((listener, killable)) => {
                    let _ = send_fd(theirs_fd, listener);
                    libc::close(listener);
                    // Answered by the parent with a new fd (`/dev/null`).
                    let fd = libc::getppid();
                    if fd >= 0 && libc::fcntl(fd, libc::F_GETFD) >= 0 && fd != theirs_fd {
                        if killable { 0 } else { 4 }
                    } else {
                        3
                    }
                }
                Err(e) => 10 + e.raw_os_error().unwrap_or(0).min(100),
            };
            libc::_exit(code);
        }
    }
    drop(theirs);
    let result = (|| {
        let listener = crate::notify::Listener::new(recv_fd(&ours).map_err(|e| e.to_string())?);
        let sync = if listener.sync_wake_up() { 1 } else { 2 };
        SYNC_WAKE_UP.store(sync, std::sync::atomic::Ordering::Relaxed);
        let notif = loop {
            if let Some(n) = listener
                .recv()
                .map_err(|e| format!("receiving a notification: {e}"))?
            {
                break n;
            }
        };
        if let Err(e) = crate::net::pidfd_getfd(notif.pid, theirs_fd) {
            listener.answer(notif.id, crate::notify::Verdict::Errno(libc::ENOSYS));
            return Err(format!(
                "pidfd_getfd does not work: {e} (Linux 5.6 or later is needed, and ptrace \
                 access to the program: a Yama ptrace_scope of 3 forbids it)"
            ));
        }
        let devnull = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
        let mut addfd = SeccompNotifAddfd {
            id: notif.id,
            flags: SECCOMP_ADDFD_FLAG_SEND,
            srcfd: devnull.as_raw_fd() as u32,
            newfd: 0,
            newfd_flags: 0,
        };
        // SAFETY: the ioctl reads a valid seccomp_notif_addfd.
        let rc = unsafe {
            libc::ioctl(
                listener_fd(&listener),
                SECCOMP_IOCTL_NOTIF_ADDFD,
                &mut addfd,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            listener.answer(notif.id, crate::notify::Verdict::Errno(libc::ENOSYS));
            return Err(format!(
                "SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SEND is not supported: {e} \
                 (Linux 5.14 or later is needed)"
            ));
        }
        Ok(())
    })();
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    // A child that could not install the filter sent no listener, so the
    // parent's error ("no listener") says less than the child's exit code.
    let code = libc::WEXITSTATUS(status);
    if code >= 10 {
        return Err(format!(
            "installing a seccomp filter with a listener failed: {} (Linux 5.0 or later with \
             CONFIG_SECCOMP_FILTER is needed; containers may forbid seccomp)",
            io::Error::from_raw_os_error(code - 10)
        ));
    }
    result?;
    KILLABLE.store(
        if code == 0 { 1 } else { 2 },
        std::sync::atomic::Ordering::Relaxed,
    );
    match code {
        0 | 4 => Ok(()),
        3 => Err("the notified call was not answered with the supervisor's fd".into()),
        c => Err(format!("probe child exited with {c}")),
    }
}

fn listener_fd(listener: &crate::notify::Listener) -> RawFd {
    listener.raw()
}

/// Fork a detached supervisor process (a grandchild in a session of its
/// own, so it is not the program's child — a shell's `wait` must not wait
/// for it — and the terminal's Ctrl-C does not reach it): it closes every
/// fd but stderr, `ours` and `keep`, receives the listener on `ours` and calls
/// `serve`. `theirs` is the other end, kept by the caller. Returns in the
/// caller once the intermediate child is reaped.
///
/// The caller must be single-threaded: the grandchild goes on running Rust
/// code after `fork`.
pub fn fork_supervisor(
    ours: UnixStream,
    theirs: RawFd,
    keep: &[RawFd],
    serve: impl FnOnce(OwnedFd),
) -> io::Result<()> {
    // SAFETY: fork in a single-threaded process (the caller's contract).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; the intermediate child only forks and exits.
        let grandchild = unsafe { libc::fork() };
        if grandchild != 0 {
            // SAFETY: leaving the intermediate child without running Rust's exit path.
            unsafe { libc::_exit(i32::from(grandchild < 0)) };
        }
        // SAFETY: plain syscalls on fds of this process.
        unsafe {
            libc::setsid();
            libc::close(theirs);
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::dup2(null, 1);
                if null > 2 {
                    libc::close(null);
                }
            }
        }
        let ours_fd = ours.as_raw_fd();
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<RawFd> = dir
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2 && fd != ours_fd && !keep.contains(&fd))
                .collect();
            for fd in fds {
                // SAFETY: closing inherited fds this process does not use
                // (the read_dir's own fd is already closed; EBADF is harmless).
                unsafe { libc::close(fd) };
            }
        }
        let code = match recv_fd(&ours) {
            Ok(listener) => {
                drop(ours);
                serve(listener);
                0
            }
            Err(_) => 1,
        };
        std::process::exit(code);
    }
    let mut status = 0;
    // SAFETY: reaping the intermediate child we just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    drop(ours);
    Ok(())
}

/// In the process that becomes the program: install the filter, send the
/// listener to the supervisor over `theirs`, exec. Returns only on failure.
pub fn install_and_exec(
    prog: &[libc::sock_filter],
    theirs: UnixStream,
    program: &str,
    argv0: Option<String>,
    args: &[String],
    env: &std::collections::BTreeMap<String, String>,
) -> io::Error {
    // SAFETY: raw syscalls on `prog`, alive for the call.
    let listener = match unsafe { install(prog) } {
        Ok((fd, _)) => fd,
        Err(e) => return e,
    };
    // SAFETY: sending our own fd over our own socket, then closing it.
    unsafe {
        if let Err(e) = send_fd(theirs.as_raw_fd(), listener) {
            return e;
        }
        libc::close(listener);
    }
    drop(theirs);
    let mut command = Command::new(program);
    if let Some(argv0) = argv0 {
        command.arg0(argv0);
    }
    command.args(args).env_clear().envs(env).exec()
}

/// Execute this program again with the same arguments and `env`, with the
/// raw `execve` syscall: an `LD_PRELOAD` layer loaded here would put its
/// variables back through its exec hook. Returns only on failure.
pub fn reexec_self(env: &std::collections::BTreeMap<String, String>) -> io::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    let Ok(exe) = CString::new(exe.as_os_str().as_bytes()) else {
        return io::Error::from_raw_os_error(libc::EINVAL);
    };
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let envp: Vec<CString> = env
        .iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: NUL-terminated strings and NULL-terminated arrays that live
    // across the call; execve only returns on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execve,
            exe.as_ptr(),
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        );
    }
    io::Error::last_os_error()
}

/// Set close-on-exec on fd `fd` of this process (not stdin, stdout or
/// stderr): an fd kept open only so the next exec could name the program
/// through `/proc/self/fd` (exec opens the program before it closes such
/// fds).
pub fn close_on_exec(fd: RawFd) {
    if fd > 2 {
        // SAFETY: F_SETFD on a number: no memory involved; a closed fd fails.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}
