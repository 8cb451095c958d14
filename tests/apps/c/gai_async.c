/* getaddrinfo_a(3): one GAI_WAIT batch, then one GAI_NOWAIT request
 * waited for with gai_suspend and read with gai_error.
 * Usage: gai_async NAME1 NAME2 NAME3. Used by tests/tests/dns_local.rs. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static void show(struct gaicb *cb) {
    int rc = gai_error(cb);
    if (rc != 0) {
        printf("%s: %s\n", cb->ar_name, gai_strerror(rc));
        return;
    }
    char text[64] = "";
    struct addrinfo *ai = cb->ar_result;
    struct sockaddr_in *sin = (struct sockaddr_in *)ai->ai_addr;
    inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text);
    printf("%s: %s\n", cb->ar_name, text);
    freeaddrinfo(cb->ar_result);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        return 2;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    struct gaicb a = {.ar_name = argv[1], .ar_request = &hints};
    struct gaicb b = {.ar_name = argv[2], .ar_request = &hints};
    struct gaicb *batch[] = {&a, &b};
    if (getaddrinfo_a(GAI_WAIT, batch, 2, NULL) != 0) {
        printf("GAI_WAIT failed\n");
    }
    show(&a);
    show(&b);

    struct gaicb c = {.ar_name = argv[3], .ar_request = &hints};
    struct gaicb *one[] = {&c};
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_NONE;
    if (getaddrinfo_a(GAI_NOWAIT, one, 1, &sev) != 0) {
        printf("GAI_NOWAIT failed\n");
        return 1;
    }
    const struct gaicb *wait[] = {&c};
    while (gai_error(&c) == EAI_INPROGRESS) {
        gai_suspend(wait, 1, NULL);
    }
    show(&c);
    return 0;
}
