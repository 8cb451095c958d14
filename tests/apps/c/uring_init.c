/* Create an io_uring ring with liburing (declared here: no liburing
 * headers are installed, only the library) and print the result.
 * Used by tests/tests/io_local.rs. */
#include <stdio.h>
#include <string.h>

int io_uring_queue_init(unsigned entries, void *ring, unsigned flags);
void io_uring_queue_exit(void *ring);

int main(void) {
    /* struct io_uring is about 216 bytes in liburing 2.x. */
    static char ring[4096];
    int rc = io_uring_queue_init(8, ring, 0);
    if (rc < 0) {
        printf("io_uring_queue_init: %s\n", strerror(-rc));
        return 0;
    }
    io_uring_queue_exit(ring);
    printf("io_uring_queue_init: ok\n");
    return 0;
}
