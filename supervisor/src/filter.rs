//! The classic-BPF filter: which syscalls go to the supervisor.
//!
//! Hand-written rather than built with `seccompiler` or `libseccomp`: the
//! program is a dozen instructions (check the architecture, compare the
//! syscall number against a short list), it must be prepared before `fork`
//! and installed between `fork` and `exec` without allocating, and a crate
//! would add a dependency (and, for libseccomp, a C library) for nothing the
//! list below does not already say.

use crate::abi::{AUDIT_ARCH_X86_64, SECCOMP_RET_ALLOW, SECCOMP_RET_USER_NOTIF, X32_SYSCALL_BIT};

/// The syscalls remora always emulates or inspects; everything else runs
/// untouched unless the session needs [`INCOMING`] or [`FS_WRITES`].
pub const NOTIFIED: &[libc::c_long] = &[
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_connect,
    libc::SYS_getpeername,
    libc::SYS_chdir,
    libc::SYS_fchdir,
    libc::SYS_getcwd,
    // io_uring's operations never pass the syscall entry: refused, so
    // programs fall back to plain syscalls (see docs/seccomp.md).
    libc::SYS_io_uring_setup,
];

/// Notified only when incoming traffic is on (steal or mirror).
pub const INCOMING: &[libc::c_long] = &[libc::SYS_listen, libc::SYS_accept, libc::SYS_accept4];

/// Notified only when the fs config can send writes to the target (mode
/// `write` or a `read_write` list): otherwise these stay local, as with the
/// layer.
pub const FS_WRITES: &[libc::c_long] = &[
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
];

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

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

/// The filter program: foreign architectures and x32 calls are allowed (not
/// emulated, see docs/seccomp.md), the syscalls in `notified` notify, the
/// rest run.
pub fn program(notified: &[libc::c_long]) -> Vec<libc::sock_filter> {
    // Layout: [0] load arch, [1] foreign arch -> allow, [2] load nr,
    // [3] x32 -> allow, [4..4+n] listed nr -> notify, [4+n] ret allow,
    // [5+n] ret notify. A jump of k from instruction i lands on i + 1 + k.
    let n = notified.len();
    let allow_at = 4 + n;
    let notify_at = allow_at + 1;
    let to = |from: usize, target: usize| (target - from - 1) as u8;
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 0, to(1, allow_at)),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, to(3, allow_at), 0),
    ];
    for (i, nr) in notified.iter().enumerate() {
        prog.push(jump(BPF_JEQ_K, *nr as u32, to(4 + i, notify_at), 0));
    }
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_USER_NOTIF));
    prog
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the instructions `program` uses.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let ins = prog[pc];
            match ins.code {
                BPF_LD_W_ABS => acc = if ins.k == OFFSET_ARCH { arch } else { nr },
                BPF_JEQ_K | BPF_JGE_K => {
                    let hit = if ins.code == BPF_JEQ_K {
                        acc == ins.k
                    } else {
                        acc >= ins.k
                    };
                    pc += usize::from(if hit { ins.jt } else { ins.jf });
                }
                BPF_RET_K => return ins.k,
                other => panic!("unexpected instruction {other}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn listed_syscalls_notify_and_others_run() {
        let prog = program(NOTIFIED);
        for nr in NOTIFIED {
            assert_eq!(
                run(&prog, AUDIT_ARCH_X86_64, *nr as u32),
                SECCOMP_RET_USER_NOTIF
            );
        }
        for nr in [
            libc::SYS_listen,
            libc::SYS_mkdir,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_execve,
        ] {
            assert_eq!(run(&prog, AUDIT_ARCH_X86_64, nr as u32), SECCOMP_RET_ALLOW);
        }
        assert_eq!(
            run(
                &prog,
                AUDIT_ARCH_X86_64,
                X32_SYSCALL_BIT | libc::SYS_openat as u32
            ),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(run(&prog, 0x4000_0003, 5), SECCOMP_RET_ALLOW);
        let all: Vec<_> = [NOTIFIED, INCOMING, FS_WRITES].concat();
        let prog = program(&all);
        for nr in &all {
            assert_eq!(
                run(&prog, AUDIT_ARCH_X86_64, *nr as u32),
                SECCOMP_RET_USER_NOTIF
            );
        }
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, libc::SYS_read as u32),
            SECCOMP_RET_ALLOW
        );
    }
}
