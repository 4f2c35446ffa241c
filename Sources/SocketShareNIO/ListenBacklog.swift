import Glibc
import SocketShare
import SocketShareCore

/// A listening socket's backlog, as the kernel reports it. SwiftNIO calls `listen(2)` again on a
/// listener it adopts, and the backlog belongs to the socket, so every holder would get SwiftNIO's
/// default unless the adopter asks for the one the socket already has.
enum ListenBacklog {
    /// `/proc/sys/net/core/somaxconn`, or 4096 (its default since Linux 5.4).
    static var systemMaximum: Int32 {
        let fd = open("/proc/sys/net/core/somaxconn", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 4096 }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else { return 4096 }
        return Int32(String(decoding: buffer[0..<count], as: UTF8.self).filter(\.isNumber)) ?? 4096
    }

    /// The backlog a TCP listener has now (`TCP_INFO`'s `tcpi_sacked` holds `sk_max_ack_backlog`
    /// for a listening socket); nil for other sockets.
    static func current(of fd: CInt) -> Int32? {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(fd, CInt(IPPROTO_TCP), TCP_INFO, &info, &length) == 0, info.tcpi_state == 10 /* TCP_LISTEN */ else {
            return nil
        }
        return Int32(clamping: info.tcpi_sacked)
    }

    /// Calls `listen(2)` again, which on Linux sets the backlog of a listening socket.
    static func restore(_ fd: CInt, to backlog: Int32) throws(SocketShareError) {
        guard listen(fd, backlog) == 0 else {
            throw SocketShareError(.system, operation: "listen", errno: .init(rawValue: errno), detail: "restoring backlog \(backlog)")
        }
    }
}
