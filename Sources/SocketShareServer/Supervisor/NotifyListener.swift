import CSocketShare
import Glibc
import SocketShare
import SocketShareCore

/// The receiving side of `sd_notify`: a datagram socket given to workers as `$NOTIFY_SOCKET`. The
/// kernel attaches each sender's pid (`SO_PASSCRED`), so a worker cannot speak for another, and the
/// supervisor heeds only pids it knows as its workers.
///
/// As systemd's own `/run/systemd/notify`, the socket is one anyone may write to: workers often run
/// under another uid than serve (`setpriv --reuid nobody`, the privilege-separation pattern), and
/// the control socket's private directory would shut them out. Run as root, serve therefore puts it
/// in a directory of its own, `/run/sockshare-notify-XXXXXX` (random, mode 0711: others may pass,
/// not list), with the socket mode 0666. Other users' processes can reach it, but what they say is
/// dropped: their pids are not workers'. Without root, workers cannot run as another uid anyway, and
/// the socket stays beside the control socket.
package final class NotifyListener: Sendable {
    package let socket: SocketDescriptor
    package let path: String

    /// Binds a datagram socket at `path` (removing a stale one).
    package init(path: String) throws(SocketShareError) {
        Kernel.unlink(path)
        let socket = try SocketDescriptor.listening(on: .unix(path: path), kind: .datagram)
        do throws(SocketShareError) {
            _ = try Kernel.retrying("setsockopt(SO_PASSCRED)") { cs_enable_passcred(socket.rawValue) }
        } catch {
            try? socket.close()
            Kernel.unlink(path)
            throw error
        }
        self.socket = socket
        self.path = path
    }

    /// Serves on a socket a predecessor bound at `path`.
    package init(socket: SocketDescriptor, path: String) {
        self.socket = socket
        self.path = path
    }

    /// Reads every notification waiting: (sender pid, fields).
    package func drain() -> [(pid: pid_t, fields: [String: String])] {
        var notifications: [(pid_t, [String: String])] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            var sender: pid_t = 0
            let count = buffer.withUnsafeMutableBytes { cs_recv_with_sender(socket.rawValue, $0.baseAddress, $0.count, &sender) }
            if count < 0 {
                if errno == EINTR { continue }
                return notifications
            }
            notifications.append((sender, SystemdNotifier.parse(Array(buffer[0..<count]))))
        }
    }

    /// Binds the notify socket for a supervisor whose control socket is `controlPath`: as root, in a
    /// fresh directory anyone may pass through (see the type's documentation); otherwise beside the
    /// control socket, as `NAME.notify`.
    package convenience init(forControlSocket controlPath: String) throws(SocketShareError) {
        guard geteuid() == 0, let directory = Self.openDirectory() else {
            try self.init(path: Self.privatePath(for: controlPath))
            return
        }
        let path = directory + "/notify"
        do throws(SocketShareError) {
            try self.init(path: path)
        } catch {
            rmdir(directory)
            throw error
        }
        do throws(SocketShareError) {
            try Kernel.setSocketFile(path, user: geteuid(), group: getegid(), mode: 0o666)
        } catch {
            close()
            throw error
        }
    }

    /// `NAME.notify` beside the control socket `NAME.sock`.
    package static func privatePath(for controlPath: String) -> String {
        (controlPath.hasSuffix(".sock") ? String(controlPath.dropLast(5)) : controlPath) + ".notify"
    }

    /// The prefix of the directories made for notify sockets others may write to.
    static let directoryPrefix = "sockshare-notify-"

    /// A fresh `sockshare-notify-XXXXXX` directory, mode 0711, in `/run` (else `/tmp`); nil when
    /// neither takes one. Directories a serve killed with `SIGKILL` left behind are removed first.
    private static func openDirectory() -> String? {
        for base in ["/run", "/tmp"] {
            removeStaleDirectories(in: base)
            var template = Array("\(base)/\(directoryPrefix)XXXXXX".utf8CString)
            let made = template.withUnsafeMutableBufferPointer { buffer -> String? in
                guard let path = mkdtemp(buffer.baseAddress!) else { return nil }
                return String(cString: path)
            }
            guard let made else { continue }
            guard (try? Kernel.setDirectoryMode(made, 0o711)) != nil else {
                rmdir(made)
                continue
            }
            return made
        }
        return nil
    }

    /// Removes the notify directories in `base` whose socket nobody serves any more (their serve
    /// was killed before it could clean up): ours, and refusing a datagram (`ECONNREFUSED`). One
    /// being set up (no socket yet) or in use (the send is accepted) is left alone.
    private static func removeStaleDirectories(in base: String) {
        for name in Kernel.directoryEntries(base) where name.hasPrefix(directoryPrefix) {
            let directory = base + "/" + name
            let path = directory + "/notify"
            guard let info = try? Kernel.linkStatus(directory), info.st_uid == geteuid(),
                  let socketInfo = try? Kernel.linkStatus(path), socketInfo.st_mode & S_IFMT == S_IFSOCK,
                  let probe = try? SocketDescriptor.socket(.unix, .datagram) else { continue }
            var refused = false
            do throws(SocketShareError) {
                try Kernel.connect(probe.rawValue, to: .unix(path: path))
            } catch {
                refused = error.errno?.rawValue == ECONNREFUSED
            }
            try? probe.close()
            if refused {
                Kernel.unlink(path)
                rmdir(directory)
            }
        }
    }

    /// Closes the socket and removes its path (and its own directory, when it has one).
    package func close() {
        try? socket.close()
        Kernel.unlink(path)
        if let slash = path.lastIndex(of: "/") {
            let directory = String(path[..<slash])
            if directory.split(separator: "/").last?.hasPrefix(Self.directoryPrefix) == true { rmdir(directory) }
        }
    }
}
