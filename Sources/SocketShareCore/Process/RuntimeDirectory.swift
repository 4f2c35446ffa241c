import Glibc

/// The private directory where SocketShare's rendezvous sockets live.
///
/// Rendezvous sockets are paths, never abstract names: an abstract name has no permissions, so any
/// process in the network namespace could connect (CVE-2020-15257, CVE-2022-42919). The directory is
/// `0700` and owned by us, so only our uid (and root) can reach the sockets inside; a broker may open
/// it to one group for cross-user sharing.
///
/// The directory is made and checked through a descriptor (`mkdirat`, then `openat` with
/// `O_NOFOLLOW | O_DIRECTORY`, then `fstat`, `fchown`, `fchmod`), never by path, so a process that
/// swaps it for a symbolic link between the two steps changes nothing of anyone else's. Clients check
/// it the same way before they trust a socket in it (``Rendezvous``).
///
/// The default is, in order: `$SOCKSHARE_RUNTIME_DIR`; `$XDG_RUNTIME_DIR/sockshare`;
/// `/run/sockshare` for root; `/tmp/sockshare-UID`. Whichever it is, it must be owned by this user
/// (or root) and closed to others; a squatted one is refused, never replaced by another.
package struct RuntimeDirectory: Sendable, Hashable, CustomStringConvertible {
    /// The directory's path.
    package let path: String

    /// The default directory for this process (see the type's documentation), created if missing.
    ///
    /// - Throws: ``SocketShareError`` with code `permissionDenied` when the directory exists but is
    ///   not ours or is open to others.
    package static func standard() throws(SocketShareError) -> RuntimeDirectory {
        try RuntimeDirectory(preparing: standardPath)
    }

    /// The default path, without creating or checking anything.
    package static var standardPath: String {
        if let explicit = environment("SOCKSHARE_RUNTIME_DIR"), !explicit.isEmpty { return explicit }
        if let xdg = environment("XDG_RUNTIME_DIR"), !xdg.isEmpty { return xdg + "/sockshare" }
        if geteuid() == 0 { return "/run/sockshare" }
        return "/tmp/sockshare-\(geteuid())"
    }

    /// Uses `path` as the runtime directory, creating it (mode `0700`, or `0710` — group may enter, not list —
    /// when `group` is given) if it does not exist, and checking it if it does.
    ///
    /// The directory must be a real directory (not a symbolic link), owned by this process's
    /// effective uid, and closed to others; with `group`, it must belong to that group. Its parent
    /// is resolved as a path; the directory itself only through the descriptor opened on it.
    package init(preparing path: String, group: gid_t? = nil) throws(SocketShareError) {
        guard let (parentPath, name) = Kernel.splitPath(path) else {
            throw SocketShareError(.invalidArgument, operation: "runtime directory", detail: "\(path): not an absolute path to a directory")
        }
        let mode: mode_t = group == nil ? 0o700 : 0o710
        let parent = try Kernel.open(at: AT_FDCWD, parentPath, Kernel.pathOnly | O_DIRECTORY)
        defer { try? Kernel.close(parent) }
        let created = try Kernel.makeDirectory(at: parent, name, mode: mode)
        let fd: CInt
        do throws(SocketShareError) {
            fd = try Kernel.open(at: parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        } catch where [ELOOP, ENOTDIR].contains(error.errno?.rawValue ?? 0) {
            throw SocketShareError(
                .permissionDenied, operation: "runtime directory",
                detail: "\(path) is not a directory (a symbolic link or a file is refused)")
        } catch where error.errno?.rawValue == EACCES {
            // Someone else's directory, closed to us: say whose, as for one we can open.
            var info = stat()
            if fstatat(parent, name, &info, AT_SYMLINK_NOFOLLOW) == 0, info.st_uid != geteuid() {
                throw SocketShareError(
                    .permissionDenied, operation: "runtime directory",
                    detail: "\(path) is owned by uid \(info.st_uid), not by us (uid \(geteuid())); refusing to use it "
                        + "(someone else made it: remove it, or point SOCKSHARE_RUNTIME_DIR at a directory of your own)")
            }
            throw error
        }
        defer { try? Kernel.close(fd) }
        if created {
            if let group { try Kernel.changeOwner(fd, user: geteuid(), group: group, detail: "\(path) to group \(group)") }
            // mkdir applies the umask; set the exact mode.
            try Kernel.changeMode(fd, mode, detail: path)
        }
        try Self.check(try Kernel.status(fd), path: path, group: group)
        self.path = path
    }

    /// The checks of a directory the caller owns: ours, closed to others, and of `group` when given.
    private static func check(_ info: stat, path: String, group: gid_t?) throws(SocketShareError) {
        guard info.st_uid == geteuid() else {
            throw SocketShareError(
                .permissionDenied, operation: "runtime directory",
                detail: "\(path) is owned by uid \(info.st_uid), not by us (uid \(geteuid())); refusing to use it")
        }
        let permissions = info.st_mode & 0o7777
        if permissions & 0o007 != 0 {
            throw SocketShareError(
                .permissionDenied, operation: "runtime directory",
                detail: "\(path) has mode \(String(permissions, radix: 8)): others may enter it; it must be 0700")
        }
        if let group {
            guard info.st_gid == group else {
                throw SocketShareError(
                    .permissionDenied, operation: "runtime directory",
                    detail: "\(path) belongs to group \(info.st_gid), not \(group)")
            }
            if permissions & 0o020 != 0 {
                throw SocketShareError(
                    .permissionDenied, operation: "runtime directory",
                    detail: "\(path) has mode \(String(permissions, radix: 8)): its group may write to it; it must be 0710")
            }
        } else if permissions & 0o070 != 0 {
            throw SocketShareError(
                .permissionDenied, operation: "runtime directory",
                detail: "\(path) has mode \(String(permissions, radix: 8)): its group may enter it; it must be 0700")
        }
    }

    /// Checks, before a server binds a socket at the absolute `path` someone named (a control or
    /// worker socket outside the runtime directory), that nobody but the directory's owner could
    /// replace it there: the directory, opened without following a link, must not be writable by
    /// group or others, and must be this user's or root's. Clients refuse such directories too
    /// (``Rendezvous``), so a socket there would serve nobody.
    package static func checkForSockets(_ path: String, operation: String, role: String) throws(SocketShareError) {
        guard let (directoryPath, _) = Kernel.splitPath(path) else {
            throw SocketShareError(.invalidArgument, operation: operation, detail: "\(role) \(path): not an absolute path")
        }
        let directory = try Kernel.open(at: AT_FDCWD, directoryPath, Kernel.pathOnly | O_DIRECTORY | O_NOFOLLOW)
        defer { try? Kernel.close(directory) }
        let info = try Kernel.status(directory)
        let mode = info.st_mode & 0o7777
        guard info.st_uid == geteuid() || info.st_uid == 0 else {
            throw SocketShareError(
                .permissionDenied, operation: operation,
                detail: "\(role) \(path): \(directoryPath) is owned by uid \(info.st_uid), not by this user or root")
        }
        guard mode & 0o022 == 0 else {
            throw SocketShareError(
                .permissionDenied, operation: operation,
                detail: "\(role) \(path): \(directoryPath) has mode \(String(mode, radix: 8)), so others could replace the "
                    + "socket; put it in a directory only its owner may write to")
        }
    }

    /// The path of an entry in the directory.
    package func appending(_ name: String) -> String { path + "/" + name }

    /// The directory's path.
    package var description: String { path }

    package static func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }
}
