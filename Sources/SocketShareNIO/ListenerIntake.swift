import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SocketShare
import SocketShareCore

/// Takes connections with SwiftNIO's own server channels: on listeners this process was given, or
/// on one it binds. Accepting, and setting each connection up, is SwiftNIO's accept path exactly.
///
/// Stopping closes this process's descriptors of the listeners only: connections still queued
/// stay with the socket for its other holders (and are reset only when the last one closes it).
final class ListenerIntake: ConnectionIntake {
    private let channels: [any Channel]

    private init(channels: [any Channel]) {
        self.channels = channels
    }

    /// Adopts `listeners` (which it owns from now on), keeping each one's listen backlog: SwiftNIO
    /// calls `listen(2)` again with 128 when it adopts a socket, and the backlog belongs to the
    /// socket, shared by every holder — so it is put back at once.
    static func start(
        listeners: [(name: String, socket: SocketDescriptor)], group: any EventLoopGroup, registry: ConnectionRegistry
    ) async throws -> ListenerIntake {
        var channels: [any Channel] = []
        var remaining = listeners[...]
        do {
            while let (name, socket) = remaining.popFirst() {
                let backlog = ListenBacklog.current(of: socket.rawValue) ?? ListenBacklog.systemMaximum
                let fd = socket.release()
                let channel = try await Self.bootstrap(group: group, registry: registry, listener: name).withBoundSocket(fd).get()
                channels.append(channel)
                try await channel.eventLoop.submit { try ListenBacklog.restore(fd, to: backlog) }.get()
                registry.logger.debug("accepting with SwiftNIO's server channel", metadata: ["listener": "\(name)"])
            }
        } catch {
            for (_, socket) in remaining { try? socket.close() }
            for channel in channels { channel.close(promise: nil) }
            throw error
        }
        return ListenerIntake(channels: channels)
    }

    /// Binds a listener of its own (`SO_REUSEADDR`, and `SO_REUSEPORT` when asked).
    static func bind(
        _ source: ConnectionSource.Kind, backlog: Int32, group: any EventLoopGroup, registry: ConnectionRegistry
    ) async throws -> ListenerIntake {
        var bootstrap = Self.bootstrap(group: group, registry: registry, listener: nil)
            .serverChannelOption(.backlog, value: backlog)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        let channel: any Channel
        switch source {
        case .bind(let host, let port, let reusePort):
            if reusePort {
                bootstrap = bootstrap.serverChannelOption(
                    ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_REUSEPORT)),
                    value: 1)
            }
            channel = try await bootstrap.bind(host: host, port: port).get()
        case .bindUnix(let path):
            channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        case .handoff, .listeners:
            preconditionFailure("ListenerIntake.bind takes a bind source")
        }
        registry.logger.debug("listening", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
        return ListenerIntake(channels: [channel])
    }

    /// The local addresses of the listeners.
    var localAddresses: [NIOCore.SocketAddress] { channels.compactMap(\.localAddress) }

    func stopTaking(_ done: @escaping @Sendable () -> Void) {
        let closed = channels.map { channel in channel.close().flatMapErrorThrowing { _ in } }
        guard let loop = channels.first?.eventLoop else { return done() }
        EventLoopFuture.andAllComplete(closed, on: loop).whenComplete { _ in done() }
    }

    func close() {
        for channel in channels { channel.close(promise: nil) }
    }

    /// Each accepted channel is counted in the server channel's own pipeline, before SwiftNIO sets
    /// it up (possibly on another event loop), so that a drain cannot miss one in between.
    private static func bootstrap(group: any EventLoopGroup, registry: ConnectionRegistry, listener: String?) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(CountAccepted(registry: registry))
                }
            }
            .childChannelInitializer { channel in registry.setUp(channel, listener: listener) }
    }

    /// Counts each accepted channel as it comes out of `accept`; closes it if the server has closed.
    private final class CountAccepted: ChannelInboundHandler {
        typealias InboundIn = any Channel
        let registry: ConnectionRegistry

        init(registry: ConnectionRegistry) { self.registry = registry }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let child = Self.unwrapInboundIn(data)
            guard registry.track(child) else {
                child.close(promise: nil)
                return
            }
            context.fireChannelRead(data)
        }
    }
}
