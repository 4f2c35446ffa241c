import Glibc

/// The sending side of systemd's readiness protocol (`sd_notify(3)`): newline-separated
/// `KEY=value` lines in one datagram to the Unix socket `$NOTIFY_SOCKET` names (a path, or an
/// abstract name written `@name`).
///
/// Workers say `READY=1` when they serve; `sockshare serve` itself tells its own service manager
/// `READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=…` and, after an upgrade, `MAINPID=`.
package struct SystemdNotifier: Sendable {
    /// The socket's address as `$NOTIFY_SOCKET` gives it.
    package let address: String

    /// A notifier for `$NOTIFY_SOCKET`, or nil when it is not set.
    package static func fromEnvironment() -> SystemdNotifier? {
        guard let address = RuntimeDirectory.environment("NOTIFY_SOCKET"), !address.isEmpty else { return nil }
        return SystemdNotifier(address: address)
    }

    /// A notifier for `address` (a path, or `@abstract`).
    package init(address: String) {
        self.address = address
    }

    /// Sends `state` (e.g. `"READY=1\nSTATUS=serving"`) as one datagram.
    ///
    /// - Throws: ``SocketShareError`` when the socket cannot be reached.
    package func notify(_ state: String) throws(SocketShareError) {
        let socket = try SocketDescriptor.socket(.unix, .datagram)
        defer { try? socket.close() }
        let target: SocketAddress = address.hasPrefix("@")
            ? .unixAbstract(name: Array(address.utf8.dropFirst())) : .unix(path: address)
        try Array(state.utf8).withBytes { (bytes) throws(SocketShareError) in
            try target.withSockAddr { (pointer, length) throws(SocketShareError) in
                _ = try Kernel.retrying("sendto", "NOTIFY_SOCKET=\(address)") {
                    sendto(socket.rawValue, bytes.baseAddress, bytes.count, Kernel.noSignal, pointer, length)
                }
            }
        }
    }

    /// Parses a notification into its `KEY=value` pairs (later keys win), as systemd does: lines end
    /// at each `\n` byte, a line without `=` is skipped. Any process may write to a supervisor's
    /// notify socket, so nothing here trusts the input; what it says is heeded only from a worker.
    package static func parse(_ bytes: [UInt8]) -> [String: String] {
        var fields: [String: String] = [:]
        for line in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
            guard let equals = line.firstIndex(of: UInt8(ascii: "=")) else { continue }
            fields[String(decoding: line[..<equals], as: UTF8.self)] = String(decoding: line[(equals + 1)...], as: UTF8.self)
        }
        return fields
    }
}
