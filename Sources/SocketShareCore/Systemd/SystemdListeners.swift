import Glibc

/// The systemd socket-activation protocol, from the receiving side: descriptors 3… given to this
/// process, `LISTEN_FDS` of them, named by `LISTEN_FDNAMES`, valid only when `LISTEN_PID` is this
/// process's pid (otherwise they were meant for an ancestor and are ignored, as sd_listen_fds does).
package enum SystemdListeners {
    /// The first descriptor number (`SD_LISTEN_FDS_START`).
    package static let firstDescriptor: CInt = 3

    /// The listeners passed to this process, with their names; empty when none were.
    ///
    /// The descriptors are made close-on-exec, and the three variables are removed from the
    /// environment, so that they are not passed on to programs this process starts.
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` when `LISTEN_FDS` is not a number
    ///   or names descriptors that are not open.
    package static func inherited() throws(SocketShareError) -> [(name: String, socket: SocketDescriptor)] {
        defer {
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let countText = RuntimeDirectory.environment("LISTEN_FDS") else { return [] }
        guard let pidText = RuntimeDirectory.environment("LISTEN_PID"), pid_t(pidText) == getpid() else { return [] }
        guard let count = Int(countText), count >= 0, count < 10_000 else {
            throw SocketShareError(.invalidArgument, operation: "socket activation", detail: "LISTEN_FDS=\(countText) is not a count")
        }
        let names = (RuntimeDirectory.environment("LISTEN_FDNAMES") ?? "").split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        var listeners: [(String, SocketDescriptor)] = []
        // Every descriptor is checked before any is taken: on error none is owned (or closed) here.
        for index in 0..<count {
            let fd = firstDescriptor + CInt(index)
            guard Kernel.descriptorFlags(fd) != nil else {
                throw SocketShareError(
                    .invalidArgument, operation: "socket activation", detail: "LISTEN_FDS=\(count) but descriptor \(fd) is not open")
            }
            let type = (try Kernel.status(fd)).st_mode & S_IFMT
            guard type == S_IFSOCK else {
                throw SocketShareError(
                    .invalidArgument, operation: "socket activation",
                    detail: "LISTEN_FDS=\(count) but descriptor \(fd) is \(Self.kind(of: type)), not a socket "
                        + "(was it passed by a service manager?)")
            }
        }
        for index in 0..<count {
            let fd = firstDescriptor + CInt(index)
            try Kernel.setCloseOnExec(fd, true)
            let name = index < names.count && !names[index].isEmpty ? names[index] : "unknown"
            listeners.append((name, SocketDescriptor(taking: fd)))
        }
        return listeners
    }

    /// What a file type (`st_mode & S_IFMT`) is, in words.
    private static func kind(of type: mode_t) -> String {
        switch type {
        case S_IFREG: "a regular file"
        case S_IFDIR: "a directory"
        case S_IFIFO: "a pipe"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFLNK: "a symbolic link"
        default: "a file of type \(String(type, radix: 8))"
        }
    }

    /// The environment entries that pass `names.count` listeners at 3… to a child: `LISTEN_FDS` and
    /// `LISTEN_FDNAMES`. `LISTEN_PID` must be the child's own pid, which only the child knows: see
    /// ``ProcessSpawner/spawn(_:arguments:environment:descriptors:)`` callers in ``Supervisor``.
    package static func environment(names: [String]) -> [String: String] {
        ["LISTEN_FDS": "\(names.count)", "LISTEN_FDNAMES": names.joined(separator: ":")]
    }
}
