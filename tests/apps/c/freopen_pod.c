/* freopen(3) onto the standard streams: stdin from a file, stdout to a
 * file, as programs that redirect themselves do. For a pod's files the
 * same FILE objects must read and write the pod's files.
 * Usage: freopen_pod IN OUT RW. Used by tests/tests/io_local.rs. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        return 2;
    }
    /* A read-write reopen of a pod file is refused (with a warning). */
    FILE *scratch = fopen("/dev/null", "r");
    FILE *rw = freopen(argv[3], "r+", scratch);
    fprintf(stderr, "rw: %s\n", rw ? "reopened" : strerror(errno));
    if (!freopen(argv[1], "r", stdin)) {
        perror("freopen stdin");
        return 1;
    }
    char line[256];
    int lines = 0;
    char first[256] = "";
    while (fgets(line, sizeof line, stdin)) {
        if (lines++ == 0) {
            strcpy(first, line);
        }
    }
    if (!freopen(argv[2], "w", stdout)) {
        perror("freopen stdout");
        return 1;
    }
    printf("lines=%d first=%s", lines, first);
    if (fclose(stdout) != 0) {
        perror("fclose");
        return 1;
    }
    fprintf(stderr, "done\n");
    return 0;
}
