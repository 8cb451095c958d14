/* sendmmsg/recvmmsg on an unconnected UDP socket: two datagrams to
 * 127.0.0.1:PORT in one sendmmsg, both replies in one recvmmsg (waiting up
 * to 10 s), each printed with its source. Used by tests/tests/run_local.rs. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 19053;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct timeval tv = {10, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    char *payloads[2] = {"one", "two"};
    struct iovec out_iov[2];
    struct mmsghdr out[2];
    memset(out, 0, sizeof out);
    for (int i = 0; i < 2; i++) {
        out_iov[i].iov_base = payloads[i];
        out_iov[i].iov_len = strlen(payloads[i]);
        out[i].msg_hdr.msg_iov = &out_iov[i];
        out[i].msg_hdr.msg_iovlen = 1;
        out[i].msg_hdr.msg_name = &to;
        out[i].msg_hdr.msg_namelen = sizeof to;
    }
    int sent = sendmmsg(s, out, 2, 0);
    printf("sent %d\n", sent);
    char bufs[2][64];
    struct iovec in_iov[2];
    struct sockaddr_in from[2];
    struct mmsghdr in[2];
    memset(in, 0, sizeof in);
    int got = 0;
    while (got < 2) {
        for (int i = got; i < 2; i++) {
            in_iov[i].iov_base = bufs[i];
            in_iov[i].iov_len = sizeof bufs[i] - 1;
            in[i].msg_hdr.msg_iov = &in_iov[i];
            in[i].msg_hdr.msg_iovlen = 1;
            in[i].msg_hdr.msg_name = &from[i];
            in[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        int n = recvmmsg(s, in + got, 2 - got, MSG_WAITFORONE, NULL);
        if (n <= 0) {
            perror("recvmmsg");
            return 1;
        }
        got += n;
    }
    /* The replies may come in either order: print them sorted. */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < 2; i++) {
            bufs[i][in[i].msg_len] = 0;
            if (strcmp(bufs[i] + 4, payloads[pass]) != 0)
                continue;
            char ip[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &from[i].sin_addr, ip, sizeof ip);
            printf("%s from %s:%d\n", bufs[i], ip, ntohs(from[i].sin_port));
        }
    }
    return 0;
}
