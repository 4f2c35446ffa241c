import Glibc
import SocketShare
import SocketShareCore

/// Where a ``ConnectionServer`` gets its connections: handed over by `sockshare serve`, accepted on
/// listeners this process was given, or accepted on a listener it binds itself.
///
/// An app is written once and runs in all three ways; ``fromEnvironment()`` picks the way the
/// process was started:
///
/// ```swift
/// let source = try ConnectionSource.fromEnvironment() ?? .bind(host: "127.0.0.1", port: 8080)
/// ```
public struct ConnectionSource: Sendable, CustomStringConvertible {
    enum Kind: Sendable {
        case handoff(SocketDescriptor)
        case listeners([(name: String, socket: SocketDescriptor)], shared: Bool)
        case bind(host: String, port: Int, reusePort: Bool)
        case bindUnix(path: String)
    }

    let kind: Kind

    /// Connections that `sockshare serve --mode handoff` accepts and hands to this worker over
    /// `channel`, the worker's end of its channel (docs/WORKERS.md). The server owns `channel`.
    ///
    /// Each connection arrives already accepted; the server acknowledges it before touching it, so
    /// that the dispatcher keeps its own copy, and gives it to another worker, if this one dies first.
    public static func handoff(channel: SocketDescriptor) -> ConnectionSource {
        ConnectionSource(kind: .handoff(channel))
    }

    /// Listening sockets this process was given (`LISTEN_FDS`, `sockshare serve --mode shared`, an
    /// adopted share). The server owns them, and closes its descriptors when it stops accepting;
    /// the sockets live on in their other holders.
    ///
    /// - Parameters:
    ///   - sockets: Listening stream sockets.
    ///   - names: Their names, for logs (`LISTEN_FDNAMES`); missing ones are "unknown".
    ///   - sharedWithOtherProcesses: Whether other processes accept on them too. The kernel then
    ///     wakes every waiter for one connection, and debug builds of SwiftNIO's server channel
    ///     assert when another process took it first (swift-nio#3500): with `true`, builds with
    ///     assertions enabled accept on a thread of their own instead. Release builds always use
    ///     SwiftNIO's own server channel.
    public static func listeners(
        _ sockets: [SocketDescriptor], names: [String] = [], sharedWithOtherProcesses: Bool = true
    ) -> ConnectionSource {
        let named = sockets.enumerated().map { index, socket in
            (name: index < names.count && !names[index].isEmpty ? names[index] : "unknown", socket: socket)
        }
        return ConnectionSource(kind: .listeners(named, shared: sharedWithOtherProcesses))
    }

    /// A TCP listener the server binds itself, as `ServerBootstrap.bind(host:port:)` does, with
    /// `SO_REUSEADDR` and, when `reusePort` is set, `SO_REUSEPORT` (several processes each with a
    /// listener of their own on one port).
    public static func bind(host: String, port: Int, reusePort: Bool = false) -> ConnectionSource {
        ConnectionSource(kind: .bind(host: host, port: port, reusePort: reusePort))
    }

    /// A Unix stream listener the server binds itself at `path`.
    public static func bind(unixDomainSocketPath path: String) -> ConnectionSource {
        ConnectionSource(kind: .bindUnix(path: path))
    }

    /// The source the environment names: handoff when `$SOCKSHARE_WORKER_FD` is set (`sockshare
    /// serve --mode handoff`), the listeners of `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` when they
    /// are meant for this process (systemd, `sockshare serve --mode shared`); nil when neither is.
    ///
    /// The variables are removed from the environment, and the descriptors made close-on-exec, so
    /// that programs this process starts do not take them for their own.
    ///
    /// - Throws: ``SocketShareError`` (`invalidArgument`) when a variable names no open descriptor
    ///   of the right kind.
    public static func fromEnvironment() throws(SocketShareError) -> ConnectionSource? {
        if let channel = try WorkerChannel.fromEnvironment() {
            unsetenv(WorkerChannel.environmentVariable)
            return .handoff(channel: channel)
        }
        let inherited = try SystemdListeners.inherited()
        if !inherited.isEmpty {
            return .listeners(inherited.map(\.socket), names: inherited.map(\.name), sharedWithOtherProcesses: true)
        }
        return nil
    }

    /// `handoff`, `shared` (listeners other processes accept on too), `listeners`, or `bind <address>`.
    public var description: String {
        switch kind {
        case .handoff: "handoff"
        case .listeners(_, let shared): shared ? "shared" : "listeners"
        case .bind(let host, let port, _): "bind \(host.contains(":") ? "[\(host)]" : host):\(port)"
        case .bindUnix(let path): "bind unix:\(path)"
        }
    }
}
