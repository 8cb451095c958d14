/* old_kernel: runs a command as on a kernel that lacks part of seccomp user
 * notification, for tests/tests/seccomp_local.rs (remora's probe must then
 * say what is missing and `remora run` fall back to the layer). It installs
 * a plain seccomp filter (no listener) that fails one thing, then execs:
 *   old_kernel no-seccomp CMD ARGS...   seccomp(2) fails with ENOSYS (no
 *       CONFIG_SECCOMP_FILTER, or a container forbidding it); prctl's
 *       PR_SET_SECCOMP too.
 *   old_kernel no-addfd CMD ARGS...     ioctl(SECCOMP_IOCTL_NOTIF_ADDFD)
 *       fails with EINVAL, as on Linux 5.9-5.13, which had ADDFD but not
 *       SECCOMP_ADDFD_FLAG_SEND. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ADDFD 0x40182103u /* SECCOMP_IOCTL_NOTIF_ADDFD */
#define NR offsetof(struct seccomp_data, nr)
#define ARG1_LO offsetof(struct seccomp_data, args[1])

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    struct sock_filter no_seccomp[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, NR),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_seccomp, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_filter no_addfd[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, NR),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG1_LO),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ADDFD, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog;
    if (!strcmp(argv[1], "no-seccomp")) {
        prog.filter = no_seccomp;
        prog.len = sizeof no_seccomp / sizeof no_seccomp[0];
    } else if (!strcmp(argv[1], "no-addfd")) {
        prog.filter = no_addfd;
        prog.len = sizeof no_addfd / sizeof no_addfd[0];
    } else {
        return 2;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        perror("old_kernel: installing the filter");
        return 1;
    }
    execvp(argv[2], argv + 2);
    perror(argv[2]);
    return 127;
}
