import Glibc

/// The client's side of a rendezvous path: before a client says anything to the socket at a path
/// (a broker, a sharer, a supervisor's control or worker socket), it checks that the socket is
/// served by someone it has reason to trust, by the kernel's word.
///
/// 1. The socket's directory is opened without following a link (`Kernel.pathOnly | O_DIRECTORY |
///    O_NOFOLLOW`), and its owner and mode are read from that descriptor (`fstat`): it must not be
///    writable by anyone but its owner, and for a path the client did not name itself (the runtime
///    directory's), its owner must be the client's own user or root.
/// 2. The client connects through that descriptor (`/proc/self/fd/N/NAME`), so the directory it
///    checked is the one it reaches, whatever was renamed meanwhile.
/// 3. The peer (`SO_PEERCRED` of the listening process) must be the directory's owner or root.
///
/// So a stranger who made `/tmp/sockshare-1000` before uid 1000 did, and listens in it, is refused
/// with the reason, and the client never falls back to somewhere else an attacker could prepare.
package enum Rendezvous {
    /// Whom a client trusts to serve a path.
    package enum Trust: Sendable, Hashable {
        /// A path the client derived itself (the standard runtime directory's): the directory and
        /// the server must belong to the client's own user or to root.
        case ownUserOrRoot
        /// A path named explicitly (a command-line option, `$SOCKSHARE_BROKER`, a token's holder):
        /// the server must be the directory's owner (or root), whoever that is.
        case directoryOwner
    }

    /// Connects to the `SOCK_SEQPACKET` socket at `path` for `operation`, once the checks above hold.
    ///
    /// - Parameter absent: What it means that nothing listens there (`ENOENT`, `ECONNREFUSED`).
    /// - Throws: ``SocketShareError``: `holderGone` with `absent` when nothing listens;
    ///   `permissionDenied` when this user may not reach the path, or (cause
    ///   ``SocketShareError/Cause/untrustedRendezvous``) when the directory or the server fails a
    ///   check — the text says which; else the kernel's error.
    package static func connect(
        to path: String, trust: Trust, for operation: String, absent: @autoclosure () -> String
    ) throws(SocketShareError) -> DescriptorChannel {
        guard let (directoryPath, name) = Kernel.splitPath(path) else {
            throw SocketShareError(.invalidArgument, operation: operation, detail: "\(path): not an absolute path to a socket")
        }
        let directory: CInt
        do throws(SocketShareError) {
            directory = try Kernel.open(at: AT_FDCWD, directoryPath, Kernel.pathOnly | O_DIRECTORY | O_NOFOLLOW)
        } catch {
            switch error.errno?.rawValue {
            case ENOENT?:
                throw SocketShareError(.holderGone, operation: operation, errno: error.errno, detail: absent())
            case ELOOP?, ENOTDIR?:
                throw untrusted(operation, "\(directoryPath) is a symbolic link or not a directory; refusing to look for \(name) in it")
            case EACCES?:
                throw SocketShareError(
                    .permissionDenied, operation: operation, errno: error.errno,
                    detail: "\(path) is not reachable by this user (its directory is private to its owner's user or group)")
            default:
                throw error.within(operation, context: "open \(directoryPath)")
            }
        }
        defer { try? Kernel.close(directory) }
        let owner = try trustedOwner(of: directory, path: directoryPath, trust: trust, operation: operation)
        let channel: DescriptorChannel
        do throws(SocketShareError) {
            channel = try DescriptorChannel.connect(to: Kernel.path(of: name, in: directory, fallback: path))
        } catch {
            switch error.errno?.rawValue {
            case ENOENT?, ECONNREFUSED?:
                throw SocketShareError(.holderGone, operation: operation, errno: error.errno, detail: absent())
            case EACCES?:
                throw SocketShareError(
                    .permissionDenied, operation: operation, errno: error.errno,
                    detail: "\(path) is not reachable by this user (its directory is private to its owner's user or group)")
            default:
                throw error.within(operation, context: "connect to \(path)")
            }
        }
        do throws(SocketShareError) {
            let peer = try Kernel.peerCredentials(channel.socket.rawValue)
            guard peer.uid == owner || peer.uid == 0 else {
                throw untrusted(
                    operation,
                    "\(path) is served by uid \(peer.uid) (pid \(peer.pid)), not by the owner of \(directoryPath) (uid \(owner)) "
                        + "or root; refusing to talk to it")
            }
            return channel
        } catch {
            try? channel.close()
            throw error
        }
    }

    /// Checks the open directory `directory` and returns the uid that may serve sockets in it.
    private static func trustedOwner(
        of directory: CInt, path: String, trust: Trust, operation: String
    ) throws(SocketShareError) -> uid_t {
        let info = try Kernel.status(directory)
        let me = geteuid()
        if trust == .ownUserOrRoot, info.st_uid != me, info.st_uid != 0 {
            throw untrusted(
                operation,
                "\(path) is owned by uid \(info.st_uid), not by this user (uid \(me)) or root: someone else made it, and a "
                    + "socket in it could be anyone's; refusing it. Remove it, or point SOCKSHARE_RUNTIME_DIR at a "
                    + "directory of your own" + (me == 0 ? " (as root after su or sudo -E, unset XDG_RUNTIME_DIR)" : ""))
        }
        let mode = info.st_mode & 0o7777
        if mode & 0o022 != 0 {
            throw untrusted(
                operation,
                "\(path) has mode \(String(mode, radix: 8)): users other than its owner (uid \(info.st_uid)) may put "
                    + "sockets in it; refusing to trust one")
        }
        return info.st_uid
    }

    private static func untrusted(_ operation: String, _ detail: String) -> SocketShareError {
        SocketShareError(.permissionDenied, operation: operation, detail: detail, cause: .untrustedRendezvous)
    }
}
