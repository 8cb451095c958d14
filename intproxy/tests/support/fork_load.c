/* A multithreaded program that forks under load, for the layer's fork tests.
 *
 * usage: fork_load POD_FILE POD_NAME POD_DIR FORKS THREADS
 *
 * THREADS threads loop reading POD_FILE, resolving POD_NAME and listing
 * POD_DIR (so the layer's fd table, directory table, hostname cache and
 * connections are busy at every fork). Meanwhile the main thread forks FORKS
 * times; each child opens POD_FILE, checks it is not empty, resolves POD_NAME
 * and exits. The parent gives every child 10 s, kills the ones that hang and
 * prints one line: "forks N ok K hung H failed F". Exit status 0 only when
 * every child finished successfully.
 *
 * vfork mode: fork_load --vfork. Checks that the parent of vfork resumes only
 * after the child exec'd or exited: the child writes a byte to a pipe after a
 * pause and exits; the parent reads that pipe without blocking right after
 * vfork returns. Prints "vfork waited" or "vfork did not wait".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *pod_file, *pod_name, *pod_dir;
static atomic_int stop;
static atomic_long thread_rounds, thread_errors;

static int read_file(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    char buf[256];
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    return n > 0 ? 0 : -1;
}

static int resolve(const char *name) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(name, "80", &hints, &res);
    if (rc != 0) return -1;
    freeaddrinfo(res);
    return 0;
}

static int list_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n > 0 ? 0 : -1;
}

static void *worker(void *arg) {
    (void)arg;
    while (!atomic_load(&stop)) {
        if (read_file(pod_file) || resolve(pod_name) || list_dir(pod_dir))
            atomic_fetch_add(&thread_errors, 1);
        atomic_fetch_add(&thread_rounds, 1);
    }
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* 0: exited 0; 1: exited otherwise; 2: still running after `secs` (killed). */
static int reap(pid_t pid, double secs) {
    double deadline = now() + secs;
    for (;;) {
        int status;
        pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid) return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
        if (got < 0 && errno != EINTR) return 1;
        if (now() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 2;
        }
        usleep(2000);
    }
}

static int vfork_mode(void) {
    int marker[2];
    if (pipe(marker) != 0) return 2;
    pid_t pid = vfork();
    if (pid < 0) return 2;
    if (pid == 0) {
        usleep(300 * 1000);
        if (write(marker[1], "x", 1) != 1) _exit(3);
        _exit(0);
    }
    /* The byte is there already if (and only if) the parent waited. */
    fcntl(marker[0], F_SETFL, O_NONBLOCK);
    char c;
    ssize_t n = read(marker[0], &c, 1);
    int status = 0;
    waitpid(pid, &status, 0);
    printf("vfork %s\n", n == 1 ? "waited" : "did not wait");
    /* And a vfork child that execs: the parent resumes, the exec succeeds. */
    pid = vfork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", "exit 7", (char *)NULL);
        _exit(127);
    }
    waitpid(pid, &status, 0);
    printf("exec child exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return n == 1 ? 0 : 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 2 && strcmp(argv[1], "--vfork") == 0) return vfork_mode();
    if (argc != 6) {
        fprintf(stderr, "usage: %s POD_FILE POD_NAME POD_DIR FORKS THREADS\n", argv[0]);
        return 2;
    }
    pod_file = argv[1];
    pod_name = argv[2];
    pod_dir = argv[3];
    int forks = atoi(argv[4]), threads = atoi(argv[5]);
    pthread_t tids[64];
    if (threads > 64) threads = 64;
    for (int i = 0; i < threads; i++) pthread_create(&tids[i], NULL, worker, NULL);
    /* Let the threads get going before the first fork. */
    while (atomic_load(&thread_rounds) < threads) usleep(1000);
    int ok = 0, hung = 0, failed = 0;
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            failed++;
            continue;
        }
        if (pid == 0) {
            int rc = read_file(pod_file) ? 3 : resolve(pod_name) ? 4 : 0;
            _exit(rc);
        }
        switch (reap(pid, 10.0)) {
        case 0: ok++; break;
        case 1: failed++; break;
        default: hung++; break;
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);
    printf("forks %d ok %d hung %d failed %d\n", forks, ok, hung, failed);
    printf("thread rounds %ld errors %ld\n", atomic_load(&thread_rounds),
           atomic_load(&thread_errors));
    return ok == forks && atomic_load(&thread_errors) == 0 ? 0 : 1;
}
