/* Shared helpers of the C reference programs: time, statistics, descriptor passing. */
#define _GNU_SOURCE
#include <sched.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Runs the calling process (and what it forks afterwards) on CPU `cpu` only. */
static inline void pin_to(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Prints "p50 P99" in microseconds of `count` samples in nanoseconds. */
static inline void print_percentiles(uint64_t *samples, size_t count) {
    qsort(samples, count, sizeof(uint64_t), compare_u64);
    printf("p50_us %.2f p99_us %.2f\n", samples[count / 2] / 1000.0, samples[(size_t)(count * 0.99)] / 1000.0);
}

/* Sends `bytes` with `count` descriptors in one SCM_RIGHTS message. */
static inline int send_fds(int socket, const void *bytes, size_t length, const int *fds, int count) {
    char control[CMSG_SPACE(sizeof(int) * 253)];
    struct iovec iov = {.iov_base = (void *)bytes, .iov_len = length};
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1};
    if (count > 0) {
        message.msg_control = control;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * count);
        memcpy(CMSG_DATA(header), fds, sizeof(int) * count);
    }
    return (int)sendmsg(socket, &message, MSG_NOSIGNAL);
}

/* Receives one message with up to 253 descriptors; returns the byte count, fills fds/count. */
static inline ssize_t receive_fds(int socket, void *bytes, size_t length, int *fds, int *count) {
    char control[CMSG_SPACE(sizeof(int) * 253)];
    struct iovec iov = {.iov_base = bytes, .iov_len = length};
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
    ssize_t received = recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
    *count = 0;
    if (received < 0) return received;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_RIGHTS) {
            int n = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(fds + *count, CMSG_DATA(header), sizeof(int) * n);
            *count += n;
        }
    }
    return received;
}
