import Glibc

/// The process at the other end of a Unix socket, as the kernel reports it at connect time.
///
/// `SO_PEERCRED` gives pid and uid; `SO_PEERPIDFD` (Linux 6.5) a pidfd, which on pidfs (6.9) has an
/// inode unique to that process, so the peer can be compared with a target exactly. The start time
/// from `/proc` is read only where that comparison is not possible.
package final class PeerProcess: Sendable {
    /// The peer's pid at connect time.
    package let pid: pid_t
    /// The peer's effective uid at connect time.
    package let uid: uid_t
    /// The peer's effective (primary) gid at connect time.
    package let gid: gid_t
    /// The peer's pidfd, when the kernel gives one.
    package let pidfd: CInt?
    /// The pidfd's pidfs inode, when pidfds live on pidfs.
    package let uniqueInode: UInt64?

    /// Reads the credentials of the peer of the connected Unix socket `fd`.
    package init(of fd: CInt) throws(SocketShareError) {
        let credentials = try Kernel.peerCredentials(fd)
        pid = credentials.pid
        uid = credentials.uid
        gid = credentials.gid
        pidfd = try Kernel.peerProcessDescriptor(fd)
        uniqueInode = pidfd.flatMap { ProcessDescriptor.pidfsInode($0) }
    }

    deinit {
        if let pidfd { try? Kernel.close(pidfd) }
    }

    /// Whether the peer has exited (a zombie counts: its pidfd polls readable). Without a pidfd, a
    /// pid that still exists counts as alive.
    package var hasExited: Bool {
        guard let pidfd else { return !Kernel.processExists(pid) }
        return Kernel.hasExited(pidfd: pidfd)
    }

    /// The peer's start time, read from `/proc` and checked against its pidfd when there is one.
    package func startTime() throws(SocketShareError) -> UInt64 {
        if let pidfd { return try ProcessDescriptor.verifiedIdentity(pidfd: pidfd, pid: pid).startTime }
        return try ProcessIdentity.startTime(of: pid)
    }

    /// Whether the peer is the process `target` names.
    ///
    /// Exact on pidfs (the inodes must match); elsewhere, or when `byStartTimeOnly` is set, the
    /// start times must match (their 10 ms ticks can hide a pid reused at once).
    package func isProcess(_ target: ShareTarget, byStartTimeOnly: Bool = false) -> Bool {
        guard pid == target.identity.pid else { return false }
        if !byStartTimeOnly, let mine = uniqueInode, let theirs = target.uniqueInode { return mine == theirs }
        return (try? startTime()) == target.identity.startTime
    }

    /// The peer as a process identity (reads its start time).
    package func identity() throws(SocketShareError) -> ProcessIdentity {
        ProcessIdentity(pid: pid, startTime: try startTime())
    }
}

extension PeerProcess {
    /// The peer's cgroup v2 path (`/system.slice/app.service`) as `/proc/PID/cgroup` shows it in
    /// this process's cgroup namespace; nil when its pid is not visible here (another pid
    /// namespace), it has exited, or it is in no cgroup v2 hierarchy.
    ///
    /// Read by pid, then checked against the pidfd: if the peer is still running after the read,
    /// the pid was still its own, so the path is the peer's and not a successor's.
    package func cgroup() -> String? {
        guard pid > 0, let bytes = try? Kernel.readFile("/proc/\(pid)/cgroup"), !hasExited else { return nil }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("0::") {
            return String(line.dropFirst(3))
        }
        return nil
    }
}
