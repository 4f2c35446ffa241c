/* A broker-style claim round trip, the floor for a claim: a holder process listens on a
 * SOCK_SEQPACKET Unix socket and holds a socket; a client connects, sends a 26-byte claim (as the
 * escrow protocol's), receives the descriptor with SCM_RIGHTS, closes it and the connection.
 * Prints p50/p99 of the client's round trip.
 *   claim COUNT          the bare exchange
 *   claim COUNT safe     the same checks as SocketShare's broker and claimant, in C: the holder reads
 *                        the claimant's SO_PEERCRED and SO_PEERPIDFD (and the pidfd's pidfs inode),
 *                        compares the secret, sends the descriptor and waits for the acknowledgement;
 *                        the client checks what arrived (fstat, SO_DOMAIN, SO_TYPE) and acknowledges.
 *   claim COUNT [safe] pin
 *                        the holder on CPU 0, the client on CPU 1, as `sockshare-bench roundtrip --pin`
 *                        places its processes: every exchange crosses CPUs, the same way each run. */
#include "common.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 20000;
    int safe = 0, pin = 0;
    for (int k = 2; k < argc; k++) {
        if (strcmp(argv[k], "safe") == 0) safe = 1;
        if (strcmp(argv[k], "pin") == 0) pin = 1;
    }
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    snprintf(address.sun_path, sizeof(address.sun_path), "/tmp/sockshare-claim-%d.sock", getpid());
    int listener = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    unlink(address.sun_path);
    if (bind(listener, (struct sockaddr *)&address, sizeof(address)) != 0 || listen(listener, 128) != 0) return 1;
    int held = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    pid_t holder = fork();
    if (holder == 0) {
        if (pin) pin_to(0);
        char request[64];
        for (;;) {
            int connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
            if (connection < 0) continue;
            if (!safe) {
                if (recv(connection, request, sizeof(request), 0) > 0) send_fds(connection, "\x01\x81", 2, &held, 1);
                close(connection);
                continue;
            }
            struct ucred credentials;
            socklen_t length = sizeof credentials;
            int pidfd = -1;
            socklen_t pidfd_length = sizeof pidfd;
            struct statfs filesystem;
            struct stat status;
            static const char secret[16] = {0};
            getsockopt(connection, SOL_SOCKET, SO_PEERCRED, &credentials, &length);
            getsockopt(connection, SOL_SOCKET, 77 /* SO_PEERPIDFD */, &pidfd, &pidfd_length);
            if (pidfd >= 0) { fstatfs(pidfd, &filesystem); fstat(pidfd, &status); }
            ssize_t got = recv(connection, request, sizeof(request), 0);
            unsigned char difference = 0;
            for (int k = 0; k < 16 && got >= 26; k++) difference |= (unsigned char)request[10 + k] ^ (unsigned char)secret[k];
            if (got >= 26 && difference == 0 && credentials.uid == getuid()) {
                int copy = fcntl(held, F_DUPFD_CLOEXEC, 0);
                send_fds(connection, "\x01\x81", 2, &copy, 1);
                recv(connection, request, sizeof(request), 0);  /* the acknowledgement */
                close(copy);
            }
            close(connection);
            if (pidfd >= 0) close(pidfd);
        }
    }
    close(listener);
    if (pin) pin_to(1);
    uint64_t *samples = malloc(sizeof(uint64_t) * count);
    char claim[26] = {1, 1};  /* version 1, claim; share id and a zero secret */
    for (int i = 0; i < count + 200; i++) {
        uint64_t start = now_ns();
        int client = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (connect(client, (struct sockaddr *)&address, sizeof(address)) != 0) { perror("connect"); return 2; }
        send(client, claim, sizeof(claim), MSG_NOSIGNAL);
        char reply[16];
        int fds[253], n;
        receive_fds(client, reply, sizeof(reply), fds, &n);
        if (safe && n == 1) {
            struct stat status;
            int domain, type;
            socklen_t length = sizeof(int);
            if (fstat(fds[0], &status) < 0 || getsockopt(fds[0], SOL_SOCKET, SO_DOMAIN, &domain, &length) < 0 ||
                getsockopt(fds[0], SOL_SOCKET, SO_TYPE, &type, &length) < 0) { perror("check"); return 2; }
            send(client, "\x01\x02\0\0\0\0\0\0\0\0", 10, MSG_NOSIGNAL);
        }
        if (n != 1) { fprintf(stderr, "claim: no descriptor came back\n"); return 2; }
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
