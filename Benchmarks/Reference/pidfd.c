/* pidfd_getfd cost. A child holds a socket at a known number; the parent pulls it `count` times.
 *   pidfd COUNT          bare: one pidfd_open, reused; each pull is pidfd_getfd + close.
 *   pidfd COUNT safe     the same work as SocketShare's pidfd adopt, in C: per pull connect to the
 *                        holder's SOCK_SEQPACKET socket, its SO_PEERCRED and SO_PEERPIDFD, its start
 *                        time from /proc/PID/stat checked against the one recorded, a request (26
 *                        bytes: share id and secret) answered with the descriptor's number (14
 *                        bytes), pidfd_getfd through the peer's pidfd, fstat (inode), SO_DOMAIN and
 *                        SO_TYPE, then the acknowledgement on the same connection, close. The holder
 *                        accepts, reads the request, compares the secret, answers, reads the
 *                        acknowledgement and closes.
 * Prints p50/p99 per pull in microseconds. */
#include "common.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

static unsigned long long start_time(pid_t pid) {
    char path[64], buffer[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (n <= 0) return 0;
    buffer[n] = 0;
    char *p = strrchr(buffer, ')');
    if (!p) return 0;
    for (int field = 2; field < 22 && p; field++) p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

static const unsigned char secret[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

/* The holder's side: accept, read the request, check the secret, answer with the descriptor's
 * number, read the acknowledgement, close; until `stop` is readable. */
static void serve_pulls(int listener, int stop, int sock) {
    unsigned char buffer[64];
    for (;;) {
        struct pollfd fds[2] = {{.fd = stop, .events = POLLIN}, {.fd = listener, .events = POLLIN}};
        if (poll(fds, 2, -1) < 0) continue;
        if (fds[0].revents) return;
        int connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (connection < 0) continue;
        struct ucred peer;
        socklen_t length = sizeof peer;
        getsockopt(connection, SOL_SOCKET, SO_PEERCRED, &peer, &length);
        ssize_t n = recv(connection, buffer, sizeof buffer, 0);
        if (n == 26 && memcmp(buffer + 10, secret, 16) == 0) {
            unsigned char answer[14] = {1, 0x8D};
            uint32_t number = htonl((uint32_t)sock);
            memcpy(answer + 10, &number, 4);
            send(connection, answer, sizeof answer, MSG_NOSIGNAL);
            recv(connection, buffer, sizeof buffer, 0);
        }
        close(connection);
    }
}

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 100000;
    int safe = argc > 2 && strcmp(argv[2], "safe") == 0;
    int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct stat sock_stat;
    fstat(sock, &sock_stat);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    snprintf(address.sun_path, sizeof address.sun_path, "/tmp/pidfd-ref-%d.sock", getpid());
    unlink(address.sun_path);
    int pipefd[2], ready[2];
    if (pipe(pipefd) < 0 || pipe(ready) < 0) return 1;
    pid_t child = fork();
    if (child == 0) {
        /* The holder listens itself, so SO_PEERCRED names it, as a sharer's socket names its process. */
        int listener = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (bind(listener, (struct sockaddr *)&address, sizeof address) < 0 || listen(listener, 128) < 0) {
            perror("bind");
            return 1;
        }
        write(ready[1], "r", 1);
        serve_pulls(listener, pipefd[0], sock);  /* holds `sock` until told to stop */
        return 0;
    }
    char byte;
    if (read(ready[0], &byte, 1) != 1) return 1;
    unsigned long long recorded = start_time(child);
    int reused = (int)syscall(SYS_pidfd_open, child, 0);
    uint64_t *samples = malloc(sizeof(uint64_t) * count);
    for (int i = 0; i < count; i++) {
        uint64_t start = now_ns();
        if (!safe) {
            int fd = (int)syscall(SYS_pidfd_getfd, reused, sock, 0);
            if (fd < 0) { perror("pidfd_getfd"); return 1; }
            close(fd);
        } else {
            int channel = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
            struct ucred peer;
            socklen_t length = sizeof peer;
            int pidfd = -1;
            socklen_t pidfd_length = sizeof pidfd;
            if (connect(channel, (struct sockaddr *)&address, sizeof address) < 0 ||
                getsockopt(channel, SOL_SOCKET, SO_PEERCRED, &peer, &length) < 0 ||
                getsockopt(channel, SOL_SOCKET, 77 /* SO_PEERPIDFD */, &pidfd, &pidfd_length) < 0 ||
                peer.pid != child || start_time(child) != recorded ||
                syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0) {
                fprintf(stderr, "pidfd: holder check failed\n");
                return 1;
            }
            unsigned char request[26] = {1, 0x0D};
            memcpy(request + 10, secret, 16);
            unsigned char answer[64];
            struct pollfd wait = {.fd = channel, .events = POLLIN};
            if (send(channel, request, sizeof request, MSG_NOSIGNAL) != sizeof request || poll(&wait, 1, 5000) != 1 ||
                recv(channel, answer, sizeof answer, 0) != 14 || answer[1] != 0x8D) {
                fprintf(stderr, "pidfd: no answer from the holder\n");
                return 1;
            }
            uint32_t number;
            memcpy(&number, answer + 10, 4);
            int fd = (int)syscall(SYS_pidfd_getfd, pidfd, (int)ntohl(number), 0);
            struct stat st;
            int domain, type;
            length = sizeof(int);
            if (fd < 0 || fstat(fd, &st) < 0 || st.st_ino != sock_stat.st_ino ||
                getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) < 0 ||
                getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) < 0) {
                perror("pidfd: pull");
                return 1;
            }
            unsigned char acknowledge[10] = {1, 0x02};
            send(channel, acknowledge, sizeof acknowledge, MSG_DONTWAIT | MSG_NOSIGNAL);
            close(channel);
            close(pidfd);
            close(fd);
        }
        samples[i] = now_ns() - start;
    }
    write(pipefd[1], "x", 1);
    waitpid(child, NULL, 0);
    unlink(address.sun_path);
    print_percentiles(samples, count);
    return 0;
}
