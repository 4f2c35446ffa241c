/* pidfd_getfd cost. A child holds a socket at a known number; the parent pulls it `count` times.
 *   pidfd COUNT          bare: one pidfd_open, reused; each pull is pidfd_getfd + close.
 *   pidfd COUNT safe     the same work as SocketShare's pidfd adopt, in C: per pull pidfd_open,
 *                        the source's start time from /proc/PID/stat checked against the one
 *                        recorded, a liveness check on the pidfd, pidfd_getfd, fstat (inode),
 *                        SO_DOMAIN and SO_TYPE, then an acknowledgement to the holder (connect to
 *                        its SOCK_SEQPACKET socket, send 10 bytes, close), which accepts and reads.
 * Prints p50/p99 per pull in microseconds. */
#include "common.h"
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

/* The holder's side of acknowledgements: accept, read one message, close; until `stop` is readable. */
static void serve_acks(int listener, int stop) {
    char buffer[64];
    for (;;) {
        struct pollfd fds[2] = {{.fd = stop, .events = POLLIN}, {.fd = listener, .events = POLLIN}};
        if (poll(fds, 2, -1) < 0) continue;
        if (fds[0].revents) return;
        int connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (connection < 0) continue;
        recv(connection, buffer, sizeof buffer, 0);
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
    int listener = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) < 0 || listen(listener, 128) < 0) {
        perror("bind");
        return 1;
    }
    int pipefd[2];
    if (pipe(pipefd) < 0) return 1;
    pid_t child = fork();
    if (child == 0) {
        serve_acks(listener, pipefd[0]);  /* holds `sock` until told to stop */
        return 0;
    }
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
            int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
            if (pidfd < 0 || start_time(child) != recorded || syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0) {
                fprintf(stderr, "pidfd: source check failed\n");
                return 1;
            }
            int fd = (int)syscall(SYS_pidfd_getfd, pidfd, sock, 0);
            struct stat st;
            int domain, type;
            socklen_t length = sizeof(int);
            if (fd < 0 || fstat(fd, &st) < 0 || st.st_ino != sock_stat.st_ino ||
                getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) < 0 ||
                getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) < 0) {
                perror("pidfd: pull");
                return 1;
            }
            int ack = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
            if (connect(ack, (struct sockaddr *)&address, sizeof address) == 0)
                send(ack, "acknowledg", 10, MSG_DONTWAIT | MSG_NOSIGNAL);
            close(ack);
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
