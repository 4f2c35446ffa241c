import CSocketShare
import Glibc

/// Directories and the files in them, through descriptors: a path is resolved once, into a
/// descriptor opened without following a last-component link, and everything after that —
/// ownership, mode, what lives inside — is read from or done to that descriptor. A process racing
/// to swap a directory for a symbolic link between a check and a use gets nothing (the tmux and
/// systemd way).
extension Kernel {
    /// `O_PATH`: a descriptor that only names a file (for `fstat` and the `*at` calls).
    package static let pathOnly = CInt(CS_O_PATH)

    /// `openat(2)` with `O_CLOEXEC` always added; `directory` is `AT_FDCWD` for a plain path.
    package static func open(at directory: CInt, _ path: String, _ flags: CInt, mode: mode_t = 0) throws(SocketShareError) -> CInt {
        try retrying("openat", path) { Glibc.openat(directory, path, flags | O_CLOEXEC, mode) }
    }

    /// `mkdirat(2)`; returns false when something already exists at `name`.
    package static func makeDirectory(at directory: CInt, _ name: String, mode: mode_t) throws(SocketShareError) -> Bool {
        if Glibc.mkdirat(directory, name, mode) == 0 { return true }
        let error = Glibc.errno
        if error == EEXIST { return false }
        throw SocketShareError.system("mkdirat", errno: error, detail: name)
    }

    /// `fchown(2)`: the owner and group of the file behind `fd`.
    package static func changeOwner(_ fd: CInt, user: uid_t, group: gid_t, detail: @autoclosure () -> String) throws(SocketShareError) {
        _ = try retrying("fchown", detail()) { Glibc.fchown(fd, user, group) }
    }

    /// `fchmod(2)`: the mode of the file behind `fd`.
    package static func changeMode(_ fd: CInt, _ mode: mode_t, detail: @autoclosure () -> String) throws(SocketShareError) {
        _ = try retrying("fchmod", detail()) { Glibc.fchmod(fd, mode) }
    }

    /// Sets the owner, group and mode of the Unix socket file `name` in the open directory
    /// `directory`, never following a link: the entry is opened with `Kernel.pathOnly | O_NOFOLLOW`, checked
    /// to be a socket, and changed through `/proc/self/fd` (Linux has no `fchmodat` that refuses
    /// links before 6.6; glibc emulates `AT_SYMLINK_NOFOLLOW` the same way).
    package static func setSocketFile(
        in directory: CInt, _ name: String, user: uid_t, group: gid_t, mode: mode_t, detail: @autoclosure () -> String
    ) throws(SocketShareError) {
        let fd = try open(at: directory, name, Kernel.pathOnly | O_NOFOLLOW)
        defer { try? close(fd) }
        let info = try status(fd)
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw SocketShareError(.permissionDenied, operation: "prepare socket", detail: "\(detail()) is not a socket")
        }
        let magic = "/proc/self/fd/\(fd)"
        _ = try retrying("chown", detail()) { Glibc.chown(magic, user, group) }
        _ = try retrying("chmod", detail()) { Glibc.chmod(magic, mode) }
    }

    /// ``setSocketFile(in:_:user:group:mode:detail:)`` for the socket at the absolute `path`: its
    /// directory is resolved once, the socket itself never through a link.
    package static func setSocketFile(_ path: String, user: uid_t, group: gid_t, mode: mode_t) throws(SocketShareError) {
        guard let (directoryPath, name) = splitPath(path) else {
            throw SocketShareError(.invalidArgument, operation: "prepare socket", detail: "\(path): not an absolute path")
        }
        let directory = try open(at: AT_FDCWD, directoryPath, pathOnly | O_DIRECTORY)
        defer { try? close(directory) }
        try setSocketFile(in: directory, name, user: user, group: group, mode: mode, detail: path)
    }

    /// Sets the mode of the directory at `path`, opened without following a link.
    package static func setDirectoryMode(_ path: String, _ mode: mode_t) throws(SocketShareError) {
        let fd = try open(at: AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        defer { try? close(fd) }
        try changeMode(fd, mode, detail: path)
    }

    /// The supplementary groups of the peer of the connected Unix socket `fd` at connect time
    /// (`SO_PEERGROUPS`, Linux 4.13); empty where the kernel does not say.
    package static func peerGroups(_ fd: CInt) -> [gid_t] {
        var groups = [gid_t](repeating: 0, count: 64)
        while true {
            var length = socklen_t(groups.count * MemoryLayout<gid_t>.size)
            if Glibc.getsockopt(fd, SOL_SOCKET, CS_SO_PEERGROUPS, &groups, &length) == 0 {
                return Array(groups.prefix(Int(length) / MemoryLayout<gid_t>.size))
            }
            guard Glibc.errno == ERANGE, groups.count < 65536 else { return [] }
            groups = [gid_t](repeating: 0, count: max(groups.count * 2, Int(length) / MemoryLayout<gid_t>.size))
        }
    }

    /// Whether `/proc/self/fd` can name an open directory, so that a path inside it can be reached
    /// through the descriptor rather than resolved again.
    package static let hasProcSelfFD: Bool = Glibc.access("/proc/self/fd", F_OK) == 0

    /// A path that reaches `name` inside the open directory `directory` without resolving the
    /// directory's own path again (`/proc/self/fd/N/name`); the plain `fallback` where `/proc` is
    /// not mounted.
    package static func path(of name: String, in directory: CInt, fallback: String) -> String {
        hasProcSelfFD ? "/proc/self/fd/\(directory)/\(name)" : fallback
    }

    /// Splits an absolute path into its directory and last component: `/run/x/a.sock` gives
    /// `("/run/x", "a.sock")`; nil for a relative path, or one that ends in `/`.
    package static func splitPath(_ path: String) -> (directory: String, name: String)? {
        guard path.hasPrefix("/"), let slash = path.lastIndex(of: "/") else { return nil }
        let name = String(path[path.index(after: slash)...])
        guard !name.isEmpty, name != ".", name != ".." else { return nil }
        return (slash == path.startIndex ? "/" : String(path[..<slash]), name)
    }

    /// Lifts the soft descriptor limit (`RLIMIT_NOFILE`) to the hard one, for a server whose every
    /// connection and held socket is a descriptor; returns the soft limit now.
    package static func raiseDescriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(CInt(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return Int(clamping: limit.rlim_cur)
    }
}
