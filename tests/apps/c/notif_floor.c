/* notif_floor: the floor of a seccomp user-notification round trip, with
 * no remora in it (docs/benchmarks.md, issue 17): a child stat()s N times
 * under a filter notifying newfstatat; the parent answers CONTINUE at once.
 *   gcc -O2 -o notif_floor notif_floor.c && ./notif_floor N SYNC READPATH
 * SYNC 1: SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP; READPATH 1: the parent reads
 * 256 bytes of the path with process_vm_readv first, as remora does.
 * Prints "sync=S readpath=R ns_per_stat X". */
#define _GNU_SOURCE
#include <linux/seccomp.h>
#include <linux/filter.h>
#include <linux/audit.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif
static int sendfd(int s, int fd) {
    char c = 0; struct iovec io = {&c, 1};
    char buf[CMSG_SPACE(sizeof(int))]; memset(buf, 0, sizeof buf);
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = buf, .msg_controllen = sizeof buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET; cm->cmsg_type = SCM_RIGHTS; cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    return sendmsg(s, &m, 0);
}
static int recvfd(int s) {
    char c; struct iovec io = {&c, 1};
    char buf[CMSG_SPACE(sizeof(int))];
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = buf, .msg_controllen = sizeof buf};
    if (recvmsg(s, &m, 0) < 0) return -1;
    int fd; memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof fd); return fd;
}
int main(int argc, char **argv) {
    long n = atol(argv[1]); int sync = atoi(argv[2]), readpath = atoi(argv[3]);
    int sv[2]; socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    pid_t pid = fork();
    if (pid == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_newfstatat, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
        struct sock_fprog p = {4, f};
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        int l = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &p);
        sendfd(sv[1], l); close(l);
        char c; read(sv[1], &c, 1);
        struct stat st; struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++) stat("/usr/bin/env", &st);
        clock_gettime(CLOCK_MONOTONIC, &b);
        char out[128];
        int len = snprintf(out, sizeof out, "sync=%d readpath=%d ns_per_stat %lld\n", sync, readpath,
               ((b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec)) / n);
        write(1, out, len);
        _exit(0);
    }
    int l = recvfd(sv[0]);
    if (sync && ioctl(l, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)) perror("SET_FLAGS");
    write(sv[0], "x", 1);
    for (long i = 0; i < n; i++) {
        struct seccomp_notif req; memset(&req, 0, sizeof req);
        if (ioctl(l, SECCOMP_IOCTL_NOTIF_RECV, &req)) { perror("recv"); break; }
        if (readpath) {
            char path[256]; struct iovec lo = {path, 256}, re = {(void *)req.data.args[1], 256};
            process_vm_readv(req.pid, &lo, 1, &re, 1, 0);
        }
        struct seccomp_notif_resp resp = {.id = req.id, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
        if (ioctl(l, SECCOMP_IOCTL_NOTIF_SEND, &resp)) { perror("send"); break; }
    }
    waitpid(pid, 0, 0);
    return 0;
}
