/* pidfd_getfd cost: a child holds a socket at a known number; the parent pulls it `count` times
 * with pidfd_getfd (one pidfd_open, reused) and closes each copy. Prints p50/p99 per pull.
 *   pidfd COUNT */
#include "common.h"
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 100000;
    int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int pipefd[2];
    pipe(pipefd);
    pid_t child = fork();
    if (child == 0) {
        char byte;
        read(pipefd[0], &byte, 1);  /* hold the socket until told */
        return 0;
    }
    int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
    uint64_t *samples = malloc(sizeof(uint64_t) * count);
    for (int i = 0; i < count; i++) {
        uint64_t start = now_ns();
        int fd = (int)syscall(SYS_pidfd_getfd, pidfd, sock, 0);
        if (fd < 0) { perror("pidfd_getfd"); return 1; }
        close(fd);
        samples[i] = now_ns() - start;
    }
    write(pipefd[1], "x", 1);
    waitpid(child, NULL, 0);
    print_percentiles(samples, count);
    return 0;
}
