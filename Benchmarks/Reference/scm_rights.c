/* SCM_RIGHTS throughput between two processes: the parent sends `messages` messages of `per`
 * descriptors on a SOCK_SEQPACKET socketpair; the child receives each and closes what arrived; the
 * parent waits for the child's final byte. Prints descriptors per second.
 *   scm_rights PER MESSAGES */
#include "common.h"
#include <sys/wait.h>

int main(int argc, char **argv) {
    int per = argc > 1 ? atoi(argv[1]) : 1, messages = argc > 2 ? atoi(argv[2]) : 100000;
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) return 1;
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int fds[253];
    for (int i = 0; i < per; i++) fds[i] = sock;
    pid_t child = fork();
    if (child == 0) {
        close(pair[0]);
        char byte;
        int got[253], count;
        for (int m = 0; m < messages; m++) {
            if (receive_fds(pair[1], &byte, 1, got, &count) <= 0) return 2;
            for (int i = 0; i < count; i++) close(got[i]);
        }
        write(pair[1], "k", 1);
        return 0;
    }
    close(pair[1]);
    uint64_t start = now_ns();
    for (int m = 0; m < messages; m++) {
        while (send_fds(pair[0], "m", 1, fds, per) < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ENOBUFS) return 3;
        }
    }
    char byte;
    read(pair[0], &byte, 1);
    uint64_t elapsed = now_ns() - start;
    waitpid(child, NULL, 0);
    printf("fds_per_s %.0f\n", (double)per * messages / (elapsed / 1e9));
    return 0;
}
