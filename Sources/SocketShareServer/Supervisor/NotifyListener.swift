import CSocketShare
import Glibc
import SocketShare
import SocketShareCore

/// The receiving side of `sd_notify`: a datagram socket at a path in the runtime directory,
/// given to workers as `$NOTIFY_SOCKET`. The kernel attaches each sender's pid (`SO_PASSCRED`), so a
/// worker cannot speak for another.
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

    /// Closes the socket and removes its path.
    package func close() {
        try? socket.close()
        Kernel.unlink(path)
    }
}
