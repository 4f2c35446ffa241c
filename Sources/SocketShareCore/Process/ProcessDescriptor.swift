import CSocketShare
import Glibc

/// A pidfd: a descriptor that names one process for its whole life and cannot be fooled by pid reuse.
///
/// Its ``identity`` is exact: the start time is read from `/proc` and then the pidfd is checked to
/// still name a live process, so the reading cannot belong to a later process with the same pid.
package final class ProcessDescriptor: Sendable {
    /// The pidfd (close-on-exec).
    package let rawValue: CInt
    /// The process it names.
    package let identity: ProcessIdentity
    /// The pidfd's inode when pidfds live on pidfs (Linux 6.9+): unique to one process for the
    /// system's uptime, unlike the start time, whose 10 ms ticks two quick processes can share.
    /// Read when asked (two syscalls), since most users only need the pidfd.
    package var uniqueInode: UInt64? { Self.pidfsInode(rawValue) }

    /// Opens a pidfd for `pid` (`pidfd_open(2)`).
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` when no such process exists.
    package init(pid: pid_t) throws(SocketShareError) {
        guard pid > 0 else {
            throw SocketShareError(.invalidArgument, operation: "open process", detail: "pid \(pid) is not a process id")
        }
        let fd: CInt
        do throws(SocketShareError) {
            fd = try Kernel.openProcess(pid)
        } catch where error.errno?.rawValue == ESRCH {
            throw SocketShareError(.invalidArgument, operation: "open process", detail: "no process with pid \(pid)")
        }
        do throws(SocketShareError) {
            self.identity = try Self.verifiedIdentity(pidfd: fd, pid: pid)
            self.rawValue = fd
        } catch {
            try? Kernel.close(fd)
            throw error
        }
    }

    /// Takes ownership of a pidfd received from another process (a predecessor supervisor), which
    /// says it names `pid`; the identity is read and checked as for ``init(pid:)``.
    package init(taking pidfd: CInt, pid: pid_t) throws(SocketShareError) {
        do throws(SocketShareError) {
            self.identity = try Self.verifiedIdentity(pidfd: pidfd, pid: pid)
            self.rawValue = pidfd
        } catch {
            try? Kernel.close(pidfd)
            throw error
        }
    }

    deinit { try? Kernel.close(rawValue) }

    /// The process's effective uid: asked of the pidfd (`PIDFD_GET_INFO`, Linux 6.13+), else read
    /// from `/proc/PID/status`.
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` when the process has exited.
    package func effectiveUserID() throws(SocketShareError) -> uid_t {
        var euid: uid_t = 0
        if cs_pidfd_euid(rawValue, &euid) == 0 { return euid }
        if errno == ESRCH {
            throw SocketShareError(.invalidArgument, operation: "identify process", detail: "pid \(identity.pid) exited")
        }
        return try ProcessIdentity.effectiveUserID(of: identity.pid)
    }

    /// Whether the process has exited (the pidfd polls readable once it has).
    package var hasExited: Bool { Kernel.hasExited(pidfd: rawValue) }

    /// The inode of a pidfd on pidfs, or nil on kernels where pidfds are anonymous inodes (all alike).
    package static func pidfsInode(_ pidfd: CInt) -> UInt64? {
        guard cs_filesystem_type(pidfd) == 0x5049_4446 /* PID_FS_MAGIC */ else { return nil }
        return (try? Kernel.status(pidfd)).map { UInt64($0.st_ino) }
    }

    package static func verifiedIdentity(pidfd: CInt, pid: pid_t) throws(SocketShareError) -> ProcessIdentity {
        let startTime = try ProcessIdentity.startTime(of: pid)
        guard Kernel.isAlive(pidfd) else {
            throw SocketShareError(.invalidArgument, operation: "open process", detail: "pid \(pid) exited")
        }
        return ProcessIdentity(pid: pid, startTime: startTime)
    }
}

extension String {
    /// The string without leading and trailing spaces, tabs and newlines.
    package var trimmingSpaces: String {
        let scalars = unicodeScalars
        let isSpace: (Unicode.Scalar) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let first = scalars.firstIndex(where: { !isSpace($0) }),
              let last = scalars.lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(scalars[first...last])
    }
}

extension String {
    /// The string with every control character (below U+0020, and U+007F) written as `\u{XX}`:
    /// text from a peer that goes into a log stays on one line.
    package var escapingControlCharacters: String {
        guard unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return self }
        var result = ""
        for scalar in unicodeScalars {
            if scalar.value < 0x20 || scalar.value == 0x7F {
                result += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            } else {
                result.unicodeScalars.append(scalar)
            }
        }
        return result
    }
}
