import Glibc

/// The private directory where SocketShare's rendezvous sockets live.
///
/// Rendezvous sockets are paths, never abstract names: an abstract name has no permissions, so any
/// process in the network namespace could connect (CVE-2020-15257, CVE-2022-42919). The directory is
/// `0700` and owned by us, so only our uid (and root) can reach the sockets inside; a broker may open
/// it to one group for cross-user sharing.
///
/// The default is, in order: `$SOCKSHARE_RUNTIME_DIR`; `$XDG_RUNTIME_DIR/sockshare`;
/// `/run/sockshare` for root; `/tmp/sockshare-UID`.
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
    /// effective uid, and closed to others; with `group`, it must belong to that group.
    package init(preparing path: String, group: gid_t? = nil) throws(SocketShareError) {
        guard path.hasPrefix("/") else {
            throw SocketShareError(.invalidArgument, operation: "runtime directory", detail: "\(path): not an absolute path")
        }
        let mode: mode_t = group == nil ? 0o700 : 0o710
        if try Kernel.makeDirectory(path, mode: mode) {
            if let group {
                guard chown(path, geteuid(), group) == 0 else {
                    throw SocketShareError.system("chown", errno: Glibc.errno, detail: "\(path) to group \(group)")
                }
            }
            // mkdir applies the umask; set the exact mode.
            guard chmod(path, group == nil ? 0o700 : 0o710) == 0 else {
                throw SocketShareError.system("chmod", errno: Glibc.errno, detail: path)
            }
        }
        guard let info = try Kernel.linkStatus(path) else {
            throw SocketShareError(.system, operation: "runtime directory", detail: "\(path) vanished")
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw SocketShareError(
                .permissionDenied, operation: "runtime directory",
                detail: "\(path) is not a directory (a symbolic link or a file is refused)")
        }
        guard info.st_uid == geteuid() else {
            throw SocketShareError(
                .permissionDenied, operation: "runtime directory",
                detail: "\(path) is owned by uid \(info.st_uid), not by us (uid \(geteuid())); refusing to use it")
        }
        let permissions = info.st_mode & 0o777
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
        } else if permissions & 0o070 != 0 {
            throw SocketShareError(
                .permissionDenied, operation: "runtime directory",
                detail: "\(path) has mode \(String(permissions, radix: 8)): its group may enter it; it must be 0700")
        }
        self.path = path
    }

    /// The path of an entry in the directory.
    package func appending(_ name: String) -> String { path + "/" + name }

    /// The directory's path.
    package var description: String { path }

    package static func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }
}
