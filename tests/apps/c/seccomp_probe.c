/* seccomp_probe: a statically linked C program (gcc -static) that prints
 * what it sees, for tests/tests/seccomp_local.rs. LD_PRELOAD cannot reach
 * it; remora's seccomp supervisor can.
 *   seccomp_probe cat PATH | ls DIR | stat PATH | fstat FD | write1 FD | get IP PORT PATH |
 *                 env NAME
 *   seccomp_probe link PATH (open read-only; prints the fd's /proc/self/fd link,
 *                           then the content read from it)
 *   seccomp_probe hold DIR [kill]  (lists DIR like ls, prints "ready", then
 *                           waits for a signal, or with "kill" SIGKILLs itself)
 *   seccomp_probe uring x   (io_uring_setup: prints "ok" or the error)
 *   seccomp_probe netns IP PORT (a TCP connect, then whether the socket lives
 *                                in this process's network namespace:
 *                                "socket netns: own" or "socket netns: other")
 *   seccomp_probe unfaithful PATH  (what remora cannot emulate on a pod file:
 *                                  an O_PATH open, then an O_RDWR open with a
 *                                  writable shared mmap and a fallocate of it;
 *                                  prints "NAME: ok" or "NAME: <strerror>" each)
 *   seccomp_probe rdwr PATH TEXT   (O_RDWR: pwrite "#" at 0, write TEXT at
 *                                  the end, writev TEXT "!\n" on a dup,
 *                                  ftruncate off the last byte, fsync,
 *                                  print the content read back)
 *   seccomp_probe rdwr-end PATH TEXT  (O_RDWR: pwrite TEXT at the end; prints the
 *                                  size before and after, the 4 bytes in the
 *                                  middle as numbers, and TEXT read back)
 *   seccomp_probe serve PORT LOG   (HTTP on 0.0.0.0:PORT with a *blocking*
 *                                  accept: answers "answer from the laptop",
 *                                  appends "PATH PEER_IP GETPEERNAME_IP" to
 *                                  LOG: accept's peer, then getpeername's)
 *   seccomp_probe udp IP PORT TEXT (an unconnected UDP socket: sendto, a
 *                                  blocking recvfrom; prints "REPLY from IP:PORT")
 *   seccomp_probe udpmsg IP PORT TEXT  (the same with sendmsg and recvmsg)
 *   seccomp_probe bench N COMMAND ARG...   (N times, output discarded; prints
 *                                          "ns_per_op X" on stderr) */
#define _GNU_SOURCE
#include <time.h>
#include <signal.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <errno.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>

static int cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A one-request-per-connection HTTP server, blocking accept (as simple C
 * servers do), logging the peer accept(2) reported. */
static int serve(int port, const char *log) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(s, (struct sockaddr *)&sa, sizeof sa) || listen(s, 64)) { perror("listen"); return 1; }
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        int c = accept(s, (struct sockaddr *)&peer, &len);
        if (c < 0) { perror("accept"); return 1; }
        char req[8192], path[1024] = "?", ip[64] = "?";
        size_t got = 0;
        ssize_t n;
        while (got < sizeof req - 1 && (n = read(c, req + got, sizeof req - 1 - got)) > 0) {
            got += n;
            req[got] = 0;
            if (strstr(req, "\r\n\r\n")) break;
        }
        req[got] = 0;
        sscanf(req, "%*s %1023s", path);
        inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
        struct sockaddr_in named;
        socklen_t named_len = sizeof named;
        char named_ip[64] = "?";
        if (!getpeername(c, (struct sockaddr *)&named, &named_len))
            inet_ntop(AF_INET, &named.sin_addr, named_ip, sizeof named_ip);
        FILE *f = fopen(log, "a");
        if (f) { fprintf(f, "%s %s %s\n", path, ip, named_ip); fclose(f); }
        const char *resp = "HTTP/1.0 200 OK\r\nContent-Length: 23\r\nConnection: close\r\n\r\n"
                           "answer from the laptop\n";
        if (write(c, resp, strlen(resp)) < 0) perror("write");
        close(c);
    }
}

/* One datagram to IP:PORT from an unconnected socket and its answer, with
 * sendto/recvfrom or (msg) sendmsg/recvmsg; blocking. */
static int udp(const char *ip, int port, const char *text, int msg) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)}, from;
    inet_pton(AF_INET, ip, &to.sin_addr);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    char out[512], buf[2048], src[64] = "?";
    int len = snprintf(out, sizeof out, "%s\n", text);
    socklen_t flen = sizeof from;
    ssize_t n;
    if (msg) {
        struct iovec iov[2] = {{out, 3}, {out + 3, len - 3}};
        struct msghdr m = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = iov, .msg_iovlen = 2};
        if (sendmsg(s, &m, 0) != len) { perror("sendmsg"); close(s); return 1; }
        struct iovec in = {buf, sizeof buf - 1};
        struct msghdr r = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &in, .msg_iovlen = 1};
        n = recvmsg(s, &r, 0);
        flen = r.msg_namelen;
    } else {
        if (sendto(s, out, len, 0, (struct sockaddr *)&to, sizeof to) != len) { perror("sendto"); close(s); return 1; }
        n = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &flen);
    }
    if (n < 0) { perror("recv"); close(s); return 1; }
    while (n > 0 && buf[n - 1] == '\n') n--;
    buf[n] = 0;
    if (flen >= sizeof from) inet_ntop(AF_INET, &from.sin_addr, src, sizeof src);
    printf("%s from %s:%d\n", buf, src, ntohs(from.sin_port));
    close(s);
    return 0;
}

static int run1(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *cmd = argv[1], *arg = argv[2];
    if (!strcmp(cmd, "env")) {
        const char *v = getenv(arg);
        printf("%s\n", v ? v : "");
    } else if (!strcmp(cmd, "cat")) {
        FILE *f = fopen(arg, "r");
        if (!f) { perror(arg); return 1; }
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
        fclose(f);
    } else if (!strcmp(cmd, "link")) {
        int fd = open(arg, O_RDONLY);
        if (fd < 0) { perror(arg); return 1; }
        char proc[64], link[4096], buf[4096];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(proc, link, sizeof link - 1);
        if (n < 0) { perror(proc); return 1; }
        link[n] = 0;
        printf("%s\n", link);
        while ((n = read(fd, buf, sizeof buf)) > 0) fwrite(buf, 1, n, stdout);
        close(fd);
    } else if (!strcmp(cmd, "hold")) {
        DIR *d = opendir(arg);
        if (!d) { perror(arg); return 1; }
        int count = 0;
        while (readdir(d)) count++;
        closedir(d);
        printf("ready %d\n", count);
        fflush(stdout);
        if (argc >= 4 && !strcmp(argv[3], "kill")) raise(SIGKILL);
        for (;;) pause();
    } else if (!strcmp(cmd, "ls")) {
        DIR *d = opendir(arg);
        if (!d) { perror(arg); return 1; }
        char *names[256];
        int count = 0;
        struct dirent *e;
        while ((e = readdir(d)) && count < 256)
            if (e->d_name[0] != '.') names[count++] = strdup(e->d_name);
        closedir(d);
        qsort(names, count, sizeof names[0], cmp);
        for (int i = 0; i < count; i++) printf("%s%s", i ? " " : "", names[i]);
        printf("\n");
    } else if (!strcmp(cmd, "rdwr") && argc >= 4) {
        /* O_RDWR through every call the supervisor keeps in step: pwrite,
         * write at the end, writev on a dup, ftruncate, fsync; prints the
         * content read back through the fd. */
        int fd = open(arg, O_RDWR | O_CLOEXEC);
        if (fd < 0) { perror(arg); return 1; }
        const char *text = argv[3];
        struct iovec iov[2] = {{(void *)text, strlen(text)}, {(void *)"!\n", 2}};
        char buf[8192];
        if (pwrite(fd, "#", 1, 0) != 1 || lseek(fd, 0, SEEK_END) < 0
            || write(fd, text, strlen(text)) < 0) { perror("write"); return 1; }
        int copy = dup(fd);
        if (copy < 0 || writev(copy, iov, 2) < 0) { perror("dup+writev"); return 1; }
        off_t end = lseek(fd, 0, SEEK_CUR);
        if (ftruncate(fd, end - 1) || fsync(fd)) { perror("ftruncate"); return 1; }
        ssize_t n = pread(copy, buf, sizeof buf, 0);
        if (n < 0) { perror("pread"); return 1; }
        fwrite(buf, 1, n, stdout);
        close(copy);
        close(fd);
    } else if (!strcmp(cmd, "rdwr-end") && argc >= 4) {
        int fd = open(arg, O_RDWR | O_CLOEXEC);
        if (fd < 0) { perror(arg); return 1; }
        struct stat before, after;
        const char *text = argv[3];
        ssize_t n = strlen(text);
        unsigned char mid[4] = {9, 9, 9, 9};
        char back[256] = {0};
        if (fstat(fd, &before) || pwrite(fd, text, n, before.st_size) != n) { perror("pwrite"); return 1; }
        if (pread(fd, mid, 4, before.st_size / 2) != 4 || pread(fd, back, n, before.st_size) != n
            || fstat(fd, &after)) { perror("pread"); return 1; }
        printf("%lld %lld %d%d%d%d %s\n", (long long)before.st_size, (long long)after.st_size,
               mid[0], mid[1], mid[2], mid[3], back);
        close(fd);
    } else if (!strcmp(cmd, "netns") && argc >= 4) {
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        inet_pton(AF_INET, arg, &to.sin_addr);
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(s, (struct sockaddr *)&to, sizeof to)) { perror("connect"); return 1; }
        int ns = ioctl(s, SIOCGSKNS);
        struct stat theirs, ours;
        if (ns < 0 || fstat(ns, &theirs) || stat("/proc/self/ns/net", &ours)) { perror("netns"); return 1; }
        int cloexec = fcntl(s, F_GETFD) & FD_CLOEXEC;
        printf("socket netns: %s, close-on-exec: %s\n", theirs.st_ino == ours.st_ino ? "own" : "other",
               cloexec ? "yes" : "no");
    } else if (!strcmp(cmd, "unfaithful")) {
        int fd = open(arg, O_PATH);
        printf("o_path: %s\n", fd >= 0 ? "ok" : strerror(errno));
        if (fd >= 0) close(fd);
        fd = open(arg, O_RDWR);
        if (fd < 0) { perror(arg); return 1; }
        void *at = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        printf("shared mmap: %s\n", at != MAP_FAILED ? "ok" : strerror(errno));
        printf("fallocate: %s\n", fallocate(fd, 0, 0, 8192) == 0 ? "ok" : strerror(errno));
        close(fd);
    } else if (!strcmp(cmd, "uring")) {
        unsigned char params[120] = {0}; /* struct io_uring_params */
        long fd = syscall(SYS_io_uring_setup, 4, params);
        if (fd < 0) { printf("%s\n", strerror(errno)); return 0; }
        close(fd);
        printf("ok\n");
    } else if (!strcmp(cmd, "write1")) {
        /* one byte to fd ARG (a plain write(2), never a remote file) */
        if (write(atoi(arg), "x", 1) != 1) { perror("write"); return 1; }
    } else if (!strcmp(cmd, "fstat")) {
        /* fstat of an open fd (glibc: newfstatat(fd, "", AT_EMPTY_PATH)). */
        struct stat st;
        if (fstat(atoi(arg), &st)) { perror("fstat"); return 1; }
        printf("%lld\n", (long long)st.st_size);
    } else if (!strcmp(cmd, "stat")) {
        struct stat st;
        if (stat(arg, &st)) { perror(arg); return 1; }
        printf("%lld %d\n", (long long)st.st_size, S_ISDIR(st.st_mode) ? 1 : 0);
    } else if ((!strcmp(cmd, "udp") || !strcmp(cmd, "udpmsg")) && argc >= 5) {
        return udp(arg, atoi(argv[3]), argv[4], !strcmp(cmd, "udpmsg"));
    } else if (!strcmp(cmd, "get") && argc >= 5) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        inet_pton(AF_INET, arg, &sa.sin_addr);
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&sa, sizeof sa)) { perror("connect"); return 1; }
        char req[512];
        int len = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: probe\r\n\r\n", argv[4]);
        if (write(s, req, len) != len) return 1;
        char buf[8192];
        size_t total = 0;
        ssize_t n;
        while ((n = read(s, buf + total, sizeof buf - 1 - total)) > 0) total += n;
        buf[total] = 0;
        char *body = strstr(buf, "\r\n\r\n");
        if (!body) return 1;
        fputs(body + 4, stdout);
    } else {
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && !strcmp(argv[1], "serve")) return serve(atoi(argv[2]), argv[3]);
    if (argc >= 4 && !strcmp(argv[1], "bench")) {
        long n = atol(argv[2]);
        if (!freopen("/dev/null", "w", stdout)) return 1;
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++)
            if (run1(argc - 2, argv + 2)) return 1;
        clock_gettime(CLOCK_MONOTONIC, &b);
        long long ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
        fprintf(stderr, "ns_per_op %lld\n", ns / n);
        return 0;
    }
    return run1(argc, argv);
}
