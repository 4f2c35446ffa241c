// The C shim of SocketShare: only what Swift cannot express.
//
// - the CMSG_* macros (function-like macros are not imported into Swift),
// - raw syscall(2) for calls glibc does not wrap (pidfd_open, pidfd_getfd, pidfd_send_signal),
// - GNU-only declarations (accept4, struct ucred, posix_spawn_file_actions_addclosefrom_np),
// - the Linux headers Glibc's Swift module leaves out (epoll, eventfd).
//
// Everything else lives in Swift, in Sources/SocketShare/Kernel.
#ifndef CSOCKETSHARE_H
#define CSOCKETSHARE_H

#include <spawn.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/types.h>

/// CMSG_SPACE(len): bytes of control buffer one control message with `len` data bytes needs.
static inline size_t cs_cmsg_space(size_t len) { return CMSG_SPACE(len); }

/// CMSG_LEN(len): the value of cmsg_len for a control message with `len` data bytes.
static inline size_t cs_cmsg_len(size_t len) { return CMSG_LEN(len); }

/// CMSG_FIRSTHDR(msg), or NULL.
static inline struct cmsghdr *cs_cmsg_firsthdr(struct msghdr *msg) { return CMSG_FIRSTHDR(msg); }

/// CMSG_NXTHDR(msg, cmsg), or NULL.
static inline struct cmsghdr *cs_cmsg_nxthdr(struct msghdr *msg, struct cmsghdr *cmsg) {
    return CMSG_NXTHDR(msg, cmsg);
}

/// CMSG_DATA(cmsg).
static inline unsigned char *cs_cmsg_data(struct cmsghdr *cmsg) { return CMSG_DATA(cmsg); }

/// The SO_PEERPIDFD option (Linux 6.5); older headers lack the constant.
#define CS_SO_PEERPIDFD 77

/// O_PATH (GNU): a descriptor that only names a file, for fstat and *at calls.
#define CS_O_PATH 010000000

/// The SO_PEERGROUPS option (Linux 4.13).
#define CS_SO_PEERGROUPS 59

/// pidfd_open(2). Returns a pidfd (always close-on-exec) or -1 with errno.
int cs_pidfd_open(pid_t pid, unsigned int flags);

/// pidfd_getfd(2). Returns a new close-on-exec descriptor or -1 with errno.
int cs_pidfd_getfd(int pidfd, int targetfd, unsigned int flags);

/// pidfd_send_signal(2) without siginfo. Signal 0 checks that the process is alive.
int cs_pidfd_send_signal(int pidfd, int sig, unsigned int flags);

/// accept4(2).
int cs_accept4(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags);

/// getsockopt(SO_PEERCRED): the credentials the peer had when it connected.
int cs_getpeercred(int fd, pid_t *pid, uid_t *uid, gid_t *gid);

/// posix_spawn_file_actions_addclosefrom_np(3) (glibc 2.34).
int cs_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from);

/// dup3(2) (GNU).
int cs_dup3(int oldfd, int newfd, int flags);

/// pipe2(2) (GNU).
int cs_pipe2(int fds[2], int flags);

/// fstatfs(2)'s f_type (the file system's magic number) for `fd`, or -1 with errno.
long cs_filesystem_type(int fd);

/// setsockopt(SO_PASSCRED, 1): the kernel attaches each sender's credentials to datagrams.
int cs_enable_passcred(int fd);

/// recvmsg(2) of one datagram with MSG_DONTWAIT and MSG_CMSG_CLOEXEC, reporting the sender's pid
/// from SCM_CREDENTIALS (0 when none came). Descriptors that arrive with it (SCM_RIGHTS) are
/// closed. Returns the byte count, or -1 with errno.
long cs_recv_with_sender(int fd, void *buffer, size_t length, pid_t *sender);

/// pthread_setname_np(pthread_self(), name) (GNU): names the calling thread for ps, top and perf
/// (at most 15 bytes are kept).
int cs_name_thread(const char *name);

/// prctl(PR_SET_PTRACER, pid): lets `pid` ptrace (and pidfd_getfd from) this process under Yama scope 1.
int cs_set_ptracer(pid_t pid);

/// Runs process `pid` (0: the caller) on CPU `cpu` only (`sched_setaffinity`, a GNU call). For
/// benchmarks that must place their processes the same way in every run.
int cs_pin_to_cpu(pid_t pid, int cpu);

/// The effective uid of the process behind `pidfd` (`ioctl(PIDFD_GET_INFO)`, Linux 6.13+).
/// Returns 0, or -1 with errno (ENOTTY or EINVAL on older kernels, ESRCH once it has exited).
int cs_pidfd_euid(int pidfd, uid_t *euid);

#endif
