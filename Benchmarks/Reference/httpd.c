/* A minimal HTTP/1.1 server for the HTTP references: answers every request with "hello from PID",
 * keep-alive unless the request says "Connection: close". Modes:
 *   httpd reuseport PORT WORKERS  WORKERS processes, each with its own SO_REUSEPORT listener
 *                                 (the kernel spreads connections: the no-handoff ceiling)
 *   httpd handoff PORT WORKERS    one acceptor hands each connection to WORKERS processes over
 *                                 SCM_RIGHTS, round-robin, closing its copy at once (no ack)
 *   httpd worker                  a worker for `sockshare serve --mode handoff`: takes connections
 *                                 on $SOCKSHARE_WORKER_FD (docs/WORKERS.md), acknowledges each batch,
 *                                 and on `stop` (or the channel's end) drains as hello-worker does:
 *                                 every answer says Connection: close, and it exits once no
 *                                 connection is open (at most 30 s later)
 * Runs until killed (or, as a worker, until drained). */
#include "common.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/wait.h>

#define MAX_CONNECTIONS 65536
static char buffers[MAX_CONNECTIONS][1024];
static int filled[MAX_CONNECTIONS];
static int open_connections, draining;
static char keep_response[128], close_response[160];
static int keep_length, close_length;

static void prepare_responses(void) {
    char body[32];
    int body_length = snprintf(body, sizeof(body), "hello from %d\n", getpid());
    keep_length = snprintf(keep_response, sizeof(keep_response),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", body_length, body);
    close_length = snprintf(close_response, sizeof(close_response),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", body_length, body);
}

static void add(int epoll, int fd) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (fd >= MAX_CONNECTIONS) { close(fd); return; }
    filled[fd] = 0;
    open_connections++;
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
}

static void finish(int fd) {
    close(fd);
    open_connections--;
}

/* Reads what is there; answers each complete request (with Connection: close while draining). */
static void serve(int fd) {
    for (;;) {
        ssize_t n = read(fd, buffers[fd] + filled[fd], sizeof(buffers[fd]) - 1 - filled[fd]);
        if (n == 0 || (n < 0 && errno != EAGAIN)) { finish(fd); return; }
        if (n < 0) return;
        filled[fd] += (int)n;
        buffers[fd][filled[fd]] = 0;
        char *end;
        while ((end = strstr(buffers[fd], "\r\n\r\n")) != NULL) {
            *end = 0;
            int closing = draining || strcasestr(buffers[fd], "connection: close") != NULL;
            write(fd, closing ? close_response : keep_response, closing ? close_length : keep_length);
            if (closing) { finish(fd); return; }
            int rest = filled[fd] - (int)(end + 4 - buffers[fd]);
            memmove(buffers[fd], end + 4, rest + 1);
            filled[fd] = rest;
        }
    }
}

static int listen_on(int port, int reuseport) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (reuseport ? SOCK_NONBLOCK : 0), 0), on = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (reuseport) setsockopt(listener, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on));
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&address, sizeof(address)) != 0 || listen(listener, 4096) != 0) { perror("bind"); exit(1); }
    return listener;
}

/* The event loop: `listener` (accept), `channel` (descriptors arrive), or both -1. */
static void run(int listener, int channel, int acknowledge) {
    prepare_responses();
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    if (listener >= 0) { struct epoll_event e = {.events = EPOLLIN, .data.fd = listener}; epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &e); }
    if (channel >= 0) { struct epoll_event e = {.events = EPOLLIN, .data.fd = channel}; epoll_ctl(epoll, EPOLL_CTL_ADD, channel, &e); }
    struct epoll_event events[256];
    uint64_t drain_deadline = 0;
    for (;;) {
        if (draining && (open_connections == 0 || now_ns() > drain_deadline)) exit(0);
        int n = epoll_wait(epoll, events, 256, draining ? 100 : -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int connection;
                while ((connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) add(epoll, connection);
            } else if (fd == channel) {
                unsigned char message[65536];
                int fds[253], count;
                ssize_t got = receive_fds(channel, message, sizeof(message), fds, &count);
                if (got <= 0 || (got >= 2 && message[1] == 0x22)) {
                    /* stop, or the dispatcher is gone: take no more, finish what is open */
                    for (int k = 0; k < count; k++) close(fds[k]);
                    epoll_ctl(epoll, EPOLL_CTL_DEL, channel, NULL);
                    draining = 1;
                    drain_deadline = now_ns() + 30000000000ull;
                    continue;
                }
                if (acknowledge) {
                    /* sockshare worker protocol: 1 0x21 u16 count, entries {u64 id, 3 strings}; ack 1 0x31 u32 0 u16 count ids */
                    if (got < 4 || message[1] != 0x21) { for (int k = 0; k < count; k++) close(fds[k]); continue; }
                    int entries = (message[2] << 8) | message[3], offset = 4;
                    unsigned char reply[8 + 8 * 64] = {1, 0x31, 0, 0, 0, 0, (unsigned char)(entries >> 8), (unsigned char)entries};
                    for (int e = 0; e < entries; e++) {
                        memcpy(reply + 8 + 8 * e, message + offset, 8);
                        offset += 8;
                        for (int s = 0; s < 3; s++) offset += 1 + message[offset];
                    }
                    send(channel, reply, 8 + 8 * entries, MSG_NOSIGNAL);
                }
                for (int k = 0; k < count; k++) add(epoll, fds[k]);
            } else {
                serve(fd);
            }
        }
    }
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    const char *mode = argc > 1 ? argv[1] : "";
    int port = argc > 2 ? atoi(argv[2]) : 0, workers = argc > 3 ? atoi(argv[3]) : 2;
    if (strcmp(mode, "worker") == 0) {
        const char *fd = getenv("SOCKSHARE_WORKER_FD");
        if (!fd) return 64;
        int channel = atoi(fd);
        send(channel, "\x01\x34", 2, MSG_NOSIGNAL); /* ready */
        run(-1, channel, 1);
    } else if (strcmp(mode, "reuseport") == 0) {
        for (int w = 0; w < workers; w++) if (fork() == 0) run(listen_on(port, 1), -1, 0);
        while (wait(NULL) > 0) {}
    } else if (strcmp(mode, "handoff") == 0) {
        int channels[64];
        for (int w = 0; w < workers; w++) {
            int pair[2];
            socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair);
            if (fork() == 0) { close(pair[0]); run(-1, pair[1], 0); }
            close(pair[1]);
            channels[w] = pair[0];
        }
        int listener = listen_on(port, 0), next = 0;
        for (;;) {
            int connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
            if (connection < 0) continue;
            send_fds(channels[next], "c", 1, &connection, 1);
            close(connection);
            next = (next + 1) % workers;
        }
    } else {
        fprintf(stderr, "httpd reuseport|handoff PORT WORKERS, or httpd worker\n");
        return 64;
    }
    return 0;
}
