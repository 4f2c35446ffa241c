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

    /// Connections from a `sockshare serve --worker-socket PATH` this process was not started by
    /// (another container, another supervisor): connects to `path` and serves what serve hands over
    /// that connection, exactly as ``handoff(channel:)``. Serve sends nothing before the server says
    /// it is ready, and stops sending once it says it is leaving (graceful shutdown).
    ///
    /// The worker socket is checked before the worker trusts it (`docs/SECURITY.md`): its directory
    /// must not be writable by others, and serve (`SO_PEERCRED`) must be the directory's owner or root.
    ///
    /// - Throws: `SocketShareError`: `holderGone` when nothing serves at `path`; `permissionDenied`
    ///   when this user may not reach it, or when the socket fails those checks. A serve that refuses this process's uid or gid closes the
    ///   connection at once; the server then ends as if serve had stopped.
    public static func handoff(connectingTo path: String) throws(SocketShareError) -> ConnectionSource {
        try handoff(connectingTo: path, trust: .directoryOwner)
    }

    private static func handoff(connectingTo path: String, trust: Rendezvous.Trust) throws(SocketShareError) -> ConnectionSource {
        let channel = try Rendezvous.connect(
            to: path, trust: trust, for: "connect to serve", absent: "no sockshare serve answers at \(path) (is it running with --worker-socket?)")
        return .handoff(channel: channel.socket)
    }

    /// The variable naming a worker socket to connect to (``handoff(connectingTo:)``), read by
    /// ``fromEnvironment()``.
    public static let workerSocketVariable = "SOCKSHARE_WORKER_SOCKET"

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
    /// serve --mode handoff`), or `$SOCKSHARE_WORKER_SOCKET` names a serve's worker socket to connect
    /// to (an external worker), the listeners of `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` when they
    /// are meant for this process (systemd, `sockshare serve --mode shared`); nil when neither is.
    ///
    /// The variables are removed from the environment, and the descriptors made close-on-exec, so
    /// that programs this process starts do not take them for their own.
    ///
    /// - Throws: `SocketShareError` (`invalidArgument`) when a variable names no open descriptor
    ///   of the right kind.
    public static func fromEnvironment() throws(SocketShareError) -> ConnectionSource? {
        if let channel = try WorkerChannel.fromEnvironment() {
            unsetenv(WorkerChannel.environmentVariable)
            return .handoff(channel: channel)
        }
        if let path = RuntimeDirectory.environment(workerSocketVariable), !path.isEmpty {
            unsetenv(workerSocketVariable)
            // Root's environment may have been set by another user (`sudo -E`): root trusts a path
            // from it only in a directory of its own.
            return try .handoff(connectingTo: path, trust: geteuid() == 0 ? .ownUserOrRoot : .directoryOwner)
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
