import Glibc
import NIOCore
import NIOPosix
import SocketShareCore

/// One way connections come into a ``ConnectionServer``: SwiftNIO's server channels, the handoff
/// channel, or an accepting thread. It hands each connection to ``ConnectionRegistry``.
protocol ConnectionIntake: Sendable {
    /// Takes no new connections; calls `done` once none will be delivered any more (a handoff
    /// worker waits for the dispatcher's `stop`, which follows the last connection it sent).
    func stopTaking(_ done: @escaping @Sendable () -> Void)

    /// Stops at once, without waiting for anyone (cancellation, or a drain past its deadline).
    func close()
}

/// Registers raw connection descriptors with SwiftNIO: each becomes a channel on one of the
/// group's event loops, set up by the server's initializer.
///
/// A batch costs one hop per event loop, not one per connection: descriptors for the loop the
/// caller runs on are registered in place, the others in one task per loop.
struct LoopRegistration: Sendable {
    let group: any EventLoopGroup
    let registry: ConnectionRegistry

    /// Registers `descriptors`, which it owns from now on; `listeners`, when given, names the
    /// listener each one came from (``ListenerName``).
    func register(_ descriptors: [CInt], listeners: [String]? = nil) {
        guard !descriptors.isEmpty else { return }
        registry.willRegister(descriptors.count)
        var byLoop: [(EventLoop, [(CInt, String?)])] = []
        for (index, fd) in descriptors.enumerated() {
            let loop = group.next()
            let entry = (fd, listeners.map { $0[index] })
            if let slot = byLoop.firstIndex(where: { $0.0 === loop }) {
                byLoop[slot].1.append(entry)
            } else {
                byLoop.append((loop, [entry]))
            }
        }
        let registry = self.registry
        for (loop, fds) in byLoop {
            if loop.inEventLoop {
                Self.register(fds, on: loop, registry: registry)
            } else {
                loop.execute { Self.register(fds, on: loop, registry: registry) }
            }
        }
    }

    private static func register(_ connections: [(CInt, String?)], on loop: EventLoop, registry: ConnectionRegistry) {
        func bootstrap(_ listener: String?) -> ClientBootstrap {
            ClientBootstrap(group: loop).channelInitializer { channel in
                do {
                    try channel.pipeline.syncOperations.addHandler(EndsOnClose())
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
                return registry.initialize(channel, listener: listener)
            }
        }
        let unnamed = bootstrap(nil)
        for (fd, listener) in connections {
            let bootstrap = listener.map { bootstrap($0) } ?? unnamed
            bootstrap.withConnectedSocket(fd).whenComplete { result in
                registry.didRegister()
                if case .failure(let error) = result {
                    registry.logger.debug("a handed-over connection could not be registered", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}

/// Ends a handed-over connection when the server closes it: `shutdown(SHUT_WR)`, then `close`.
///
/// A handed-over socket may have other descriptors than this process's: the dispatcher's copy until
/// the acknowledgement, or one still queued for a worker that stalled and was dropped (its
/// connections went to another worker). `close` alone sends the client nothing while any of those
/// lingers; the shutdown sends the FIN at once, so a client reading to the end is never kept waiting.
final class EndsOnClose: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = NIOAny

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all, context.channel.isActive { context.close(mode: .output, promise: nil) }
        context.close(mode: mode, promise: promise)
    }
}

