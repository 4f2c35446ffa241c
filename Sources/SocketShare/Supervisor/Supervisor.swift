import Glibc
import Logging
import Synchronization

/// `sockshare serve`: binds listeners, runs worker processes with exactly the descriptors they need,
/// restarts the ones that crash, and stops gracefully.
///
/// - **shared** mode: every worker gets every listener at descriptors 3… with `LISTEN_FDS`,
///   `LISTEN_PID` and `LISTEN_FDNAMES`, so any server that supports systemd socket activation
///   works unchanged; the kernel spreads connections among the workers' `accept` calls.
/// - **handoff** mode: a ``Dispatcher`` accepts and hands each connection to a worker, which
///   receives them through ``WorkerConnections`` (or `docs/WORKERS.md` in any language) on the
///   channel at `$SOCKSHARE_WORKER_FD`. No connection is lost when a worker dies.
///
/// Workers are started with `posix_spawn`: their descriptors at fixed numbers, every other one
/// closed, signal dispositions reset. `SIGTERM` or `SIGINT` drain: stop accepting, let workers
/// finish, then `SIGTERM` and, at the deadline, `SIGKILL` them.
public final class Supervisor: Sendable {
    /// How connections reach workers.
    public enum Mode: String, Sendable, CaseIterable {
        /// Workers accept on the shared listeners themselves (systemd socket activation).
        case shared
        /// The supervisor accepts and hands each connection to a worker.
        case handoff
    }

    /// How a supervisor runs.
    public struct Configuration: Sendable {
        /// The listeners to bind (ignored for those passed in by systemd).
        public var listeners: [ListenerSpecification]
        /// How many workers run at once.
        public var workers: Int
        /// Shared listeners or handoff.
        public var mode: Mode
        /// How the dispatcher picks workers (handoff mode).
        public var policy: Dispatcher.Policy
        /// The worker program and its arguments.
        public var command: [String]
        /// The control socket for `sockshare status --control`; nil picks `serve-PID.sock` in the runtime directory.
        public var controlPath: String?
        /// How long a stop waits for workers to finish before `SIGTERM`, and again before `SIGKILL`.
        public var drainTimeout: Duration
        /// How long a worker may leave a connection unacknowledged before it is killed (handoff).
        public var stallTimeout: Duration
        /// The most connections in flight to one worker (handoff).
        public var maximumInFlightPerWorker: Int
        /// The `listen(2)` backlog of the listeners.
        public var backlog: CInt

        /// Creates a configuration.
        public init(
            listeners: [ListenerSpecification], workers: Int, mode: Mode, policy: Dispatcher.Policy = .roundRobin,
            command: [String], controlPath: String? = nil, drainTimeout: Duration = .seconds(10),
            stallTimeout: Duration = .seconds(5), maximumInFlightPerWorker: Int = 256, backlog: CInt = 4096
        ) {
            self.listeners = listeners
            self.workers = workers
            self.mode = mode
            self.policy = policy
            self.command = command
            self.controlPath = controlPath
            self.drainTimeout = drainTimeout
            self.stallTimeout = stallTimeout
            self.maximumInFlightPerWorker = maximumInFlightPerWorker
            self.backlog = backlog
        }
    }

    /// A running worker process.
    struct Worker {
        let slot: Int
        let process: ChildProcess
        let pidfd: ProcessDescriptor?
        let generation: Int
        let started: ContinuousClock.Instant
    }

    /// A worker slot waiting to be started again.
    struct Restart {
        let slot: Int
        let at: ContinuousClock.Instant
    }

    struct State {
        var workers: [Worker] = []
        var restarts: [Int: Int] = [:]
        var backoff: [Int: Duration] = [:]
        var pendingRestarts: [Restart] = []
        var generation = 1
        var stopping = false
        var exits: [(pid: pid_t, termination: ChildProcess.Termination)] = []
    }

    let configuration: Configuration
    let logger: Logger
    let listeners: [Dispatcher.Listener]
    /// Unix socket paths this supervisor bound, removed when it stops.
    let ownedPaths: [String]
    let dispatcher: Dispatcher?
    let control: SocketDescriptor
    let controlPath: String
    let state: Mutex<State>
    let devNull: CInt

    /// Binds the listeners (or takes those systemd passed in), creates the control socket, and
    /// prepares the dispatcher in handoff mode. No worker runs until ``run()``.
    public init(configuration: Configuration, logger: Logger) throws(SocketShareError) {
        guard configuration.workers > 0 else {
            throw SocketShareError(.invalidArgument, operation: "serve", detail: "--workers must be at least 1")
        }
        guard let program = configuration.command.first else {
            throw SocketShareError(.invalidArgument, operation: "serve", detail: "no worker COMMAND")
        }
        guard ProcessSpawner.resolveExecutable(program) != nil else {
            throw SocketShareError(
                .invalidArgument, operation: "serve", detail: "COMMAND \(program): no such executable (is it on PATH?)")
        }
        self.configuration = configuration
        self.logger = logger
        var listeners: [Dispatcher.Listener] = []
        var owned: [String] = []
        var cleanup: [SocketDescriptor] = []
        do throws(SocketShareError) {
            let inherited = try SystemdListeners.inherited()
            cleanup += inherited.map(\.socket)
            if !inherited.isEmpty {
                logger.notice("using \(inherited.count) listeners passed in by the service manager (LISTEN_FDS); --listen is ignored")
                listeners = inherited.map { Dispatcher.Listener(name: $0.name, socket: $0.socket) }
            } else {
                guard !configuration.listeners.isEmpty else {
                    throw SocketShareError(.invalidArgument, operation: "serve", detail: "no --listen address, and no LISTEN_FDS")
                }
                for specification in configuration.listeners {
                    let socket: SocketDescriptor
                    do throws(SocketShareError) {
                        socket = try SocketDescriptor.listening(
                            on: specification.endpoint.address, kind: specification.endpoint.kind, backlog: configuration.backlog)
                    } catch {
                        throw error.within("serve", context: "--listen \(specification)")
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
                        detail: "listener \(listener.name) is a datagram socket: handoff mode accepts connections; use --mode shared")
                }
            }
            let path: String
            if let explicit = configuration.controlPath {
                path = explicit
            } else {
                path = try RuntimeDirectory.standard().appending("serve-\(getpid()).sock")
            }
            if let existing = try Kernel.linkStatus(path), existing.st_mode & S_IFMT == S_IFSOCK,
               (try? DescriptorChannel.connect(to: path)) == nil {
                Kernel.unlink(path)
            }
            control = try SocketDescriptor.listening(on: .unix(path: path), kind: .seqpacket, backlog: 64)
            try control.setNonBlocking(true)
            controlPath = path
            devNull = try Kernel.open("/dev/null", O_RDWR)
        } catch {
            for socket in cleanup { try? socket.close() }
            for path in owned { Kernel.unlink(path) }
            throw error
        }
        self.listeners = listeners
        self.ownedPaths = owned
        self.state = Mutex(State())
        if configuration.mode == .handoff {
            let dispatcherLogger = logger
            dispatcher = try Dispatcher(listeners: listeners, configuration: Dispatcher.Configuration(
                policy: configuration.policy, maximumInFlightPerWorker: configuration.maximumInFlightPerWorker,
                stallTimeout: configuration.stallTimeout,
                onStall: { pid in
                    dispatcherLogger.warning("killing stalled worker \(pid); its connections go to the others")
                    _ = Glibc.kill(pid, SIGKILL)
                },
                logger: logger))
        } else {
            dispatcher = nil
        }
    }

    /// The addresses the listeners are bound to (ports filled in).
    public var boundAddresses: [(name: String, endpoint: SocketEndpoint)] {
        listeners.compactMap { listener in
            guard let description = try? listener.socket.socketDescription() else { return nil }
            return (listener.name, SocketEndpoint(address: description.localAddress, kind: description.kind))
        }
    }

    /// Starts the workers and supervises them until `SIGTERM` or `SIGINT` (or ``requestStop()``),
    /// then drains and returns.
    public func run() throws(SocketShareError) {
        let signals = try SignalPipe.install([SIGTERM, SIGINT])
        try dispatcher?.start()
        for slot in 0..<configuration.workers { start(slot: slot) }
        logger.notice("serving", metadata: [
            "mode": "\(configuration.mode)", "workers": "\(configuration.workers)",
            "listeners": "\(boundAddresses.map { "\($0.name)=\($0.endpoint)" }.joined(separator: " "))",
            "control": "\(controlPath)",
        ])
        var controlConnections: [CInt: DescriptorChannel] = [:]
        while true {
            if state.withLock({ $0.stopping }) { break }
            let now = ContinuousClock.now
            let (workers, restarts) = state.withLock { ($0.workers, $0.pendingRestarts) }
            for restart in restarts where restart.at <= now {
                state.withLock { $0.pendingRestarts.removeAll { $0.slot == restart.slot } }
                start(slot: restart.slot)
            }
            var fds = [
                pollfd(fd: signals, events: Int16(POLLIN), revents: 0),
                pollfd(fd: control.rawValue, events: Int16(POLLIN), revents: 0),
            ]
            let controlFDs = Array(controlConnections.keys)
            for fd in controlFDs { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            let current = state.withLock { $0.workers }
            for worker in current { fds.append(pollfd(fd: worker.pidfd?.rawValue ?? -1, events: Int16(POLLIN), revents: 0)) }
            let next = state.withLock { $0.pendingRestarts.map(\.at).min() }
            _ = workers
            guard (try? Kernel.poll(&fds, deadline: next ?? (.now + .seconds(1)))) != nil else { break }
            if fds[0].revents != 0, let number = try? SignalPipe.next(deadline: .now) {
                logger.notice("signal \(number): draining")
                break
            }
            if fds[1].revents != 0 {
                while let accepted = try? control.accept() {
                    controlConnections[accepted.rawValue] = DescriptorChannel(accepted)
                }
            }
            for (index, fd) in controlFDs.enumerated() where fds[2 + index].revents != 0 {
                guard let channel = controlConnections[fd] else { continue }
                if !answerControl(channel) {
                    controlConnections.removeValue(forKey: fd)
                    try? channel.close()
                }
            }
            for (index, worker) in current.enumerated() where fds[2 + controlFDs.count + index].revents != 0 {
                reap(worker)
            }
        }
        for channel in controlConnections.values { try? channel.close() }
        drain()
    }

    /// Asks ``run()`` to drain and return (as `SIGTERM` does).
    public func requestStop() {
        state.withLock { $0.stopping = true }
        _ = Glibc.kill(getpid(), SIGTERM)
    }
}
