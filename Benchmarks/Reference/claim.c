/* A broker-style claim round trip, the floor for a claim: a holder process listens on a
 * SOCK_SEQPACKET Unix socket and holds a socket; a client connects, sends a 26-byte claim (as the
 * escrow protocol's), receives the descriptor with SCM_RIGHTS, closes it and the connection.
 * Prints p50/p99 of the client's round trip.
 *   claim COUNT */
#include "common.h"
#include <sys/un.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 20000;
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    snprintf(address.sun_path, sizeof(address.sun_path), "/tmp/sockshare-claim-%d.sock", getpid());
    int listener = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    unlink(address.sun_path);
    if (bind(listener, (struct sockaddr *)&address, sizeof(address)) != 0 || listen(listener, 128) != 0) return 1;
    int held = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    pid_t holder = fork();
    if (holder == 0) {
        char request[64];
        for (;;) {
            int connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
            if (connection < 0) continue;
            if (recv(connection, request, sizeof(request), 0) > 0) send_fds(connection, "\x01\x81", 2, &held, 1);
            close(connection);
        }
    }
    close(listener);
    uint64_t *samples = malloc(sizeof(uint64_t) * count);
    char claim[26] = {1, 1};
    for (int i = 0; i < count + 200; i++) {
        uint64_t start = now_ns();
        int client = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (connect(client, (struct sockaddr *)&address, sizeof(address)) != 0) { perror("connect"); return 2; }
        send(client, claim, sizeof(claim), MSG_NOSIGNAL);
        char reply[16];
        int fds[253], n;
        receive_fds(client, reply, sizeof(reply), fds, &n);
        for (int k = 0; k < n; k++) close(fds[k]);
        close(client);
        if (i >= 200) samples[i - 200] = now_ns() - start;
    }
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
    unlink(address.sun_path);
    print_percentiles(samples, count);
    return 0;
}
