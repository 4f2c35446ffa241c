import Glibc
import Logging
import SocketShare
import SocketShareCore

/// The acceptor of the seed's typical use: one process accepts connections and hands each to a
/// worker process, which does the information exchange.
///
/// The dispatcher owns the listening sockets. It accepts with `accept4(SOCK_CLOEXEC)`, in batches
/// under load, and sends each connection to a worker over that worker's ``DescriptorChannel``,
/// several per message when many are waiting. It keeps its own copy of every connection until the
/// worker acknowledges it; a worker that dies, is killed for stalling, or refuses, has its
/// unacknowledged connections sent to another worker — none is lost (Node's cluster learned this
/// the hard way: nodejs/node#3551).
///
/// In-flight connections per worker (sent but unacknowledged, plus those the worker reports open)
/// are bounded by ``Configuration/maximumInFlightPerWorker``; when every worker is full the
/// dispatcher stops watching the listeners, and new connections wait in the kernel's backlog, not
/// in memory.
///
/// It runs on a reactor of its own (one thread, one `epoll`): listeners, worker channels and
/// worker pidfds are watched there, and every method below hands its work to that thread.
package final class Dispatcher: Sendable {
    /// How the next connection's worker is chosen.
    /// How a worker is picked: ``Supervisor/Policy``.
    package typealias Policy = Supervisor.Policy

    /// A listening socket and its name (the name travels with each connection to the worker).
    package struct Listener: Sendable {
        /// The name (`--listen NAME=ADDR`).
        package var name: String
        /// The listening socket; the dispatcher uses it, the caller keeps ownership.
        package var socket: SocketDescriptor

        /// Creates a listener entry.
        package init(name: String, socket: SocketDescriptor) {
            self.name = name
            self.socket = socket
        }
    }

    /// How the dispatcher behaves.
    package struct Configuration: Sendable {
        /// How workers are chosen.
        package var policy: Policy
        /// The most connections in flight to one worker.
        package var maximumInFlightPerWorker: Int
        /// The most connections accepted per readiness event, per listener.
        package var acceptBatch: Int
        /// A worker that leaves a connection unacknowledged this long is reported as stalled.
        package var stallTimeout: Duration
        /// Called (on the dispatcher's thread) with a stalled worker's pid; the supervisor kills it,
        /// and its connections go to others once it is gone. Nil: connections wait for it.
        package var onStall: (@Sendable (pid_t) -> Void)?
        /// Called (on the dispatcher's thread) when a worker says it is ready.
        package var onReady: (@Sendable (pid_t) -> Void)?
        /// Where the dispatcher logs.
        package var logger: Logger

        /// Creates a configuration.
        package init(
            policy: Policy = .roundRobin, maximumInFlightPerWorker: Int = 256, acceptBatch: Int = 64,
            stallTimeout: Duration = .seconds(5), onStall: (@Sendable (pid_t) -> Void)? = nil,
            onReady: (@Sendable (pid_t) -> Void)? = nil,
            logger: Logger = Logger(label: "sockshare.dispatcher", factory: { _ in SwiftLogNoOpLogHandler() })
        ) {
            self.policy = policy
            self.maximumInFlightPerWorker = maximumInFlightPerWorker
            self.acceptBatch = acceptBatch
            self.stallTimeout = stallTimeout
            self.onStall = onStall
            self.onReady = onReady
            self.logger = logger
        }
    }

    /// What the dispatcher knows of one worker.
    package struct WorkerStatistics: Sendable, Hashable {
        /// The worker's pid.
        package var pid: pid_t
        /// Its generation (a reload starts the next one).
        package var generation: Int
        /// Connections it has acknowledged, in all.
        package var handled: Int
        /// Connections sent and not acknowledged, plus those it reports open.
        package var inFlight: Int
        /// Connections sent and not acknowledged: they go to another worker if this one dies.
        package var unacknowledged: Int
        /// Whether it said it is ready.
        package var isReady: Bool
        /// Whether it takes new connections (not retired, not stalled).
        package var isAccepting: Bool
    }

    /// Counters for the whole dispatcher.
    package struct Statistics: Sendable, Hashable {
        /// Connections accepted from the listeners.
        package var accepted: Int
        /// Connections sent again after their worker died, stalled or refused them.
        package var redispatched: Int
        /// Connections waiting in the dispatcher for a worker with room.
        package var waiting: Int
        /// Each worker.
        package var workers: [WorkerStatistics]
    }

    /// A worker as a successor supervisor takes it over: the dispatcher's end of its channel, and
    /// its doorbell if it gave one (the worker protocol's `doorbell` message, `docs/WORKERS.md`).
    package struct WorkerChannelState: Sendable {
        /// The worker's pid.
        package var pid: pid_t
        /// Its generation.
        package var generation: Int
        /// Whether connections go to it.
        package var accepting: Bool
        /// The dispatcher's end of its channel.
        package var channel: DescriptorChannel
        /// The worker's doorbell, rung after each message sent to it.
        package var doorbell: SocketDescriptor?
    }

    package let reactor: Reactor
    package let core: Core
    private let started = Locked(false)
    /// What the loop said last, for callers once it has stopped.
    private let final = Locked<(statistics: Statistics, settled: Bool, channels: [WorkerChannelState])>(
        (Statistics(accepted: 0, redispatched: 0, waiting: 0, workers: []), true, []))

    /// Prepares a dispatcher for `listeners` (they are made non-blocking). Nothing happens until ``start()``.
    package init(listeners: [Listener], configuration: Configuration) throws(SocketShareError) {
        guard !listeners.isEmpty else {
            throw SocketShareError(.invalidArgument, operation: "dispatcher", detail: "no listeners")
        }
        for listener in listeners {
            let description = try listener.socket.socketDescription()
            guard description.isListening else {
                throw SocketShareError(
                    .invalidArgument, operation: "dispatcher", detail: "listener \(listener.name) (\(description)) does not listen")
            }
            try listener.socket.setNonBlocking(true)
        }
        reactor = try Reactor(name: "dispatcher")
        core = Core(reactor: reactor, listeners: listeners, configuration: configuration)
    }

    /// Runs the dispatcher on its reactor's thread.
    package func start() throws(SocketShareError) {
        try reactor.start()
        started.withLock { $0 = true }
        let core = self.core
        if reactor.sync({ core.begin() }) == nil {
            throw SocketShareError(.system, operation: "dispatcher", detail: "the dispatcher's thread ended at once")
        }
    }

    /// Adds a worker. The dispatcher owns `channel` (the supervisor's end); the worker's end must
    /// already be in the worker process only.
    ///
    /// - Parameters:
    ///   - channel: The supervisor's end of the worker's channel.
    ///   - pid: The worker's process id, for logs, status and killing it when it stalls.
    ///   - generation: The generation the worker belongs to (a reload starts the next one).
    ///   - accepting: Whether connections go to it now; a worker of a generation that is
    ///     still proving itself (a reload) waits for ``promote(generation:)``.
    ///   - doorbell: The worker's doorbell, when a predecessor supervisor hands one over (a worker
    ///     otherwise sends it on its channel).
    ///   - probationGroup: For an external worker, its uid: it is on probation until it acknowledges
    ///     a connection (``WorkerPool/add(pid:generation:accepting:probationGroup:)``).
    package func addWorker(
        _ channel: DescriptorChannel, pid: pid_t, generation: Int, accepting: Bool = true, doorbell: SocketDescriptor? = nil,
        probationGroup: UInt32? = nil
    ) {
        let core = self.core
        reactor.execute {
            core.add(channel, pid: pid, generation: generation, accepting: accepting, doorbell: doorbell, probationGroup: probationGroup)
        }
    }

    /// Makes `generation`'s workers take connections, and retires every other worker: it gets no
    /// more, and is told to finish what it has and exit.
    package func promote(generation: Int) {
        let core = self.core
        reactor.execute { core.promote(generation: generation) }
    }

    /// Sends no more connections to worker `pid` and tells it to finish what it has and exit.
    package func retireWorker(pid: pid_t) {
        let core = self.core
        reactor.execute { core.retire(pid: pid) }
    }

    /// Stops accepting (connections wait in the listeners' backlogs); acknowledgements still arrive.
    /// `settled` is called, on the dispatcher's thread, once every connection sent is acknowledged.
    package func pause(whenSettled settled: @escaping @Sendable () -> Void) {
        let core = self.core
        reactor.execute {
            core.setPaused(true)
            core.whenSettled(settled)
        }
    }

    /// Stops touching the workers' channels at all (after ``pause()`` has settled), so a successor
    /// supervisor can take them over; returns once the loop no longer reads them.
    package func freeze() {
        let core = self.core
        _ = reactor.sync { core.setFrozen(true) }
    }

    /// Accepts again after ``pause()`` (and reads the workers again after ``freeze()``).
    package func resume() {
        let core = self.core
        reactor.execute {
            core.setFrozen(false)
            core.setPaused(false)
        }
    }

    /// Whether nothing is waiting in the dispatcher and every connection sent was acknowledged.
    package var isSettled: Bool {
        let core = self.core
        return reactor.sync { core.isSettled } ?? final.withLock { $0.settled }
    }

    /// The workers and the dispatcher's ends of their channels (for a successor supervisor).
    package var workerChannels: [WorkerChannelState] {
        let core = self.core
        return reactor.sync { core.channels } ?? final.withLock { $0.channels }
    }

    /// A snapshot of the counters.
    package var statistics: Statistics {
        let core = self.core
        return reactor.sync { core.statistics } ?? final.withLock { $0.statistics }
    }

    /// Ends the dispatcher without a word to the workers (their channels now belong to a successor).
    package func detach() {
        let core = self.core
        if let snapshot = reactor.sync({ core.snapshot() }) { final.withLock { $0 = snapshot } }
        core.logger.info("dispatcher handed its workers to a successor")
        reactor.stop()
    }

    /// Stops: accepts what waits in the listeners' backlogs one last time, hands it out, waits (until
    /// `deadline`) for every connection to be acknowledged, tells the workers to finish and exit,
    /// and calls `done` on the dispatcher's thread; ``finish()`` then ends the dispatcher. The
    /// listeners stay open (the caller owns them).
    package func stop(deadline: ContinuousClock.Instant, then done: @escaping @Sendable () -> Void) {
        guard started.withLock({ $0 }) else { return done() }
        let core = self.core
        reactor.execute { core.stop(deadline: deadline, done) }
    }

    /// ``stop(deadline:then:)``, waiting for it, then ``finish()``.
    package func stop(deadline: ContinuousClock.Instant) {
        guard started.withLock({ $0 }) else { return }
        let core = self.core
        _ = reactor.wait { answer in core.stop(deadline: deadline) { answer(()) } }
        finish()
    }

    /// Ends the dispatcher after ``stop(deadline:then:)`` called back: keeps its last counters and
    /// joins its thread.
    package func finish() {
        let core = self.core
        if let snapshot = reactor.sync({ core.snapshot() }) { final.withLock { $0 = snapshot } }
        reactor.stop()
    }
}
