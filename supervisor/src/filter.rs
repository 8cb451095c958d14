//! The classic-BPF filter: which syscalls go to the supervisor.
//!
//! Hand-written rather than built with `seccompiler` or `libseccomp`: the
//! program is a few dozen instructions (check the architecture, compare the
//! syscall number against a short list, look at one argument for a few), it
//! must be prepared before `fork` and installed between `fork` and `exec`
//! without allocating, and a crate would add a dependency (and, for
//! libseccomp, a C library) for nothing the lists below do not already say.
//!
//! Argument checks keep local calls away from the supervisor where an
//! argument alone can say a call is local (the path arguments cannot be read
//! by a filter): see [`When`].

use crate::abi::{AUDIT_ARCH_X86_64, SECCOMP_RET_ALLOW, SECCOMP_RET_USER_NOTIF, X32_SYSCALL_BIT};

/// When a listed syscall notifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Every call.
    Always,
    /// Unless argument `flags` has `AT_EMPTY_PATH` and argument 0 (the
    /// dirfd) is a real fd: that is `fstat` of an fd (glibc's `fstat` is
    /// `newfstatat(fd, "", buf, AT_EMPTY_PATH)`, Rust's is `statx` alike),
    /// and the fds remora makes are real local files or directories.
    NotEmptyPathOfFd { flags: u8 },
    /// Unless argument `arg` (a pointer) is NULL: `sendto`/`recvfrom`
    /// without an address (`send`, `recv`: every TCP write of glibc).
    NonNull { arg: u8 },
    /// Unless argument `arg` (flags) has bit `flag`: the `sendmsg` that
    /// hands the listener over, right after the filter is installed, is
    /// marked with [`UNNOTIFIED_SENDMSG`].
    UnlessFlag { arg: u8, flag: u32 },
    /// Only when argument `arg` is an fd in the range remora installs its
    /// read-write mirrors of the target's files in ([`FdRange`]).
    FdInRange { arg: u8 },
}

/// The fd numbers at which read-write opens of the target's files are
/// installed: `base..limit`. Calls on lower fds (every fd a program
/// normally has) never notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdRange {
    pub base: u32,
    pub limit: u32,
}

impl FdRange {
    /// The top 64 fds below the soft `RLIMIT_NOFILE` (at most 65536): a
    /// program reaches them only near its limit, and installing there needs
    /// no change to its limit.
    pub fn for_soft_limit(soft: u64) -> FdRange {
        let limit = soft.clamp(128, 1 << 16) as u32;
        FdRange {
            base: limit - 64,
            limit,
        }
    }

    pub fn contains(&self, fd: i32) -> bool {
        fd >= 0 && (fd as u32) >= self.base && (fd as u32) < self.limit
    }
}

/// The syscalls remora always emulates or inspects; everything else runs
/// untouched unless the session needs [`INCOMING`] or [`FS_WRITES`].
pub const NOTIFIED: &[(libc::c_long, When)] = &[
    (libc::SYS_open, When::Always),
    (libc::SYS_openat, When::Always),
    (libc::SYS_stat, When::Always),
    (libc::SYS_lstat, When::Always),
    (libc::SYS_newfstatat, When::NotEmptyPathOfFd { flags: 3 }),
    (libc::SYS_statx, When::NotEmptyPathOfFd { flags: 2 }),
    (libc::SYS_readlink, When::Always),
    (libc::SYS_readlinkat, When::Always),
    (libc::SYS_access, When::Always),
    (libc::SYS_faccessat, When::Always),
    (libc::SYS_faccessat2, When::Always),
    (libc::SYS_connect, When::Always),
    (libc::SYS_getpeername, When::Always),
    (libc::SYS_getsockname, When::Always),
    (libc::SYS_chdir, When::Always),
    (libc::SYS_fchdir, When::Always),
    (libc::SYS_getcwd, When::Always),
    // io_uring's operations never pass the syscall entry: refused, so
    // programs fall back to plain syscalls (see docs/seccomp.md).
    (libc::SYS_io_uring_setup, When::Always),
];

/// Notified when outgoing UDP may go to the target: datagrams with a
/// destination on unconnected sockets, and their answers (see
/// `net/udp.rs`). `sendmsg`/`recvmsg` and their `mmsg` forms hide the
/// address behind a pointer, so they always notify.
pub const DATAGRAMS: &[(libc::c_long, When)] = &[
    (libc::SYS_sendto, When::NonNull { arg: 4 }),
    (libc::SYS_recvfrom, When::NonNull { arg: 4 }),
    (
        libc::SYS_sendmsg,
        When::UnlessFlag {
            arg: 2,
            flag: UNNOTIFIED_SENDMSG as u32,
        },
    ),
    (libc::SYS_sendmmsg, When::Always),
    (libc::SYS_recvmsg, When::Always),
    (libc::SYS_recvmmsg, When::Always),
];

/// The `sendmsg` flag that the filter lets through: `MSG_FASTOPEN`, which
/// the kernel ignores on the unix socket that hands the listener to the
/// supervisor (it must not be notified: nobody could answer it yet), and
/// which only means something for TCP, whose `sendmsg` is never redirected.
pub const UNNOTIFIED_SENDMSG: i32 = libc::MSG_FASTOPEN;

/// Notified only when incoming traffic is on (steal or mirror).
pub const INCOMING: &[(libc::c_long, When)] = &[
    (libc::SYS_listen, When::Always),
    (libc::SYS_accept, When::Always),
    (libc::SYS_accept4, When::Always),
];

/// `fchmodat2` (Linux 6.6; not in the libc crate's list yet).
pub const SYS_FCHMODAT2: libc::c_long = 452;

/// Notified only when the fs config can send writes to the target (mode
/// `write` or a `read_write` list): otherwise these stay local, as with the
/// layer. The fd-range ones keep the target's copy of a file opened
/// read-write in step with the program's local mirror of it.
pub const FS_WRITES: &[(libc::c_long, When)] = &[
    (libc::SYS_mkdir, When::Always),
    (libc::SYS_mkdirat, When::Always),
    (libc::SYS_rmdir, When::Always),
    (libc::SYS_unlink, When::Always),
    (libc::SYS_unlinkat, When::Always),
    (libc::SYS_rename, When::Always),
    (libc::SYS_renameat, When::Always),
    (libc::SYS_renameat2, When::Always),
    (libc::SYS_truncate, When::Always),
    (libc::SYS_chmod, When::Always),
    (libc::SYS_fchmodat, When::Always),
    (SYS_FCHMODAT2, When::Always),
    (libc::SYS_chown, When::Always),
    (libc::SYS_lchown, When::Always),
    (libc::SYS_fchownat, When::Always),
    (libc::SYS_link, When::Always),
    (libc::SYS_linkat, When::Always),
    (libc::SYS_symlink, When::Always),
    (libc::SYS_symlinkat, When::Always),
    (libc::SYS_utimensat, When::Always),
    (libc::SYS_write, When::FdInRange { arg: 0 }),
    (libc::SYS_pwrite64, When::FdInRange { arg: 0 }),
    (libc::SYS_writev, When::FdInRange { arg: 0 }),
    (libc::SYS_pwritev, When::FdInRange { arg: 0 }),
    (libc::SYS_pwritev2, When::FdInRange { arg: 0 }),
    (libc::SYS_ftruncate, When::FdInRange { arg: 0 }),
    (libc::SYS_fsync, When::FdInRange { arg: 0 }),
    (libc::SYS_fdatasync, When::FdInRange { arg: 0 }),
    (libc::SYS_fallocate, When::FdInRange { arg: 0 }),
    (libc::SYS_fchmod, When::FdInRange { arg: 0 }),
    (libc::SYS_fchown, When::FdInRange { arg: 0 }),
    (libc::SYS_dup, When::FdInRange { arg: 0 }),
    (libc::SYS_dup2, When::FdInRange { arg: 0 }),
    (libc::SYS_dup3, When::FdInRange { arg: 0 }),
    (libc::SYS_fcntl, When::FdInRange { arg: 0 }),
    (libc::SYS_mmap, When::FdInRange { arg: 4 }),
    (libc::SYS_sendfile, When::FdInRange { arg: 0 }),
    (libc::SYS_copy_file_range, When::FdInRange { arg: 2 }),
    (libc::SYS_splice, When::FdInRange { arg: 2 }),
];

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// The low 32 bits of argument `i` (little endian).
fn offset_arg(i: u8) -> u32 {
    16 + 8 * u32::from(i)
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The instructions checking one argument, ending in their own returns
/// (classic BPF jumps only forward).
fn block(when: When, fds: FdRange) -> Vec<libc::sock_filter> {
    let allow = stmt(BPF_RET_K, SECCOMP_RET_ALLOW);
    let notify = stmt(BPF_RET_K, SECCOMP_RET_USER_NOTIF);
    match when {
        When::Always => vec![notify],
        When::NotEmptyPathOfFd { flags } => vec![
            stmt(BPF_LD_W_ABS, offset_arg(flags)),
            // Without AT_EMPTY_PATH: a path lookup, notify.
            jump(BPF_JSET_K, libc::AT_EMPTY_PATH as u32, 0, 3),
            stmt(BPF_LD_W_ABS, offset_arg(0)),
            // AT_FDCWD with an empty path is the working directory, which
            // may be virtual: notify.
            jump(BPF_JEQ_K, libc::AT_FDCWD as u32, 1, 0),
            allow,
            notify,
        ],
        When::NonNull { arg } => vec![
            stmt(BPF_LD_W_ABS, offset_arg(arg)),
            jump(BPF_JEQ_K, 0, 0, 2),
            stmt(BPF_LD_W_ABS, offset_arg(arg) + 4),
            jump(BPF_JEQ_K, 0, 1, 0),
            notify,
            allow,
        ],
        When::UnlessFlag { arg, flag } => vec![
            stmt(BPF_LD_W_ABS, offset_arg(arg)),
            jump(BPF_JSET_K, flag, 1, 0),
            notify,
            allow,
        ],
        When::FdInRange { arg } => vec![
            stmt(BPF_LD_W_ABS, offset_arg(arg)),
            jump(BPF_JGE_K, fds.base, 0, 2),
            jump(BPF_JGE_K, fds.limit, 1, 0),
            notify,
            allow,
        ],
    }
}

/// The filter program: foreign architectures and x32 calls are allowed (not
/// emulated, see docs/seccomp.md), the listed syscalls notify when their
/// [`When`] says so, the rest run.
pub fn program(notified: &[(libc::c_long, When)], fds: FdRange) -> Vec<libc::sock_filter> {
    // The kernel caches "always allowed" per syscall number and then skips
    // the filter (Linux 5.11+), so unlisted syscalls cost nothing. Listed
    // ones with an argument check run the program on every call (`write`
    // in fs mode `write`): they come first in the chain, so they pay a few
    // instructions, not the whole list.
    let mut notified = notified.to_vec();
    notified.sort_by_key(|(_, when)| match when {
        When::FdInRange { .. } | When::NonNull { .. } | When::UnlessFlag { .. } => 0,
        When::NotEmptyPathOfFd { .. } => 1,
        When::Always => 2,
    });
    let notified = &notified[..];
    // Layout: [0] load arch, [1] foreign arch -> allow, [2] load nr,
    // [3] x32 -> allow, [4..4+n] listed nr -> its block, [4+n] ret allow,
    // then the blocks. A jump of k from instruction i lands on i + 1 + k.
    let n = notified.len();
    let allow_at = 4 + n;
    let to = |from: usize, target: usize| {
        u8::try_from(target - from - 1).expect("seccomp filter jump out of range")
    };
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 0, to(1, allow_at)),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, to(3, allow_at), 0),
    ];
    // Blocks of the same kind are shared: one per distinct `When`.
    let mut kinds: Vec<When> = Vec::new();
    for (_, when) in notified {
        if !kinds.contains(when) {
            kinds.push(*when);
        }
    }
    let blocks: Vec<Vec<libc::sock_filter>> = kinds.iter().map(|w| block(*w, fds)).collect();
    let mut starts = Vec::new();
    let mut at = allow_at + 1;
    for b in &blocks {
        starts.push(at);
        at += b.len();
    }
    for (i, (nr, when)) in notified.iter().enumerate() {
        let kind = kinds.iter().position(|k| k == when).unwrap_or(0);
        prog.push(jump(BPF_JEQ_K, *nr as u32, to(4 + i, starts[kind]), 0));
    }
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    for b in blocks {
        prog.extend(b);
    }
    prog
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDS: FdRange = FdRange {
        base: 960,
        limit: 1024,
    };

    /// A tiny interpreter for the instructions `program` uses.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let ins = prog[pc];
            match ins.code {
                BPF_LD_W_ABS => {
                    acc = match ins.k {
                        OFFSET_ARCH => arch,
                        OFFSET_NR => nr,
                        k if (k - 16) % 8 == 4 => (args[((k - 16) / 8) as usize] >> 32) as u32,
                        k => args[((k - 16) / 8) as usize] as u32,
                    }
                }
                BPF_JEQ_K | BPF_JGE_K | BPF_JSET_K => {
                    let hit = match ins.code {
                        BPF_JEQ_K => acc == ins.k,
                        BPF_JGE_K => acc >= ins.k,
                        _ => acc & ins.k != 0,
                    };
                    pc += usize::from(if hit { ins.jt } else { ins.jf });
                }
                BPF_RET_K => return ins.k,
                other => panic!("unexpected instruction {other}"),
            }
            pc += 1;
        }
    }

    fn x86(prog: &[libc::sock_filter], nr: libc::c_long, args: [u64; 6]) -> u32 {
        run(prog, AUDIT_ARCH_X86_64, nr as u32, args)
    }

    const NOTIFY: u32 = SECCOMP_RET_USER_NOTIF;
    const ALLOW: u32 = SECCOMP_RET_ALLOW;

    #[test]
    fn listed_syscalls_notify_and_others_run() {
        let prog = program(NOTIFIED, FDS);
        for (nr, when) in NOTIFIED {
            if *when == When::Always {
                assert_eq!(x86(&prog, *nr, [0; 6]), NOTIFY);
            }
        }
        for nr in [
            libc::SYS_listen,
            libc::SYS_mkdir,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_execve,
        ] {
            assert_eq!(x86(&prog, nr, [0; 6]), ALLOW);
        }
        // The fd-range calls are not in the base list: a write on a high fd runs.
        assert_eq!(x86(&prog, libc::SYS_write, [970, 0, 0, 0, 0, 0]), ALLOW);
        let x32 = X32_SYSCALL_BIT | libc::SYS_openat as u32;
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, x32, [0; 6]), ALLOW);
        assert_eq!(run(&prog, 0x4000_0003, 5, [0; 6]), ALLOW);
        let all: Vec<_> = [NOTIFIED, INCOMING, FS_WRITES].concat();
        let prog = program(&all, FDS);
        for (nr, when) in &all {
            if *when == When::Always {
                assert_eq!(x86(&prog, *nr, [0; 6]), NOTIFY, "{nr}");
            }
        }
        assert_eq!(x86(&prog, libc::SYS_read, [970, 0, 0, 0, 0, 0]), ALLOW);
    }

    #[test]
    fn fstat_of_an_fd_runs_but_path_lookups_notify() {
        let prog = program(NOTIFIED, FDS);
        let empty = libc::AT_EMPTY_PATH as u64;
        let cwd = libc::AT_FDCWD as i64 as u64;
        // glibc's fstat(3, buf): newfstatat(3, "", buf, AT_EMPTY_PATH).
        assert_eq!(
            x86(&prog, libc::SYS_newfstatat, [3, 0, 0, empty, 0, 0]),
            ALLOW
        );
        assert_eq!(x86(&prog, libc::SYS_statx, [3, 0, empty, 0, 0, 0]), ALLOW);
        // stat(path): newfstatat(AT_FDCWD, path, buf, 0).
        assert_eq!(
            x86(&prog, libc::SYS_newfstatat, [cwd, 0, 0, 0, 0, 0]),
            NOTIFY
        );
        assert_eq!(
            x86(&prog, libc::SYS_newfstatat, [3, 0, 0, 0x100, 0, 0]),
            NOTIFY
        );
        assert_eq!(
            x86(&prog, libc::SYS_statx, [cwd, 0, 0, 0xfff, 0, 0]),
            NOTIFY
        );
        // The working directory itself may be virtual.
        assert_eq!(
            x86(&prog, libc::SYS_newfstatat, [cwd, 0, 0, empty, 0, 0]),
            NOTIFY
        );
        assert_eq!(
            x86(&prog, libc::SYS_statx, [cwd, 0, empty, 0, 0, 0]),
            NOTIFY
        );
    }

    #[test]
    fn fd_range_calls_notify_only_for_fds_in_the_range() {
        let prog = program(&[NOTIFIED, FS_WRITES].concat(), FDS);
        for fd in [0u64, 1, 3, 959, 1024, 5000, u32::MAX as u64, u64::MAX] {
            assert_eq!(
                x86(&prog, libc::SYS_write, [fd, 0, 0, 0, 0, 0]),
                ALLOW,
                "{fd}"
            );
            assert_eq!(x86(&prog, libc::SYS_ftruncate, [fd, 0, 0, 0, 0, 0]), ALLOW);
        }
        for fd in [960u64, 1000, 1023] {
            assert_eq!(
                x86(&prog, libc::SYS_write, [fd, 0, 0, 0, 0, 0]),
                NOTIFY,
                "{fd}"
            );
            assert_eq!(x86(&prog, libc::SYS_pwritev2, [fd, 0, 0, 0, 0, 0]), NOTIFY);
        }
        // mmap's fd is argument 4; an anonymous mapping (-1) runs.
        assert_eq!(x86(&prog, libc::SYS_mmap, [0, 4096, 3, 1, 970, 0]), NOTIFY);
        assert_eq!(x86(&prog, libc::SYS_mmap, [970, 4096, 3, 1, 3, 0]), ALLOW);
        let anon = [0, 4096, 3, 0x22, u64::MAX, 0];
        assert_eq!(x86(&prog, libc::SYS_mmap, anon), ALLOW);
        // copy_file_range's output is argument 2.
        assert_eq!(
            x86(&prog, libc::SYS_copy_file_range, [970, 0, 3, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            x86(&prog, libc::SYS_copy_file_range, [3, 0, 970, 0, 0, 0]),
            NOTIFY
        );
    }

    #[test]
    fn datagram_calls_notify_only_with_an_address() {
        let prog = program(&[NOTIFIED, DATAGRAMS].concat(), FDS);
        // send(fd, buf, n, 0) is sendto(fd, buf, n, 0, NULL, 0).
        assert_eq!(x86(&prog, libc::SYS_sendto, [3, 1, 1, 0, 0, 0]), ALLOW);
        assert_eq!(x86(&prog, libc::SYS_recvfrom, [3, 1, 1, 0, 0, 0]), ALLOW);
        for addr in [0x7ffd_0000_1000u64, 0x1000, 0x7ffd_0000_0000] {
            assert_eq!(x86(&prog, libc::SYS_sendto, [3, 1, 1, 0, addr, 16]), NOTIFY);
            assert_eq!(
                x86(&prog, libc::SYS_recvfrom, [3, 1, 1, 0, addr, 9]),
                NOTIFY
            );
        }
        assert_eq!(x86(&prog, libc::SYS_sendmsg, [3, 1, 0, 0, 0, 0]), NOTIFY);
        // The listener's hand-over (right after the filter is installed).
        let marked = UNNOTIFIED_SENDMSG as u64;
        assert_eq!(
            x86(&prog, libc::SYS_sendmsg, [3, 1, marked, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(x86(&prog, libc::SYS_recvmmsg, [3, 1, 1, 0, 0, 0]), NOTIFY);
        // Without outgoing UDP they are not in the filter at all.
        let prog = program(NOTIFIED, FDS);
        assert_eq!(
            x86(&prog, libc::SYS_sendto, [3, 1, 1, 0, 0x1000, 16]),
            ALLOW
        );
    }

    #[test]
    fn argument_checked_calls_come_first_in_the_chain() {
        let prog = program(&[NOTIFIED, INCOMING, FS_WRITES].concat(), FDS);
        // arch, nr, x32, then `write` is the first comparison.
        assert_eq!(prog[4].k, libc::SYS_write as u32);
        assert!(
            prog[4..]
                .iter()
                .take(25)
                .any(|i| i.k == libc::SYS_newfstatat as u32)
        );
    }

    #[test]
    fn the_fd_range_sits_under_the_soft_limit() {
        assert_eq!(
            FdRange::for_soft_limit(1024),
            FdRange {
                base: 960,
                limit: 1024
            }
        );
        let big = FdRange::for_soft_limit(1 << 20);
        assert_eq!((big.base, big.limit), (65472, 65536));
        assert!(big.contains(65500) && !big.contains(-1) && !big.contains(3));
        assert_eq!(FdRange::for_soft_limit(0).limit, 128);
    }
}
