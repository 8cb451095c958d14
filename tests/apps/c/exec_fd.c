/* exec_fd: a dynamically linked C program (it gets remora's LD_PRELOAD
 * layer) that replaces itself with a program named by an fd, for
 * tests/tests/seccomp_exec_local.rs:
 *   exec_fd fexecve PATH ARGV...          open(PATH, O_RDONLY|O_CLOEXEC), fexecve
 *   exec_fd execveat DIR NAME ARGV...     open(DIR, O_PATH|O_DIRECTORY|O_CLOEXEC),
 *                                         execveat(dirfd, NAME, ..., 0)
 *   exec_fd empty-path PATH ARGV...       open(PATH, O_PATH|O_CLOEXEC),
 *                                         execveat(fd, "", ..., AT_EMPTY_PATH)
 * ARGV starts with argv[0]. Exits 127 with the error if the exec fails. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *how = argv[1];
    if (!strcmp(how, "fexecve")) {
        int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
        if (fd < 0) { perror(argv[2]); return 127; }
        fexecve(fd, argv + 3, environ);
        perror("fexecve");
    } else if (!strcmp(how, "execveat") && argc >= 5) {
        int dir = open(argv[2], O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dir < 0) { perror(argv[2]); return 127; }
        execveat(dir, argv[3], argv + 4, environ, 0);
        perror("execveat");
    } else if (!strcmp(how, "empty-path")) {
        int fd = open(argv[2], O_PATH | O_CLOEXEC);
        if (fd < 0) { perror(argv[2]); return 127; }
        execveat(fd, "", argv + 3, environ, AT_EMPTY_PATH);
        perror("execveat");
    } else {
        return 2;
    }
    return 127;
}
