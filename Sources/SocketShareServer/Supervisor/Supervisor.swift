import Glibc
import Logging
import SocketShare
import SocketShareCore

/// `sockshare serve`: binds listeners, runs worker processes with exactly the descriptors they need,
/// restarts the ones that crash, reloads them without losing a connection, hands itself over to a
/// new binary, and stops gracefully.
///
/// - **shared** mode: every worker gets every listener at descriptors 3… with `LISTEN_FDS`,
///   `LISTEN_PID` and `LISTEN_FDNAMES`, so any server that supports systemd socket activation
///   works unchanged; the kernel spreads connections among the workers' `accept` calls.
/// - **handoff** mode: a ``Dispatcher`` accepts and hands each connection to a worker, which
///   receives them through `ConnectionServer` of SocketShareNIO (or `docs/WORKERS.md` in any language) on the
///   channel at `$SOCKSHARE_WORKER_FD`. No connection is lost when a worker dies.
///
/// A **reload** (`sockshare reload`, `SIGHUP`) starts a new generation of workers on the same
/// listeners; once every one of them says it is ready (`READY=1` on `$NOTIFY_SOCKET`, or
/// the worker protocol's `ready`), new connections go only to it and the old generation drains.
/// If the new generation is not ready by the deadline, or one of its workers exits first, it is
/// stopped and the old one serves on untouched. An **upgrade** (`upgrade` command, `SIGUSR2`)
/// starts a new supervisor binary and hands it the listeners, the worker channels and the state;
/// the workers keep running.
public final class Supervisor: Sendable {
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

    /// How a supervisor runs.
    public struct Configuration: Sendable, Codable {
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

        /// Creates a configuration.
        public init(
            listeners: [ListenerSpecification], workers: Int, mode: Mode, policy: Dispatcher.Policy = .roundRobin,
            command: [String], controlPath: String? = nil, drainTimeout: Duration = .seconds(10),
            stallTimeout: Duration = .seconds(5), maximumInFlightPerWorker: Int = 256, backlog: CInt = 4096,
            readiness: Readiness = .notify, reloadDeadline: Duration = .seconds(30)
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
            self.readiness = readiness
            self.reloadDeadline = reloadDeadline
        }
    }

    /// A running worker process.
    package struct Worker {
        package let slot: Int
        package let process: ChildProcess
        package let pidfd: ProcessDescriptor?
        package let generation: Int
        package let started: ContinuousClock.Instant
        /// False for workers inherited from a predecessor supervisor: they are not our children.
        package let isChild: Bool
        package var isReady = false
        /// Set when the worker's generation was replaced: it must be gone by then.
        package var drainDeadline: ContinuousClock.Instant? = nil
        /// When `SIGKILL` follows the `SIGTERM` it was sent.
        package var killAt: ContinuousClock.Instant? = nil
    }

    /// A worker slot waiting to be started again.
    package struct Restart {
        package let slot: Int
        package let at: ContinuousClock.Instant
    }

    /// A reload under way: the new generation, and the workers of it not ready yet.
    package struct ReloadAttempt {
        package let generation: Int
        package let started: ContinuousClock.Instant
        package let deadline: ContinuousClock.Instant
        package var waiting: Set<pid_t>
        package var requester: DescriptorChannel?
    }

    /// A supervisor upgrade under way.
    package struct UpgradeAttempt {
        package let binary: String
        package let started: ContinuousClock.Instant
        package let deadline: ContinuousClock.Instant
        package var requester: DescriptorChannel?
        /// Set once the successor runs: its process and our end of the channel to it.
        package var successor: (process: ChildProcess, channel: DescriptorChannel)?
    }

    package struct State {
        package var workers: [Worker] = []
        package var restarts: [Int: Int] = [:]
        package var backoff: [Int: Duration] = [:]
        package var pendingRestarts: [Restart] = []
        /// The latest generation started.
        package var generation = 1
        /// The generation new connections go to.
        package var currentGeneration = 1
        package var reload: ReloadAttempt?
        package var upgrade: UpgradeAttempt?
        package var lastReload: ServeStatus.ReloadOutcome?
        package var stopping = false
        /// Set once a successor supervisor has everything: stop without touching workers or paths.
        package var handedOver = false
        package var toldServiceManagerReady = false
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
    package let state: Locked<State>
    package let devNull: CInt
    /// Our own service manager's `$NOTIFY_SOCKET` (systemd), if any.
    package let serviceManager: SystemdNotifier?
    /// The binary an upgrade starts when the request names none: the one this process runs.
    package let executablePath: String
    /// Written to wake the loop (readiness reported from the dispatcher's thread).
    package let wakeRead: CInt
    package let wakeWrite: CInt
    /// Readiness reported from the dispatcher's thread, taken by the loop.
    package let readyInbox: ReadyInbox

    package final class ReadyInbox: Sendable {
        package let pids = Locked<[pid_t]>([])
    }

    /// A successor's channel to its predecessor, and the workers it inherits (until ``run()``).
    package let predecessor = Locked<(DescriptorChannel, [(pid_t, Int, Bool, DescriptorChannel, SocketDescriptor?)])?>(nil)

    /// Binds the listeners (or takes those systemd passed in), creates the control and notify
    /// sockets, and prepares the dispatcher in handoff mode. No worker runs until ``run()``.
    public convenience init(configuration: Configuration, logger: Logger) throws(SocketShareError) {
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
        let serviceManager = SystemdNotifier.fromEnvironment()
        unsetenv("NOTIFY_SOCKET")
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
            if let existing = try Kernel.linkStatus(path), existing.st_mode & S_IFMT == S_IFSOCK {
                if let probe = try? DescriptorChannel.connect(to: path) {
                    try? probe.close()
                    throw SocketShareError(
                        .invalidArgument, operation: "serve", detail: "--control \(path): another sockshare serve answers there")
                }
                Kernel.unlink(path)
            }
            let control = try SocketDescriptor.listening(on: .unix(path: path), kind: .seqpacket, backlog: 64)
            cleanup.append(control)
            let notifications = try NotifyListener(path: Self.notifyPath(for: path))
            try self.init(
                configuration: configuration, logger: logger, listeners: listeners, ownedPaths: owned,
                control: control, controlPath: path, notifications: notifications, serviceManager: serviceManager)
        } catch {
            for socket in cleanup { try? socket.close() }
            for path in owned { Kernel.unlink(path) }
            throw error
        }
    }

    /// The designated initializer: everything bound and open already.
    package init(
        configuration: Configuration, logger: Logger, listeners: [Dispatcher.Listener], ownedPaths: [String],
        control: SocketDescriptor, controlPath: String, notifications: NotifyListener, serviceManager: SystemdNotifier?,
        state: State = State()
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
        self.devNull = try Kernel.open("/dev/null", O_RDWR)
        self.executablePath = Kernel.readLink("/proc/self/exe") ?? CommandLine.arguments[0]
        let (read, write) = try Kernel.pipe()
        try Kernel.setNonBlocking(read, true)
        try Kernel.setNonBlocking(write, true)
        self.wakeRead = read
        self.wakeWrite = write
        self.state = Locked(state)
        let inbox = ReadyInbox()
        self.readyInbox = inbox
        if configuration.mode == .handoff {
            let dispatcherLogger = logger
            dispatcher = try Dispatcher(listeners: listeners, configuration: Dispatcher.Configuration(
                policy: configuration.policy, maximumInFlightPerWorker: configuration.maximumInFlightPerWorker,
                stallTimeout: configuration.stallTimeout,
                onStall: { pid in
                    dispatcherLogger.warning("killing stalled worker \(pid); its connections go to the others")
                    _ = Glibc.kill(pid, SIGKILL)
                },
                onReady: { pid in
                    inbox.pids.withLock { $0.append(pid) }
                    var byte: UInt8 = 1
                    _ = Glibc.write(write, &byte, 1)
                },
                logger: logger))
        } else {
            dispatcher = nil
        }
    }

    deinit {
        try? Kernel.close(wakeRead)
        try? Kernel.close(wakeWrite)
    }

    /// The notify socket's path, beside the control socket.
    package static func notifyPath(for controlPath: String) -> String {
        (controlPath.hasSuffix(".sock") ? String(controlPath.dropLast(5)) : controlPath) + ".notify"
    }

    /// The addresses the listeners are bound to (ports filled in).
    public var boundAddresses: [(name: String, endpoint: SocketEndpoint)] {
        listeners.compactMap { listener in
            guard let description = try? listener.socket.socketDescription() else { return nil }
            return (listener.name, SocketEndpoint(address: description.localAddress, kind: description.kind))
        }
    }

    /// Starts the workers (a successor adopts its predecessor's instead) and supervises them until
    /// `SIGTERM` or `SIGINT`, then drains and returns. `SIGHUP` reloads; `SIGUSR2` upgrades.
    public func run() throws(SocketShareError) {
        let signals = try SignalPipe.install([SIGTERM, SIGINT, SIGHUP, SIGUSR2])
        try dispatcher?.start()
        if predecessor.withLock({ $0 != nil }) {
            adoptPredecessorsWorkers()
        } else {
            let generation = state.withLock { $0.generation }
            for slot in 0..<configuration.workers { start(slot: slot, generation: generation, accepting: true) }
        }
        logger.notice("serving", metadata: [
            "mode": "\(configuration.mode)", "workers": "\(configuration.workers)",
            "listeners": "\(boundAddresses.map { "\($0.name)=\($0.endpoint)" }.joined(separator: " "))",
            "control": "\(controlPath)",
        ])
        var controlConnections: [CInt: DescriptorChannel] = [:]
        while true {
            if state.withLock({ $0.stopping || $0.handedOver }) { break }
            runTimers()
            // While a successor takes over, this supervisor only listens to it (and to signals): the
            // control socket and the workers are about to be the successor's, and two supervisors
            // must never act on them at once.
            let handingOver = state.withLock { $0.upgrade?.successor != nil }
            var fds = [
                pollfd(fd: signals, events: Int16(POLLIN), revents: 0),
                pollfd(fd: handingOver ? -1 : control.rawValue, events: Int16(POLLIN), revents: 0),
                pollfd(fd: handingOver ? -1 : notifications.socket.rawValue, events: Int16(POLLIN), revents: 0),
                pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0),
                pollfd(fd: state.withLock { $0.upgrade?.successor?.channel.socket.rawValue } ?? -1, events: Int16(POLLIN), revents: 0),
            ]
            let fixed = fds.count
            let controlFDs = handingOver ? [] : Array(controlConnections.keys)
            for fd in controlFDs { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            let current = handingOver ? [] : state.withLock { $0.workers }
            for worker in current { fds.append(pollfd(fd: worker.pidfd?.rawValue ?? -1, events: Int16(POLLIN), revents: 0)) }
            guard (try? Kernel.poll(&fds, deadline: nextTimer())) != nil else { break }

            if fds[0].revents != 0, let number = try? SignalPipe.next(deadline: .now) {
                switch number {
                case SIGHUP:
                    logger.notice("SIGHUP: reloading")
                    beginReload(deadline: configuration.reloadDeadline, requester: nil)
                case SIGUSR2:
                    logger.notice("SIGUSR2: upgrading to \(executablePath)")
                    beginUpgrade(binary: executablePath, deadline: configuration.reloadDeadline, requester: nil)
                default:
                    logger.notice("signal \(number): draining")
                    state.withLock { $0.stopping = true }
                }
            }
            if fds[4].revents != 0 {
                successorSpoke()
                if state.withLock({ $0.handedOver }) { break }
            }
            if fds[1].revents != 0 {
                while let accepted = try? control.accept() {
                    controlConnections[accepted.rawValue] = DescriptorChannel(accepted)
                }
            }
            if fds[2].revents != 0 {
                for (pid, fields) in notifications.drain() where fields["READY"] == "1" { workerIsReady(pid) }
            }
            if fds[3].revents != 0 {
                var buffer = [UInt8](repeating: 0, count: 64)
                while Glibc.read(wakeRead, &buffer, buffer.count) > 0 {}
                for pid in readyInbox.pids.withLock({ pids in defer { pids.removeAll() }; return pids }) {
                    workerIsReady(pid)
                }
            }
            for (index, fd) in controlFDs.enumerated() where fds[fixed + index].revents != 0 {
                guard let channel = controlConnections[fd] else { continue }
                if !answerControl(channel) {
                    controlConnections.removeValue(forKey: fd)
                    try? channel.close()
                }
            }
            for (index, worker) in current.enumerated() where fds[fixed + controlFDs.count + index].revents != 0 {
                reap(worker)
            }
        }
        for channel in controlConnections.values { try? channel.close() }
        if state.withLock({ $0.handedOver }) {
            finishHandover()
        } else {
            drain()
        }
    }

    /// Asks ``run()`` to drain and return (as `SIGTERM` does).
    public func requestStop() {
        state.withLock { $0.stopping = true }
        wake()
    }

    package func wake() {
        var byte: UInt8 = 1
        _ = Glibc.write(wakeWrite, &byte, 1)
    }

    /// Tells our own service manager (systemd, if it started us with `$NOTIFY_SOCKET`).
    package func tellServiceManager(_ state: String) {
        try? serviceManager?.notify(state)
    }
}
