import Glibc
import Logging
import ServiceLifecycle
import SocketShare
import SocketShareCore

/// Runs worker processes on shared listeners, or hands them each accepted connection: it binds the
/// listeners, starts the workers with exactly the descriptors they need, restarts the ones that
/// crash, reloads them without losing a connection, hands itself over to a new binary, and stops
/// gracefully. `sockshare serve` is this type behind a command line.
///
/// - **shared** mode: every worker gets every listener at descriptors 3… with `LISTEN_FDS`,
///   `LISTEN_PID` and `LISTEN_FDNAMES`, so any server that supports systemd socket activation
///   works unchanged; the kernel spreads connections among the workers' `accept` calls.
/// - **handoff** mode: a dispatcher accepts and hands each connection to a worker, which
///   receives them through `ConnectionServer` of SocketShareNIO (or `docs/WORKERS.md` in any
///   language) on the channel at `$SOCKSHARE_WORKER_FD`. No connection is lost when a worker dies.
///
/// A **reload** (``reload(deadline:)``, or `reload` on the control socket) starts a new generation
/// of workers on the same listeners; once every one of them says it is ready (`READY=1` on
/// `$NOTIFY_SOCKET`, or the worker protocol's `ready`), new connections go only to it and the old
/// generation drains. If the new generation is not ready by the deadline, or one of its workers
/// exits first, it is stopped and the old one serves on untouched. An **upgrade**
/// (``upgrade(binary:deadline:)``) starts a new supervisor binary and hands it the listeners, the
/// worker channels and the state; the workers keep running.
///
/// A `Service`: graceful shutdown (or cancellation) drains it — no new connections, the workers
/// finish within the drain timeout, then `SIGTERM`, then `SIGKILL`. Signals are the program's to
/// map: `sockshare serve` maps `SIGTERM`/`SIGINT` to graceful shutdown, `SIGHUP` to a reload and
/// `SIGUSR2` to an upgrade.
///
/// Threads: one reactor thread runs everything (the control socket, readiness notifications,
/// worker exits through their pidfds, timers); the dispatcher runs on a reactor of its own.
public final class Supervisor: Service, @unchecked Sendable {
    /// How connections reach workers.
    public enum Mode: String, Sendable, CaseIterable, Codable {
        /// Workers accept on the shared listeners themselves (systemd socket activation).
        case shared
        /// The supervisor accepts and hands each connection to a worker.
        case handoff
    }

    /// How a worker shows it is ready.
    public enum Readiness: String, Sendable, CaseIterable, Codable {
        /// `READY=1` on `$NOTIFY_SOCKET` (sd_notify), or the worker protocol's `ready` message.
        case notify
        /// Ready as soon as it is started. A reload then cannot tell a broken new version.
        case none
    }

    /// How workers are picked for handed-off connections.
    public enum Policy: String, Sendable, CaseIterable, Codable {
        /// In turn.
        case roundRobin = "rr"
        /// The worker with the fewest connections in flight.
        case leastLoaded = "least"
    }

    /// How a supervisor runs.
    public struct Configuration: Sendable, Codable {
        /// The listeners to bind (ignored when the service manager passed some in).
        public var listeners: [ListenerSpecification]
        /// How many workers run at once.
        public var workers: Int
        /// Shared listeners or handoff.
        public var mode: Mode
        /// How handed-off connections pick a worker.
        public var policy: Policy
        /// The worker program and its arguments.
        public var command: [String]
        /// The control socket; nil picks `serve-PID.sock` in the runtime directory.
        public var controlPath: String?
        /// Who besides serve's own user and root may use the control socket.
        public var controlAccess: ControlAccess
        /// How long a stop, or a reload's old generation, waits for workers to finish before `SIGTERM`
        /// (and `SIGKILL` 2 s later).
        public var drainTimeout: Duration
        /// How long a worker may leave a connection unacknowledged before it is killed (handoff).
        public var stallTimeout: Duration
        /// The most connections in flight to one worker (handoff).
        public var maximumInFlightPerWorker: Int
        /// The `listen(2)` backlog of the listeners.
        public var backlog: CInt
        /// How workers show they are ready.
        public var readiness: Readiness
        /// How long a reload (or an upgrade) may take before it is rolled back, when the request
        /// does not say.
        public var reloadDeadline: Duration
        /// Where workers serve did not start may connect (handoff mode); nil for none. With it,
        /// ``workers`` may be 0 (and ``command`` empty): serve then only hands connections to them.
        public var externalWorkers: ExternalWorkers?

        /// Creates a configuration.
        public init(
            listeners: [ListenerSpecification], workers: Int, mode: Mode, policy: Policy = .roundRobin,
            command: [String], controlPath: String? = nil, controlAccess: ControlAccess = ControlAccess(), drainTimeout: Duration = .seconds(10),
            stallTimeout: Duration = .seconds(5), maximumInFlightPerWorker: Int = 256, backlog: CInt = 4096,
            readiness: Readiness = .notify, reloadDeadline: Duration = .seconds(30), externalWorkers: ExternalWorkers? = nil
        ) {
            self.externalWorkers = externalWorkers
            self.listeners = listeners
            self.workers = workers
            self.mode = mode
            self.policy = policy
            self.command = command
            self.controlPath = controlPath
            self.controlAccess = controlAccess
            self.drainTimeout = drainTimeout
            self.stallTimeout = stallTimeout
            self.maximumInFlightPerWorker = maximumInFlightPerWorker
            self.backlog = backlog
            self.readiness = readiness
            self.reloadDeadline = reloadDeadline
        }
    }

    package let configuration: Configuration
    package let logger: Logger
    package let listeners: [Dispatcher.Listener]
    /// Unix socket paths this supervisor bound, removed when it stops.
    package let ownedPaths: [String]
    package let dispatcher: Dispatcher?
    package let control: SocketDescriptor
    package let controlPath: String
    package let notifications: NotifyListener
    package let devNull: CInt
    /// Our own service manager's `$NOTIFY_SOCKET` (systemd), if any.
    package let serviceManager: SystemdNotifier?
    /// The binary an upgrade starts when the request names none: the one this process runs.
    package let executablePath: String
    /// The arguments a new binary is started with on an upgrade: its end of the channel to this
    /// supervisor is descriptor 3 (`$SOCKSHARE_PREDECESSOR_FD`).
    package let successorArguments: [String]
    package let reactor: Reactor
    /// Flipped when the supervisor has stopped (drained, or handed over): ``run()`` returns.
    package let finished = StopSignal()

    // Touched on the reactor's thread only.
    package var state: SupervisorState
    /// Each worker's process: its child handle (to reap it), its pidfd and the pidfd's watch.
    package var processes: [pid_t: WorkerProcess] = [:]
    package var controlWatch: Reactor.Watch?
    package var notifyWatch: Reactor.Watch?
    package var controlConnections: [ObjectIdentifier: ControlConnection] = [:]
    /// When a refused control client is worth a log line.
    package var controlRefusals = LogThrottle<uid_t>()
    package var timer: Reactor.Timer?
    package var lastReload: ServeStatus.ReloadOutcome?
    /// Who asked for the reload, or the upgrade, under way: they are answered when it ends.
    package var reloadRequester: DescriptorChannel?
    package var upgradeRequester: DescriptorChannel?
    /// The successor supervisor during an upgrade: its process and our end of the channel to it.
    package var successor: (process: ChildProcess, channel: DescriptorChannel, watch: Reactor.Watch?)?
    /// A successor's channel to its predecessor, and the workers it inherits (until ``run()``).
    package var predecessor: (channel: DescriptorChannel, workers: [InheritedWorker])?
    /// When the drain gives up on workers that ignore even `SIGKILL`.
    package var drainGiveUp: ContinuousClock.Instant?
    /// Where external workers connect (`Supervisor+ExternalWorkers.swift`), and its watch.
    package var workerSocket: SocketDescriptor?
    package var workerSocketWatch: Reactor.Watch?
    /// The external workers connected, by their (negative) id in the dispatcher.
    package var externalWorkers: [pid_t: ExternalWorker] = [:]
    package var nextExternalID: pid_t = -1
    package var externalRefusals = 0
    /// When a refused external worker is worth a log line.
    package var externalRefusalLog = LogThrottle<uid_t>()

    /// A worker process, as the supervisor's I/O holds it.
    package struct WorkerProcess {
        /// Nil for workers inherited from a predecessor: they are not our children.
        package var child: ChildProcess?
        package var pidfd: ProcessDescriptor?
        package var watch: Reactor.Watch?
    }

    /// A worker a successor inherits, with its channel (handoff mode).
    package struct InheritedWorker {
        package var pid: pid_t
        package var generation: Int
        package var accepting: Bool
        package var channel: DescriptorChannel?
        package var doorbell: SocketDescriptor?
    }

    /// Binds the listeners (or takes those systemd passed in), creates the control and notify
    /// sockets, and prepares the dispatcher in handoff mode. No worker runs until ``run()``.
    ///
    /// - Parameters:
    ///   - configuration: Listeners, mode, workers and their command, the control socket, timeouts.
    ///   - successorArguments: The arguments an upgrade starts the new binary with; its channel to
    ///     this supervisor is descriptor 3, named by `$SOCKSHARE_PREDECESSOR_FD`, and it takes
    ///     over with ``succeeding(channelDescriptor:successorArguments:logger:)``.
    ///   - logger: Where the supervisor, its dispatcher and its control socket log.
    /// - Throws: `SocketShareError` with code `invalidArgument` naming the setting at fault.
    public convenience init(configuration: Configuration, successorArguments: [String], logger: Logger) throws(SocketShareError) {
        if configuration.externalWorkers != nil, configuration.mode != .handoff {
            throw SocketShareError(
                .invalidArgument, operation: "serve", detail: "external workers take handed-off connections: handoff mode only")
        }
        guard configuration.workers > 0 || (configuration.externalWorkers != nil && configuration.workers == 0) else {
            throw SocketShareError(
                .invalidArgument, operation: "serve",
                detail: "workers: \(configuration.workers); at least 1 is needed (0 only with external workers)")
        }
        if configuration.workers > 0 {
            guard let program = configuration.command.first else {
                throw SocketShareError(.invalidArgument, operation: "serve", detail: "no worker command")
            }
            guard ProcessSpawner.resolveExecutable(program) != nil else {
                throw SocketShareError(
                    .invalidArgument, operation: "serve", detail: "command \(program): no such executable (is it on PATH?)")
            }
        }
        // Every listener, channel and connection in flight is a descriptor.
        _ = Kernel.raiseDescriptorLimit()
        let serviceManager = SystemdNotifier.fromEnvironment()
        unsetenv("NOTIFY_SOCKET")
        var listeners: [Dispatcher.Listener] = []
        var owned: [String] = []
        var cleanup: [SocketDescriptor] = []
        var notify: NotifyListener?
        var workerSocketToUse: SocketDescriptor?
        var controlCreated: String?
        do throws(SocketShareError) {
            let inherited = try SystemdListeners.inherited()
            cleanup += inherited.map(\.socket)
            if !inherited.isEmpty {
                logger.notice("using \(inherited.count) listeners passed in by the service manager (LISTEN_FDS); the configured ones are ignored")
                listeners = inherited.map { Dispatcher.Listener(name: $0.name, socket: $0.socket) }
                for listener in listeners {
                    let description = try listener.socket.socketDescription()
                    guard description.kind == .datagram || description.isListening else {
                        throw SocketShareError(
                            .invalidArgument, operation: "serve",
                            detail: "LISTEN_FDS: descriptor \(listener.socket.rawValue) (\(listener.name)) is \(description), "
                                + "which does not listen: serve takes listening stream sockets and datagram sockets")
                    }
                }
            } else {
                guard !configuration.listeners.isEmpty else {
                    throw SocketShareError(
                        .invalidArgument, operation: "serve", detail: "no listener configured, and none passed in (LISTEN_FDS)")
                }
                for specification in configuration.listeners {
                    let socket: SocketDescriptor
                    do throws(SocketShareError) {
                        socket = try SocketDescriptor.listening(
                            on: specification.endpoint.address, kind: specification.endpoint.kind, backlog: configuration.backlog)
                    } catch {
                        throw error.within("serve", context: "listener \(specification)")
                    }
                    cleanup.append(socket)
                    if case .unix(let path) = specification.endpoint.address { owned.append(path) }
                    listeners.append(Dispatcher.Listener(name: specification.name, socket: socket))
                }
            }
            if configuration.mode == .handoff {
                for listener in listeners where (try? listener.socket.socketDescription().kind) == .datagram {
                    throw SocketShareError(
                        .invalidArgument, operation: "serve",
                        detail: "listener \(listener.name) is a datagram socket: handoff mode accepts connections; use shared mode")
                }
            }
            let path: String
            if let explicit = configuration.controlPath {
                try RuntimeDirectory.checkForSockets(explicit, operation: "serve", role: "control socket")
                path = explicit
            } else {
                path = try RuntimeDirectory.standard().appending("serve-\(getpid()).sock")
            }
            if let existing = try Kernel.linkStatus(path), existing.st_mode & S_IFMT == S_IFSOCK {
                if let probe = try? DescriptorChannel.connect(to: path) {
                    try? probe.close()
                    throw SocketShareError(
                        .invalidArgument, operation: "serve", detail: "control socket \(path): another supervisor answers there")
                }
                Kernel.unlink(path)
            }
            let control = try SocketDescriptor.listening(on: .unix(path: path), kind: .seqpacket, backlog: 64)
            cleanup.append(control)
            controlCreated = path
            // The gate is SO_PEERCRED (Supervisor+Control.swift), whatever the mode; the mode only
            // spares strangers a connection that would be refused.
            try Kernel.setSocketFile(
                path, user: geteuid(), group: getegid(), mode: configuration.controlAccess.grantsOthers ? 0o666 : 0o600)
            let notifications = try NotifyListener(forControlSocket: path)
            notify = notifications
            if let external = configuration.externalWorkers {
                let socket = try Self.bindWorkerSocket(external)
                cleanup.append(socket)
                workerSocketToUse = socket
            }
            try self.init(
                configuration: configuration, logger: logger, listeners: listeners, ownedPaths: owned,
                control: control, controlPath: path, notifications: notifications, serviceManager: serviceManager,
                successorArguments: successorArguments, state: SupervisorState(workerCount: configuration.workers))
            workerSocket = workerSocketToUse
        } catch {
            for socket in cleanup { try? socket.close() }
            for path in owned { Kernel.unlink(path) }
            if let controlCreated { Kernel.unlink(controlCreated) }
            if workerSocketToUse != nil, let path = configuration.externalWorkers?.path { Kernel.unlink(path) }
            notify?.close()
            throw error
        }
    }

    /// The designated initializer: everything bound and open already.
    package init(
        configuration: Configuration, logger: Logger, listeners: [Dispatcher.Listener], ownedPaths: [String],
        control: SocketDescriptor, controlPath: String, notifications: NotifyListener, serviceManager: SystemdNotifier?,
        successorArguments: [String], state: SupervisorState
    ) throws(SocketShareError) {
        try control.setNonBlocking(true)
        self.configuration = configuration
        self.logger = logger
        self.listeners = listeners
        self.ownedPaths = ownedPaths
        self.control = control
        self.controlPath = controlPath
        self.notifications = notifications
        self.serviceManager = serviceManager
        self.successorArguments = successorArguments
        self.state = state
        self.devNull = try Kernel.open("/dev/null", O_RDWR)
        self.executablePath = Kernel.readLink("/proc/self/exe") ?? CommandLine.arguments[0]
        let reactor: Reactor
        do throws(SocketShareError) {
            reactor = try Reactor(name: "sockshare-serve")
        } catch {
            try? Kernel.close(devNull)
            throw error
        }
        self.reactor = reactor
        let relay = ReadyRelay()
        if configuration.mode == .handoff {
            let dispatcherLogger = logger
            let devNull = devNull
            dispatcher = try Self.closing(devNull) { () throws(SocketShareError) in try Dispatcher(listeners: listeners, configuration: Dispatcher.Configuration(
                policy: configuration.policy, maximumInFlightPerWorker: configuration.maximumInFlightPerWorker,
                stallTimeout: configuration.stallTimeout,
                onStall: { pid in
                    dispatcherLogger.warning("killing stalled worker \(pid); its connections go to the others")
                    _ = Glibc.kill(pid, SIGKILL)
                },
                onReady: { pid in reactor.execute { relay.supervisor?.workerIsReady(pid) } },
                logger: logger)) }
        } else {
            dispatcher = nil
        }
        relay.supervisor = self
    }

    /// Runs `body`; if it throws, closes `descriptor` first.
    private static func closing<T>(_ descriptor: CInt, _ body: () throws(SocketShareError) -> T) throws(SocketShareError) -> T {
        do throws(SocketShareError) {
            return try body()
        } catch {
            try? Kernel.close(descriptor)
            throw error
        }
    }

    /// Carries the dispatcher's readiness reports to the supervisor, which does not exist yet when
    /// the dispatcher is made. Set once in `init`, read on the supervisor's reactor thread only.
    private final class ReadyRelay: @unchecked Sendable {
        weak var supervisor: Supervisor?
    }

    /// The addresses the listeners are bound to (ports filled in).
    public var boundAddresses: [(name: String, endpoint: SocketEndpoint)] {
        listeners.compactMap { listener in
            guard let description = try? listener.socket.socketDescription() else { return nil }
            return (listener.name, SocketEndpoint(address: description.localAddress, kind: description.kind))
        }
    }

    /// Starts the workers (a successor adopts its predecessor's instead) and supervises them until
    /// graceful shutdown or cancellation, then drains them and returns; or until an upgrade has
    /// handed everything to a successor, then returns without touching the workers.
    ///
    /// - Throws: `SocketShareError` when the supervisor's threads cannot start.
    public func run() async throws {
        try dispatcher?.start()
        reactor.execute { [self] in begin() }
        do throws(SocketShareError) {
            try reactor.start()
        } catch {
            dispatcher?.detach()
            throw error
        }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await finished.wait()
            } onGracefulShutdown: { [self] in
                stop()
            }
        } onCancel: { [self] in
            stop()
        }
        // Drained or handed over: the reactor's work is done.
        reactor.stop()
    }

    /// Drains and stops: no new connections, the workers finish within the drain timeout, then
    /// `SIGTERM`, then `SIGKILL`; the listeners and the control socket are closed. ``run()``
    /// returns once that is done. What graceful shutdown does.
    public func stop() {
        reactor.execute { [self] in beginDrain() }
    }

    /// Starts a new generation of workers; it serves once each of its workers is ready, or it is
    /// rolled back at `deadline`. Returns at once; ``status()`` tells how it went.
    public func reload(deadline: Duration? = nil) {
        reactor.execute { [self] in beginReload(deadline: deadline ?? configuration.reloadDeadline, requester: nil) }
    }

    /// Hands this supervisor over to `binary` (nil: the binary this process runs). Returns at once;
    /// on success ``run()`` returns, the new supervisor serving; on failure this one serves on.
    public func upgrade(binary: String? = nil, deadline: Duration? = nil) {
        reactor.execute { [self] in
            beginUpgrade(binary: binary ?? executablePath, deadline: deadline ?? configuration.reloadDeadline, requester: nil)
        }
    }

    /// The listeners, workers and counters now; nil once the supervisor has stopped.
    public func status() -> ServeStatus? {
        reactor.sync { [self] in currentStatus() }
    }

    /// Tells our own service manager (systemd, if it started us with `$NOTIFY_SOCKET`).
    package func tellServiceManager(_ state: String) {
        try? serviceManager?.notify(state)
    }
}
