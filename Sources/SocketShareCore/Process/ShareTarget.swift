import Glibc

/// The process a share is for, as the holder checks claimants against it: pid and start time, uid,
/// and — on kernels with pidfs (6.9+) — the inode of its pidfd, which no other process will ever have.
package struct ShareTarget: Hashable, Sendable {
    /// Pid and start time.
    package var identity: ProcessIdentity
    /// The effective uid the claimant must run as.
    package var uid: uid_t
    /// The pidfs inode of the process, when the kernel has pidfs.
    package var uniqueInode: UInt64?

    package init(identity: ProcessIdentity, uid: uid_t, uniqueInode: UInt64?) {
        self.identity = identity
        self.uid = uid
        self.uniqueInode = uniqueInode
    }

    /// Resolves the running process `pid`. With `expected`, that process must be the one named
    /// (same start time), or the target is reported as exited.
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` when there is no such process (the
    ///   text points to named shares: the pid may belong to a namespace this process cannot see).
    package static func resolve(pid: pid_t, expected: ProcessIdentity? = nil) throws(SocketShareError) -> ShareTarget {
        let process: ProcessDescriptor
        do throws(SocketShareError) {
            process = try ProcessDescriptor(pid: pid)
        } catch where error.code == .invalidArgument {
            throw SocketShareError(
                .invalidArgument, operation: error.operation, errno: error.errno,
                detail: "\(error.detail) in this pid namespace (a process in another pid namespace or container "
                    + "has no pid here: share by name through a broker instead, `BrokerClient.deposit(_:named:)`)")
        }
        if let expected, expected != process.identity {
            throw SocketShareError(
                .invalidArgument, operation: "resolve target",
                detail: "\(expected) has exited; pid \(pid) now names a process started at tick \(process.identity.startTime)")
        }
        let uid = try process.effectiveUserID()
        return ShareTarget(identity: process.identity, uid: uid, uniqueInode: process.uniqueInode)
    }

    /// Whether the process still runs: its pid still names it, and it has not exited (a zombie
    /// waiting for its parent to reap it has).
    package var isRunning: Bool {
        guard let current = try? ProcessDescriptor(pid: identity.pid), !current.hasExited else { return false }
        if let uniqueInode, let now = current.uniqueInode { return uniqueInode == now }
        return current.identity == identity
    }
}
