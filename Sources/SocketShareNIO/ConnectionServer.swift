import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
import SocketShare
import SocketShareCore

/// Serves connections with SwiftNIO, wherever they come from — handed over by `sockshare serve
/// --mode handoff`, accepted on listeners this process was given (`sockshare serve --mode shared`,
/// systemd), or accepted on a listener it binds itself — as a swift-service-lifecycle `Service`.
///
/// The app is written once: each connection becomes a channel set up by `childChannelInitializer`,
/// as with `ServerBootstrap`, and (optionally) handled by `handler` in a task of its own, as
/// Hummingbird's `Server` does. Only the ``ConnectionSource`` differs.
///
/// ```swift
/// let server = ConnectionServer(
///     source: try .fromEnvironment() ?? .bind(host: "127.0.0.1", port: 8080),
///     logger: logger
/// ) { channel in
///     channel.eventLoop.makeCompletedFuture {
///         try channel.pipeline.syncOperations.configureHTTPServerPipeline()
///         try channel.pipeline.syncOperations.addHandler(Greeter())
///     }
/// }
/// let group = ServiceGroup(configuration: .init(
///     services: [.init(service: server, successTerminationBehavior: .gracefullyShutdownGroup)],
///     gracefulShutdownSignals: [.sigterm], logger: logger))
/// try await group.run()
/// ```
///
/// `successTerminationBehavior: .gracefullyShutdownGroup`: when `sockshare serve` retires this
/// worker (a reload), ``run()`` returns once drained, and the whole process should then end —
/// ServiceGroup's default would report the early return as a failure.
///
/// ``run()`` serves until:
/// - **graceful shutdown** (ServiceLifecycle): the server takes no new connections (a handoff
///   worker tells the dispatcher it is leaving; listeners stop being accepted on, their queued
///   connections left to the other holders), asks each open channel to quiesce
///   (`ChannelShouldQuiesceEvent`), waits for them to close — at most
///   ``Configuration/drainTimeout``, then closes what is left — and returns;
/// - the dispatcher says `stop` (a reload retired this worker) or goes away: the same drain;
/// - **cancellation**: every channel is closed at once, and `run()` returns.
///
/// The server installs no signal handler: that is the `ServiceGroup`'s job
/// (`gracefulShutdownSignals`).
public final class ConnectionServer<Output: Sendable>: Service, Sendable {
    /// How a ``ConnectionServer`` behaves.
    public struct Configuration: Sendable {
        /// How long a graceful shutdown waits for the open connections to finish before it closes
        /// them.
        public var drainTimeout: Duration
        /// Whether the server says it is ready once it takes connections: `ready` to the
        /// dispatcher (handoff; a reload waits for it), `READY=1` on `$NOTIFY_SOCKET` otherwise
        /// (`sockshare serve --mode shared`, systemd's `Type=notify`).
        public var announcesReadiness: Bool
        /// The listen backlog of a listener the server binds itself. Listeners it was given keep
        /// their own.
        public var backlog: Int32
        /// Whether each connection's pipeline starts with a ``ListenerName`` handler naming the
        /// listener it came from (`sockshare serve --listen NAME=ADDR`, `LISTEN_FDNAMES`). Off by
        /// default: it costs a handler per connection.
        public var namesListeners: Bool
        /// Called once the server takes connections, with the listeners' local addresses (none in
        /// handoff mode), before ``ConnectionServer/run()`` goes on serving.
        public var onServing: (@Sendable ([NIOCore.SocketAddress]) async -> Void)?

        /// Creates a configuration.
        public init(
            drainTimeout: Duration = .seconds(30), announcesReadiness: Bool = true, backlog: Int32 = 4096,
            namesListeners: Bool = false, onServing: (@Sendable ([NIOCore.SocketAddress]) async -> Void)? = nil
        ) {
            self.drainTimeout = drainTimeout
            self.announcesReadiness = announcesReadiness
            self.backlog = backlog
            self.namesListeners = namesListeners
            self.onServing = onServing
        }
    }

    private let source: ConnectionSource
    private let group: any EventLoopGroup
    private let configuration: Configuration
    private let logger: Logger
    private let registry: ConnectionRegistry
    private let outputs: AsyncStream<Output>?
    private let outputsContinuation: AsyncStream<Output>.Continuation?
    private let handler: (@Sendable (Output) async -> Void)?
    private let state = NIOLockedValueBox<(started: Bool, intake: (any ConnectionIntake)?, addresses: [NIOCore.SocketAddress])>(
        (false, nil, []))

    /// A server that sets each connection's channel up with `childChannelInitializer` and then
    /// runs `handler` with the result, in a child task of ``run()``.
    ///
    /// - Parameters:
    ///   - source: Where the connections come from; the server owns its descriptors.
    ///   - group: The event loops the connections are served on.
    ///   - configuration: Drain timeout, readiness, backlog.
    ///   - logger: Where the server logs (it makes no logger of its own).
    ///   - childChannelInitializer: Sets up each connection's channel, on its event loop, before it
    ///     is active — typically wrapping it in an `NIOAsyncChannel`.
    ///   - handler: Serves one connection; the task ends when it returns.
    public convenience init(
        source: ConnectionSource, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        configuration: Configuration = Configuration(), logger: Logger,
        childChannelInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Output>,
        handler: @escaping @Sendable (Output) async -> Void
    ) {
        self.init(
            source: source, group: group, configuration: configuration, logger: logger,
            initializer: childChannelInitializer, handler: handler)
    }

    private init(
        source: ConnectionSource, group: any EventLoopGroup, configuration: Configuration, logger: Logger,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Output>,
        handler: (@Sendable (Output) async -> Void)?
    ) {
        self.source = source
        self.group = group
        self.configuration = configuration
        self.logger = logger
        self.handler = handler
        if handler != nil {
            let (outputs, continuation) = AsyncStream.makeStream(of: Output.self)
            self.outputs = outputs
            self.outputsContinuation = continuation
            self.registry = ConnectionRegistry(logger: logger, namesListeners: configuration.namesListeners) { channel in
                initializer(channel).flatMapThrowing { output in
                    try ConnectionDrain.install(on: channel)
                    _ = continuation.yield(output)
                }
            }
        } else {
            self.outputs = nil
            self.outputsContinuation = nil
            self.registry = ConnectionRegistry(logger: logger, namesListeners: configuration.namesListeners) { channel in
                initializer(channel).flatMapThrowing { _ in try ConnectionDrain.install(on: channel) }
            }
        }
    }

    /// The listening sockets' local addresses once ``run()`` has started accepting on them (empty in
    /// handoff mode, and before).
    public var localAddresses: [NIOCore.SocketAddress] { state.withLockedValue { $0.addresses } }

    /// How many connections are open: taken, and not yet closed.
    public var openConnectionCount: Int { registry.openCount }

    /// Serves until graceful shutdown, cancellation, or the dispatcher's `stop`; then drains (see
    /// the type's documentation) and returns.
    ///
    /// - Throws: `SocketShareError` or SwiftNIO's errors when the source cannot be set up (a
    ///   `bind` that fails, a handoff channel that is not one); `invalidArgument` when called twice.
    public func run() async throws {
        let first = state.withLockedValue { state -> Bool in
            defer { state.started = true }
            return !state.started
        }
        guard first else {
            throw SocketShareError(.invalidArgument, operation: "serve connections", detail: "run() was called twice")
        }
        let (finished, finishedContinuation) = AsyncStream.makeStream(of: Void.self)
        let outputsContinuation = self.outputsContinuation
        registry.onFinish {
            outputsContinuation?.finish()
            finishedContinuation.finish()
        }
        registry.onDrain { [weak self] in self?.scheduleDrainDeadline() }

        let intake = try await startIntake()
        state.withLockedValue { $0.intake = intake }
        if case .handoff = source.kind {
            // serve owns the listeners; this process is handed connections, and has no address.
            logger.info("serving connections", metadata: ["source": "\(source)"])
        } else {
            logger.info("serving connections", metadata: [
                "source": "\(source)", "addresses": "\(localAddresses.map { "\($0)" }.joined(separator: " "))",
            ])
        }
        await configuration.onServing?(localAddresses)

        // Both streams end when the registry finishes: nothing left open, and nothing more coming.
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withDiscardingTaskGroup { tasks in
                    if let outputs, let handler {
                        for await output in outputs {
                            tasks.addTask { await handler(output) }
                        }
                    } else {
                        for await _ in finished {}
                    }
                }
            } onGracefulShutdown: { [weak self] in
                self?.shutDownGracefully()
            }
        } onCancel: { [weak self] in
            self?.closeNow(reason: "cancelled")
        }
        logger.info("stopped serving connections")
    }

    /// Stops taking connections and drains the open ones.
    private func shutDownGracefully() {
        guard registry.beginDrain(), let intake = state.withLockedValue({ $0.intake }) else { return }
        logger.info("graceful shutdown: taking no new connections, draining the open ones", metadata: [
            "open": "\(registry.openCount)",
        ])
        let registry = self.registry
        intake.stopTaking { registry.intakeEnded() }
    }

    /// Closes everything at once.
    private func closeNow(reason: String) {
        let intake = state.withLockedValue { $0.intake }
        intake?.close()
        let closed = registry.closeAll()
        registry.intakeEnded()
        if closed > 0 { logger.notice("closed \(closed) open connections: \(reason)") }
    }

    /// Past the drain timeout, whatever is still open is closed.
    private func scheduleDrainDeadline() {
        let timeout = configuration.drainTimeout
        let nanoseconds = timeout.components.seconds * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000
        group.next().scheduleTask(in: .nanoseconds(nanoseconds)) { [weak self] in
            guard let self, !registry.isFinished else { return }
            closeNow(reason: "the drain timeout (\(timeout)) passed")
        }
    }

    private func startIntake() async throws -> any ConnectionIntake {
        let registration = LoopRegistration(group: group, registry: registry)
        let announce = configuration.announcesReadiness
        switch source.kind {
        case .handoff(let channel):
            return try await HandoffIntake.start(channel: channel, registration: registration, announce: announce, logger: logger)
        case .listeners(let listeners, let shared):
            let addresses = try Self.checkListening(listeners)
            let intake: any ConnectionIntake
            if shared && AcceptThread.assertionsEnabled {
                intake = try AcceptThread.start(listeners: listeners, registration: registration, logger: logger)
                state.withLockedValue { $0.addresses = addresses.compactMap(Self.nioAddress) }
            } else {
                let listening = try await ListenerIntake.start(listeners: listeners, group: group, registry: registry)
                state.withLockedValue { $0.addresses = listening.localAddresses }
                intake = listening
            }
            announceToServiceManager(announce)
            return intake
        case .bind:
            let listening = try await ListenerIntake.bind(source.kind, backlog: configuration.backlog, group: group, registry: registry)
            state.withLockedValue { $0.addresses = listening.localAddresses }
            announceToServiceManager(announce)
            return listening
        case .bindUnix:
            let listening = try await ListenerIntake.bind(source.kind, backlog: configuration.backlog, group: group, registry: registry)
            state.withLockedValue { $0.addresses = listening.localAddresses }
            announceToServiceManager(announce)
            return listening
        }
    }

    /// Checks that every socket given as a listener listens for stream connections (a socket of
    /// `LISTEN_FDS` may be anything its sender chose); the error names the first that does not.
    /// Returns their local addresses.
    private static func checkListening(
        _ listeners: [(name: String, socket: SocketDescriptor)]
    ) throws(SocketShareError) -> [SocketShareCore.SocketAddress] {
        var addresses: [SocketShareCore.SocketAddress] = []
        for (index, listener) in listeners.enumerated() {
            let description: SocketDescription
            do throws(SocketShareError) {
                description = try listener.socket.socketDescription()
            } catch {
                throw SocketShareError(
                    .invalidArgument, operation: "serve connections",
                    detail: "listener \(index) (\(listener.name), descriptor \(listener.socket.rawValue)) is not a socket: \(error.detail)")
            }
            guard description.kind == .stream, description.isListening else {
                throw SocketShareError(
                    .invalidArgument, operation: "serve connections",
                    detail: "listener \(index) (\(listener.name), descriptor \(listener.socket.rawValue)) is \(description), "
                        + "not a listening stream socket: this server accepts connections")
            }
            addresses.append(description.localAddress)
        }
        return addresses
    }

    /// The same address as SwiftNIO spells it (nil for a Unix socket with no path).
    private static func nioAddress(_ address: SocketShareCore.SocketAddress) -> NIOCore.SocketAddress? {
        switch address {
        case .ipv4(let host, let port), .ipv6(let host, let port, _): try? NIOCore.SocketAddress(ipAddress: host, port: Int(port))
        case .unix(let path): try? NIOCore.SocketAddress(unixDomainSocketPath: path)
        case .unixAbstract, .unixUnnamed: nil
        }
    }

    private func announceToServiceManager(_ announce: Bool) {
        guard announce, let notifier = SystemdNotifier.fromEnvironment() else { return }
        do {
            try notifier.notify("READY=1\nSTATUS=serving connections")
        } catch {
            logger.warning("could not tell the service manager this process is ready", metadata: ["error": "\(error)"])
        }
    }
}

extension ConnectionServer where Output == Void {
    /// A server whose connections are served by the channel handlers `childChannelInitializer`
    /// adds, as with `ServerBootstrap.childChannelInitializer`: no task per connection.
    ///
    /// - Parameters:
    ///   - source: Where the connections come from; the server owns its descriptors.
    ///   - group: The event loops the connections are served on.
    ///   - configuration: Drain timeout, readiness, backlog.
    ///   - logger: Where the server logs.
    ///   - childChannelInitializer: Sets up each connection's channel, on its event loop.
    public convenience init(
        source: ConnectionSource, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        configuration: Configuration = Configuration(), logger: Logger,
        childChannelInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) {
        self.init(
            source: source, group: group, configuration: configuration, logger: logger,
            initializer: childChannelInitializer, handler: nil)
    }
}
