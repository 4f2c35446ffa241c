/* The dispatcher's job in C, as the reference for its CPU cost: one process accepts on a listener
 * (epoll, accept4 until EAGAIN, up to 64 per round), hands the connections round-robin to WORKERS
 * worker processes in the worker protocol (docs/WORKERS.md: one `connections` message per worker
 * per round, with SCM_RIGHTS, the listener's name and both addresses as text), keeps its copy of
 * each until the worker's `accepted` names it, and rings a worker's doorbell after each message
 * when the worker gave one. It does not re-dispatch, count load or watch for stalls.
 *   acceptor PORT WORKERS COMMAND [ARG...]   runs COMMAND WORKERS times as handoff workers
 * Runs until killed; its workers die with it (PR_SET_PDEATHSIG). */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>

#define MAX_WORKERS 64
#define MAX_UNACKED 4096

struct worker {
    int channel, doorbell;
    uint64_t ids[MAX_UNACKED];
    int fds[MAX_UNACKED];
    int unacked;
};

static struct worker workers[MAX_WORKERS];

static void put_text(unsigned char *message, int *offset, const char *text) {
    size_t length = strlen(text);
    message[(*offset)++] = (unsigned char)length;
    memcpy(message + *offset, text, length);
    *offset += (int)length;
}

static void put_u64(unsigned char *message, int *offset, uint64_t value) {
    for (int i = 7; i >= 0; i--) message[(*offset)++] = (unsigned char)(value >> (8 * i));
}

/* Reads what a worker sent: acknowledgements close the copies they name; a doorbell is kept. */
static void read_worker(struct worker *worker) {
    unsigned char message[65536];
    int fds[253], count;
    for (;;) {
        ssize_t got = receive_fds(worker->channel, message, sizeof(message), fds, &count);
        if (got < 0 && errno == EAGAIN) return;
        if (got <= 0) exit(0);
        if (got >= 2 && message[1] == 0x35 && count == 1) {  /* doorbell */
            worker->doorbell = fds[0];
            send(worker->doorbell, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
            continue;
        }
        for (int k = 0; k < count; k++) close(fds[k]);
        if (got < 8 || message[1] != 0x31) continue;  /* accepted: u32 active, u16 count, ids */
        int acknowledged = (message[6] << 8) | message[7];
        for (int a = 0; a < acknowledged && 8 + 8 * a + 8 <= got; a++) {
            uint64_t id = 0;
            for (int i = 0; i < 8; i++) id = id << 8 | message[8 + 8 * a + i];
            for (int u = 0; u < worker->unacked; u++) {
                if (worker->ids[u] != id) continue;
                close(worker->fds[u]);
                worker->unacked--;
                worker->ids[u] = worker->ids[worker->unacked];
                worker->fds[u] = worker->fds[worker->unacked];
                break;
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "acceptor PORT WORKERS COMMAND [ARG...]\n");
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    int port = atoi(argv[1]), count = atoi(argv[2]);
    if (count < 1 || count > MAX_WORKERS) return 64;
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    for (int w = 0; w < count; w++) {
        int pair[2];
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair);
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            dup2(pair[1], 3);  /* dup2 clears close-on-exec on the copy */
            setenv("SOCKSHARE_WORKER_FD", "3", 1);
            execvp(argv[3], argv + 3);
            _exit(127);
        }
        close(pair[1]);
        workers[w].channel = pair[0];
        workers[w].doorbell = -1;
        fcntl(pair[0], F_SETFL, O_NONBLOCK);
        struct epoll_event event = {.events = EPOLLIN, .data.u32 = (uint32_t)w};
        epoll_ctl(epoll, EPOLL_CTL_ADD, pair[0], &event);
    }
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), on = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&address, sizeof(address)) != 0 || listen(listener, 4096) != 0) {
        perror("bind");
        return 1;
    }
    char local[64];
    snprintf(local, sizeof(local), "127.0.0.1:%d", port);
    struct epoll_event event = {.events = EPOLLIN, .data.u32 = MAX_WORKERS};
    epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event);
    uint64_t next_id = 1;
    int next_worker = 0;
    struct epoll_event events[MAX_WORKERS + 1];
    for (;;) {
        int ready = epoll_wait(epoll, events, MAX_WORKERS + 1, -1);
        for (int e = 0; e < ready; e++) {
            if (events[e].data.u32 < MAX_WORKERS) {
                read_worker(&workers[events[e].data.u32]);
                continue;
            }
            /* Accept up to 64, then one message per worker. */
            int accepted[64], taken = 0;
            char peers[64][64];
            while (taken < 64) {
                struct sockaddr_in peer;
                socklen_t length = sizeof(peer);
                int connection = accept4(listener, (struct sockaddr *)&peer, &length, SOCK_CLOEXEC);
                if (connection < 0) break;
                char host[INET_ADDRSTRLEN];
                inet_ntop(AF_INET, &peer.sin_addr, host, sizeof(host));
                snprintf(peers[taken], sizeof(peers[taken]), "%s:%d", host, ntohs(peer.sin_port));
                accepted[taken++] = connection;
            }
            for (int w = 0; w < count && taken > 0; w++) {
                struct worker *worker = &workers[(next_worker + w) % count];
                unsigned char message[65536] = {1, 0x21, 0, 0};
                int offset = 4, fds[64], batch = 0;
                for (int c = w; c < taken; c += count) {
                    if (worker->unacked + batch >= MAX_UNACKED) { close(accepted[c]); continue; }
                    put_u64(message, &offset, next_id);
                    put_text(message, &offset, "web");
                    put_text(message, &offset, peers[c]);
                    put_text(message, &offset, local);
                    worker->ids[worker->unacked + batch] = next_id++;
                    worker->fds[worker->unacked + batch] = accepted[c];
                    fds[batch++] = accepted[c];
                }
                if (batch == 0) continue;
                message[2] = (unsigned char)(batch >> 8);
                message[3] = (unsigned char)batch;
                send_fds(worker->channel, message, (size_t)offset, fds, batch);
                worker->unacked += batch;
                if (worker->doorbell >= 0) send(worker->doorbell, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
            }
            next_worker = (next_worker + 1) % count;
        }
    }
}
