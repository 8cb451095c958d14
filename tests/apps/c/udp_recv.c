/* udp_recv: receives on an unconnected UDP socket the way C programs do,
 * for tests/tests/seccomp_sockets_local.rs (built with gcc -static, so it
 * runs under remora's seccomp supervisor). Every receive is blocking; an
 * alarm ends a program that would otherwise hang.
 *   udp_recv timeout IP DEAD_PORT LIVE_PORT
 *       SO_RCVTIMEO 1 s; a datagram to DEAD_PORT (nothing answers) and a
 *       recvfrom: prints "timed out: <strerror>"; then one to LIVE_PORT:
 *       prints "REPLY from IP:PORT".
 *   udp_recv mmsg IP PORT N
 *       N datagrams "m0".."m<N-1>" to IP:PORT, then ONE blocking recvmmsg
 *       of N messages (no MSG_WAITFORONE: the kernel waits for all N):
 *       prints "one call: K", then each reply with its source, sorted;
 *       then a MSG_DONTWAIT recvmmsg with nothing pending: "then: <strerror>";
 *       then 2 more datagrams and a recvmmsg of 3 with SO_RCVTIMEO 1 s:
 *       "timeout: K" (the third never comes).
 *   udp_recv interrupt IP PORT MS
 *       a round trip to IP:PORT (the socket gets its route), then blocking
 *       recvfroms (no timeout) with nothing coming while another thread
 *       sends SIGUSR2 after MS ms: to this thread, the handler without
 *       SA_RESTART: "plain: <strerror>, handler ran 1"; the same with
 *       SA_RESTART, and "late" sent to IP:PORT after another MS ms: the call
 *       restarts and gets its reply: "restart: pod got late, handler ran 2";
 *       to the process (kill), without SA_RESTART: "process: <strerror>,
 *       handler ran 3".
 *   udp_recv die IP PORT SECS
 *       a round trip to IP:PORT, then a blocking recvfrom with nothing
 *       coming and alarm(SECS) with SIGALRM's default action: the program
 *       ends by SIGALRM, printing only "waiting".
 *   udp_recv signals IP PORT N
 *       N request/reply rounds (a blocking recvfrom each, SO_RCVTIMEO 5 s,
 *       retried on EINTR) while another thread sends the receiving thread
 *       SIGUSR1 (a handler without SA_RESTART) every 100 µs: prints
 *       "replies R of N". After 50 interrupted receives in one round the
 *       signals pause until that round's reply is in: on a kernel without
 *       SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV a notified receive that
 *       cannot finish between two signals (a loaded machine: the
 *       supervisor answers in more than 100 µs) would otherwise be retried
 *       for ever, where the kernel returns a pending datagram at once. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr(const char *ip, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static void rcvtimeo(int s, int sec) {
    struct timeval tv = {sec, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

/* Receives and sends interrupted in the current round of `signals`. */
static volatile int round_interrupted;

/* (Retried on EINTR: under the supervisor a signal can interrupt it.) */
static int send_to(int s, struct sockaddr_in *to, const char *text) {
    ssize_t n;
    do n = sendto(s, text, strlen(text), 0, (struct sockaddr *)to, sizeof *to);
    while (n < 0 && errno == EINTR && ++round_interrupted);
    return n == (ssize_t)strlen(text);
}

static void print_from(const char *buf, struct sockaddr_in *from) {
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &from->sin_addr, ip, sizeof ip);
    printf("%s from %s:%d\n", buf, ip, ntohs(from->sin_port));
}

/* One reply into buf (trailing newline cut); -1 with errno on failure. */
static ssize_t reply(int s, char *buf, size_t len, struct sockaddr_in *from) {
    socklen_t flen = sizeof *from;
    ssize_t n = recvfrom(s, buf, len - 1, 0, (struct sockaddr *)from, &flen);
    if (n < 0) return -1;
    while (n > 0 && buf[n - 1] == '\n') n--;
    buf[n] = 0;
    return n;
}

static int timeout(const char *ip, int dead, int live) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    rcvtimeo(s, 1);
    struct sockaddr_in to = addr(ip, dead), from;
    char buf[512];
    if (!send_to(s, &to, "anyone?\n")) { perror("sendto"); return 1; }
    if (reply(s, buf, sizeof buf, &from) >= 0) { print_from(buf, &from); return 1; }
    printf("timed out: %s\n", strerror(errno));
    to = addr(ip, live);
    if (!send_to(s, &to, "ping\n")) { perror("sendto"); return 1; }
    if (reply(s, buf, sizeof buf, &from) < 0) { perror("recvfrom"); return 1; }
    print_from(buf, &from);
    return 0;
}

#define MAXN 16

static int cmp(const void *a, const void *b) { return strcmp((const char *)a, (const char *)b); }

/* recvmmsg of up to n messages into bufs; sources printed with each. */
static int mmsg_recv(int s, int n, int flags, char bufs[][128], char lines[][192]) {
    struct mmsghdr in[MAXN];
    struct iovec iov[MAXN];
    struct sockaddr_in from[MAXN];
    memset(in, 0, sizeof in);
    for (int i = 0; i < n; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = 127;
        in[i].msg_hdr.msg_iov = &iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
        in[i].msg_hdr.msg_name = &from[i];
        in[i].msg_hdr.msg_namelen = sizeof from[i];
    }
    int got = recvmmsg(s, in, n, flags, NULL);
    for (int i = 0; i < got; i++) {
        unsigned len = in[i].msg_len;
        while (len > 0 && bufs[i][len - 1] == '\n') len--;
        bufs[i][len] = 0;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &from[i].sin_addr, ip, sizeof ip);
        snprintf(lines[i], 192, "%s from %s:%d", bufs[i], ip, ntohs(from[i].sin_port));
    }
    return got;
}

static int mmsg(const char *ip, int port, int n) {
    if (n < 1 || n > MAXN - 1) return 2;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    rcvtimeo(s, 20);
    struct sockaddr_in to = addr(ip, port);
    char text[32], bufs[MAXN][128], lines[MAXN][192];
    for (int i = 0; i < n; i++) {
        snprintf(text, sizeof text, "m%d\n", i);
        if (!send_to(s, &to, text)) { perror("sendto"); return 1; }
    }
    int got = mmsg_recv(s, n, 0, bufs, lines);
    if (got < 0) { perror("recvmmsg"); return 1; }
    printf("one call: %d\n", got);
    qsort(lines, got, sizeof lines[0], cmp);
    for (int i = 0; i < got; i++) printf("%s\n", lines[i]);
    got = mmsg_recv(s, n, MSG_DONTWAIT, bufs, lines);
    printf("then: %s\n", got < 0 ? strerror(errno) : "a datagram");
    rcvtimeo(s, 1);
    send_to(s, &to, "t0\n");
    send_to(s, &to, "t1\n");
    got = mmsg_recv(s, 3, 0, bufs, lines);
    if (got < 0) { perror("recvmmsg"); return 1; }
    printf("timeout: %d\n", got);
    return 0;
}

static volatile int done;
static volatile long interrupted;
static volatile int round_no;
/* The signals pause once a round has had this many interrupted calls. */
#define ROUND_SIGNALS 50
static volatile long lost;
static void on_usr1(int sig) { (void)sig; }

/* SIGALRM in `signals` mode: say how far it got before the default
 * action ends the program (write(2) only: async-signal-safe). */
static void on_alarm(int sig) {
    char line[160];
    int n = snprintf(line, sizeof line, "alarm: round %d, %ld receives interrupted, %ld replies timed out\n",
                     round_no, interrupted, lost);
    if (n > 0) write(2, line, n);
    signal(sig, SIG_DFL);
    raise(sig);
}

struct rounds { const char *ip; int port, n, replies; };

static volatile int pokes;
static void on_usr2(int sig) { (void)sig; pokes++; }

/* After `ms` ms: SIGUSR2 to thread `target` (or to the whole process), and
 * with `s` set, "late" sent to `to` after as long again. */
struct poke { pthread_t target; int process, ms, s; struct sockaddr_in to; };

static void sleep_ms(int ms) {
    struct timespec wait = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&wait, NULL);
}

static void *poke(void *arg) {
    struct poke *p = arg;
    sleep_ms(p->ms);
    if (p->process) kill(getpid(), SIGUSR2);
    else pthread_kill(p->target, SIGUSR2);
    if (p->s >= 0) {
        sleep_ms(p->ms);
        send_to(p->s, &p->to, "late\n");
    }
    return NULL;
}

/* One blocking receive on `s` while a poke thread signals; prints what it got. */
static void poked(const char *what, int s, struct poke *p, int flags) {
    struct sigaction sa = {.sa_handler = on_usr2, .sa_flags = flags};
    sigaction(SIGUSR2, &sa, NULL);
    p->target = pthread_self();
    pthread_t t;
    pthread_create(&t, NULL, poke, p);
    struct sockaddr_in from;
    char buf[512];
    ssize_t n = reply(s, buf, sizeof buf, &from);
    const char *got = n < 0 ? strerror(errno) : buf;
    pthread_join(t, NULL);
    printf("%s: %s, handler ran %d\n", what, got, pokes);
}

/* A socket that has made one round trip to IP:PORT (so the supervisor
 * routes it), its peer in *to; -1 on failure. */
static int routed(const char *ip, int port, struct sockaddr_in *to) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in from;
    char buf[512];
    *to = addr(ip, port);
    if (!send_to(s, to, "first\n") || reply(s, buf, sizeof buf, &from) < 0) {
        perror("first round trip");
        return -1;
    }
    return s;
}

static int die(const char *ip, int port, int secs) {
    struct sockaddr_in to, from;
    char buf[512];
    int s = routed(ip, port, &to);
    if (s < 0) return 1;
    printf("waiting\n");
    alarm(secs);
    reply(s, buf, sizeof buf, &from);
    printf("not ended: %s\n", strerror(errno));
    return 1;
}

static int interrupt(const char *ip, int port, int ms) {
    struct sockaddr_in to;
    int s = routed(ip, port, &to);
    if (s < 0) return 1;
    struct poke plain = {.ms = ms, .s = -1};
    poked("plain", s, &plain, 0);
    struct poke restart = {.ms = ms, .s = s, .to = to};
    poked("restart", s, &restart, SA_RESTART);
    struct poke process = {.process = 1, .ms = ms, .s = -1};
    poked("process", s, &process, 0);
    return 0;
}

static void *receiver(void *arg) {
    struct rounds *r = arg;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    rcvtimeo(s, 5);
    struct sockaddr_in to = addr(r->ip, r->port), from;
    char text[32], want[48], buf[512];
    for (int i = 0; i < r->n; i++) {
        round_no = i;
        snprintf(text, sizeof text, "s%d\n", i);
        snprintf(want, sizeof want, "pod got s%d", i);
        if (!send_to(s, &to, text)) { perror("sendto"); break; }
        for (;;) {
            if (reply(s, buf, sizeof buf, &from) < 0) {
                if (errno == EINTR) { interrupted++; round_interrupted++; continue; }
                lost++;
                round_interrupted = 0;
                break; /* timed out: this reply is lost */
            }
            if (!strcmp(buf, want)) { r->replies++; round_interrupted = 0; break; }
        }
    }
    done = 1;
    return NULL;
}

static int signals(const char *ip, int port, int n) {
    struct sigaction sa = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &sa, NULL); /* no SA_RESTART: receives fail with EINTR */
    signal(SIGALRM, on_alarm);
    struct rounds r = {ip, port, n, 0};
    pthread_t t;
    pthread_create(&t, NULL, receiver, &r);
    struct timespec gap = {0, 100000};
    while (!done) {
        if (round_interrupted < ROUND_SIGNALS) pthread_kill(t, SIGUSR1);
        nanosleep(&gap, NULL);
    }
    pthread_join(t, NULL);
    fprintf(stderr, "EINTR %ld times\n", interrupted);
    printf("replies %d of %d\n", r.replies, n);
    return 0;
}

int main(int argc, char **argv) {
    alarm(120);
    if (argc < 5) return 2;
    const char *cmd = argv[1], *ip = argv[2];
    int port = atoi(argv[3]), arg = atoi(argv[4]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(cmd, "timeout")) return timeout(ip, port, arg);
    if (!strcmp(cmd, "mmsg")) return mmsg(ip, port, arg);
    if (!strcmp(cmd, "signals")) return signals(ip, port, arg);
    if (!strcmp(cmd, "interrupt")) return interrupt(ip, port, arg);
    if (!strcmp(cmd, "die")) return die(ip, port, arg);
    return 2;
}
