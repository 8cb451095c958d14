/* open(2) a file read-write, then fdopen it: stdio must read the file's
 * content (for a pod's file: through remora, not an empty placeholder),
 * write through the stream, and fclose must close the fd.
 * Used by tests/tests/io_local.rs. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    FILE *f = fdopen(fd, "r+");
    if (!f) {
        perror("fdopen");
        return 1;
    }
    /* fileno names the fd it was made from. */
    printf("fileno: %s\n", fileno(f) == fd ? "same" : "other");
    char line[256];
    if (!fgets(line, sizeof line, f)) {
        printf("no line\n");
        return 1;
    }
    printf("first line: %s", line);
    fseek(f, 0, SEEK_END);
    fputs("4,0.50\n", f);
    if (fclose(f) != 0) {
        perror("fclose");
        return 1;
    }
    printf("fd closed: %s\n", fcntl(fd, F_GETFD) < 0 ? "yes" : "no");
    return 0;
}
