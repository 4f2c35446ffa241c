import Glibc
import Logging
import SocketShareCore

/// Holds duplicates of shared sockets until their targets claim them, and serves the claims.
///
/// The holder of both designs: the in-process sharer (``Sharer``) and, with an `EscrowService`
/// attached, the broker daemon, which adds deposits, revocations, listings and takeover. It
/// listens on a `SOCK_SEQPACKET` socket at a path inside a `RuntimeDirectory` and speaks the
/// escrow protocol (`EscrowMessage`, `docs/PROTOCOL.md`).
///
/// Its decisions are an `EscrowTable`; its I/O runs on a `Reactor`. Threads: deposits,
/// revocations and outcome waits come from any thread and touch only the table, under a lock;
/// connections, timers and every close of a held duplicate happen on the reactor's thread. So a
/// claim's reply is sent without the lock held, and no revoke or expiry can close a descriptor
/// while it is being sent.
package final class EscrowHolder: @unchecked Sendable {
    /// How a holder behaves.
    package struct Configuration: Sendable {
        /// The path of the rendezvous socket.
        package var endpoint: String
        /// What tokens issued here name as their mechanism (`sharer` or `broker`).
        package var mechanism: ShareMechanism
        /// Stop by itself once nothing has been held, and nobody connected, for this long; nil runs
        /// until `stop()`.
        package var lingerWhenIdle: Duration?
        /// Quotas, history and the acknowledge timeout.
        package var limits = EscrowLimits()
        /// How long a connection may stay silent before it is dropped.
        package var requestTimeout: Duration = .seconds(10)
        /// How many client connections at once, and per uid; more are refused on arrival.
        package var connections = ConnectionQuota()
        /// How often targets are checked for having exited.
        package var targetSweepInterval: Duration = .milliseconds(500)
        /// Compare claimants with targets by start time even where pidfs could say exactly, as on
        /// kernels before 6.9 (for tests).
        package var identifiesByStartTimeOnly = false
        /// Where the holder logs.
        package var logger: Logger

        package init(endpoint: String, mechanism: ShareMechanism, lingerWhenIdle: Duration?, logger: Logger) {
            self.endpoint = endpoint
            self.mechanism = mechanism
            self.lingerWhenIdle = lingerWhenIdle
            self.logger = logger
        }
    }

    /// What the table and its waiters share across threads.
    private struct Shared {
        var table: EscrowTable<SocketDescriptor>
        var waiters: [UInt64: [CheckedContinuation<ShareOutcome, Never>]] = [:]
        /// Set once the holder refuses new shares (stopping, idle, or handed over).
        var stopping = false
        var stopped = false
        /// Set when the shares went to a successor broker: stop without removing the path.
        var handedOver = false
        /// The deadline the reactor's expiry timer is set for.
        var armedDeadline: ContinuousClock.Instant?
        /// Whether the reactor is checking targets for having exited.
        var sweeping = false
        /// Duplicates of shares ended off the reactor's thread, for the reactor to close.
        var toClose: [SocketDescriptor] = []
        /// Whether the holder has shut down: every share ended, the rendezvous socket closed.
        var isShutDown = false
        /// What to run once it has.
        var onShutDown: [@Sendable () -> Void] = []
    }

    package let configuration: Configuration
    package let listener: SocketDescriptor
    package let reactor: Reactor
    package let metrics = EscrowMetrics()
    private let shared: Locked<Shared>

    /// Handles what a broker serves beyond claims; set before `start()`.
    package weak var service: (any EscrowService)?

    // Touched on the reactor's thread only.
    var connections: [UInt64: Connection] = [:]
    /// The slots the connections take (``Configuration/connections``).
    var quota: ConnectionQuota
    /// When a refused connection is worth a log line.
    var refusalLog = LogThrottle<uid_t>()
    var nextConnectionID: UInt64 = 1
    var listenerWatch: Reactor.Watch?
    var expiryTimer: Reactor.Timer?
    var lingerTimer: Reactor.Timer?
    var sweepTimer: Reactor.Timer?

    package var logger: Logger { configuration.logger }

    /// Binds the rendezvous socket at `configuration.endpoint`, whose directory must already be a
    /// prepared `RuntimeDirectory`. Nothing is served until `start()`.
    package convenience init(configuration: Configuration) throws(SocketShareError) {
        let listener = try SocketDescriptor.listening(on: .unix(path: configuration.endpoint), kind: .seqpacket, backlog: 512)
        do throws(SocketShareError) {
            try self.init(configuration: configuration, listener: listener)
        } catch {
            Kernel.unlink(configuration.endpoint)
            throw error
        }
    }

    /// Serves on a listening socket already bound at `configuration.endpoint` (one a predecessor
    /// handed over), holding `shares` (a predecessor's, with their descriptors). The holder owns
    /// `listener` and the descriptors from now on, even on error.
    package init(
        configuration: Configuration, listener: SocketDescriptor,
        installing shares: [(ShareRecord, SocketDescriptor)] = []
    ) throws(SocketShareError) {
        self.configuration = configuration
        self.listener = listener
        self.quota = configuration.connections
        do throws(SocketShareError) {
            try listener.setNonBlocking(true)
            reactor = try Reactor(name: configuration.mechanism == .broker ? "sockshare-broker" : "sockshare-sharer")
        } catch {
            try? listener.close()
            for (_, descriptor) in shares { try? descriptor.close() }
            throw error
        }
        var table = EscrowTable<SocketDescriptor>(limits: configuration.limits)
        let now = ShareTime.nowMilliseconds
        for (record, descriptor) in shares {
            guard let description = try? SocketDescription(of: descriptor.rawValue) else {
                try? descriptor.close()
                continue
            }
            let remaining = record.expiresAtMilliseconds > now ? record.expiresAtMilliseconds - now : 0
            table.install(record, description: description, held: descriptor, deadline: .now + .milliseconds(Int64(remaining)))
        }
        shared = Locked(Shared(table: table))
        metrics.held(table.count)
    }

    /// Starts serving on the holder's reactor thread.
    package func start() throws(SocketShareError) {
        reactor.execute { [self] in
            do throws(SocketShareError) {
                listenerWatch = try reactor.watch(listener.rawValue) { [self] _ in acceptConnections() }
            } catch {
                logger.error("cannot watch the rendezvous socket; stopping", metadata: ["error": "\(error)"])
                shutDown()
                return
            }
            logger.log(
                level: configuration.mechanism == .broker ? .info : .debug, "serving",
                metadata: ["endpoint": "\(configuration.endpoint)", "mechanism": "\(configuration.mechanism)"])
            armTimers()
        }
        try reactor.start()
    }

    /// Stops now: every held duplicate is closed, waiters learn ``ShareOutcome/holderStopped``, and
    /// the rendezvous socket is removed (unless a successor took it over). Returns once the
    /// reactor's thread has ended. Idempotent.
    package func stop() {
        shared.withLock { $0.stopping = true }
        if reactor.inReactor {
            shutDown()
            reactor.stop()
        } else if reactor.sync({ [self] in shutDown() }) == nil {
            // Never started, or already stopping: once its thread is gone, shut down here.
            reactor.stop()
            shutDown()
        } else {
            reactor.stop()
        }
        // Shares ended by other threads after the reactor's last round.
        for descriptor in shared.withLock({ state in defer { state.toClose.removeAll() }; return state.toClose }) {
            try? descriptor.close()
        }
        shared.withLock { $0.stopped = true }
    }

    /// Whether the holder refuses new shares: it is stopping, has stopped, or stopped itself when idle.
    package var isStopping: Bool { shared.withLock { $0.stopping } }

    /// The number of shares held now.
    package var heldCount: Int { shared.withLock { $0.table.count } }

    /// Whether a share was handed out and awaits its acknowledgement.
    package var hasHandedOut: Bool { shared.withLock { $0.table.hasHandedOut } }

    /// Takes `descriptor` into escrow for `target` and returns the token that redeems it.
    ///
    /// - Parameters:
    ///   - descriptor: The holder's own duplicate; the holder owns it from now on (even on error).
    ///   - target: The only process that may claim, resolved while it runs (`ShareTarget.resolve(pid:expected:)`).
    ///   - mechanism: `.pidfd` shares are pulled by the target and only acknowledged here.
    package func deposit(
        _ descriptor: SocketDescriptor, description: SocketDescription, target: ShareTarget,
        mechanism: ShareMechanism, timeToLive: Duration, depositor: ProcessIdentity, depositorUID: uid_t
    ) throws(SocketShareError) -> ShareToken {
        let now = ShareTime.nowMilliseconds
        let deadline = ContinuousClock.now + timeToLive
        let draft = ShareRecord(
            id: 0, secret: ShareSecret.random(), mechanism: mechanism, target: target,
            depositor: depositor, depositorUID: depositorUID, createdAtMilliseconds: now,
            expiresAtMilliseconds: now + UInt64(timeToLive / .milliseconds(1)))
        let result = shared.withLock { state -> Result<(ShareRecord, Bool, Int), SocketShareError> in
            guard !state.stopping else {
                return .failure(SocketShareError(.holderGone, operation: "deposit", detail: "the holder is stopping"))
            }
            do throws(SocketShareError) {
                let record = try state.table.insert(draft, description: description, held: descriptor, deadline: deadline)
                // The reactor hears of it only when the new share expires before any it knows of,
                // or it must start checking targets.
                let wake = state.armedDeadline.map { deadline < $0 } ?? true || !state.sweeping
                if wake {
                    state.armedDeadline = min(state.armedDeadline ?? deadline, deadline)
                    state.sweeping = true
                }
                return .success((record, wake, state.table.count))
            } catch {
                return .failure(error)
            }
        }
        switch result {
        case .success(let (record, wake, held)):
            metrics.deposited(heldNow: held)
            logger.debug("deposit", metadata: [
                "share": "\(record.id)", "target": "\(target.identity.pid)", "socket": "\(description)",
                "depositor": "\(depositor.pid)",
            ])
            if wake { reactor.execute { [self] in armTimers() } }
            return token(for: record, description: description, descriptor: descriptor)
        case .failure(let error):
            try? descriptor.close()
            throw error
        }
    }

    /// The token that redeems a share.
    private func token(for record: ShareRecord, description: SocketDescription, descriptor: SocketDescriptor) -> ShareToken {
        ShareToken(
            mechanism: record.mechanism == .pidfd ? .pidfd : configuration.mechanism, description: description,
            source: record.depositor, target: record.target.identity, createdAtMilliseconds: record.createdAtMilliseconds,
            expiresAtMilliseconds: record.expiresAtMilliseconds, endpoint: configuration.endpoint, shareID: record.id,
            secret: record.secret)
    }

    /// Ends share `id` now. Returns false when it is not held.
    @discardableResult
    package func revoke(_ id: UInt64) -> Bool {
        !end { table in table.end(id, .revoked).map { [$0] } ?? [] }.isEmpty
    }

    /// Waits until share `id` ends and returns how. A share this holder never held, or has
    /// forgotten, reports ``ShareOutcome/holderStopped`` at once.
    package func outcome(of id: UInt64) async -> ShareOutcome {
        await withCheckedContinuation { continuation in
            let ready: ShareOutcome? = shared.withLock { state in
                if let outcome = state.table.outcome(of: id) { return outcome }
                guard state.table.entries[id] != nil else { return .holderStopped }
                state.waiters[id, default: []].append(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Reads or changes the table under its lock (for a broker's listing and takeover).
    package func withTable<T>(_ body: (inout EscrowTable<SocketDescriptor>) -> T) -> T {
        shared.withLock { body(&$0.table) }
    }

    /// Ends shares through `body` (which returns those it ended): their waiters learn how, and their
    /// duplicates are closed — on the reactor's thread, so never while one is being sent.
    @discardableResult
    package func end(_ body: (inout EscrowTable<SocketDescriptor>) -> [EscrowTable<SocketDescriptor>.Ended]) -> [EscrowTable<SocketDescriptor>.Ended] {
        let onReactor = reactor.inReactor
        let (ended, waiters, held, empty) = shared.withLock { state in
            let ended = body(&state.table)
            var waiters: [(CheckedContinuation<ShareOutcome, Never>, ShareOutcome)] = []
            for share in ended {
                for waiter in state.waiters.removeValue(forKey: share.record.id) ?? [] { waiters.append((waiter, share.outcome)) }
                if !onReactor { state.toClose.append(share.held) }
            }
            return (ended, waiters, state.table.count, state.table.isEmpty)
        }
        guard !ended.isEmpty else { return ended }
        if onReactor {
            for share in ended { try? share.held.close() }
            if empty { scheduleLinger() }
        } else {
            reactor.execute { [self] in
                closePending()
                if empty { scheduleLinger() }
            }
        }
        for share in ended {
            metrics.finished(share.outcome, heldNow: held)
            logger.debug("share ended", metadata: ["share": "\(share.record.id)", "outcome": "\(share.outcome)"])
        }
        for (waiter, outcome) in waiters { waiter.resume(returning: outcome) }
        return ended
    }

    /// Closes the duplicates of shares other threads ended. On the reactor's thread.
    func closePending() {
        for descriptor in shared.withLock({ state in defer { state.toClose.removeAll() }; return state.toClose }) {
            try? descriptor.close()
        }
    }

    /// Marks the holder as stopping unless a share or a connection appeared meanwhile; returns
    /// whether it did. On the reactor's thread.
    func stopIfIdle() -> Bool {
        guard connections.isEmpty else { return false }
        return shared.withLock { state in
            guard state.table.isEmpty else { return false }
            state.stopping = true
            return true
        }
    }

    /// Sets the expiry and sweep timers from the table. On the reactor's thread.
    func armTimers() {
        let (deadline, sweeping) = shared.withLock { state in
            state.armedDeadline = state.table.nextDeadline
            state.sweeping = !state.table.isEmpty
            return (state.armedDeadline, state.sweeping)
        }
        if let expiryTimer { reactor.cancel(expiryTimer) }
        expiryTimer = deadline.map { deadline in
            reactor.schedule(at: deadline) { [self] in
                expiryTimer = nil
                end { $0.expire(at: .now) }
                armTimers()
            }
        }
        if sweeping, sweepTimer == nil {
            sweepTimer = reactor.schedule(at: .now + configuration.targetSweepInterval) { [self] in
                sweepTimer = nil
                sweepTargets()
            }
        }
        if let lingerTimer, sweeping || !connections.isEmpty {
            reactor.cancel(lingerTimer)
            self.lingerTimer = nil
        }
    }

    /// Ends the shares whose targets have exited: nobody can ever claim them. On the reactor's thread.
    private func sweepTargets() {
        let targets = withTable { $0.targets }
        let gone = targets.filter { !$0.isRunning }
        if !gone.isEmpty { end { $0.endShares(for: gone) } }
        armTimers()
    }

    /// With a linger, stops the holder once it has been idle that long. On the reactor's thread.
    func scheduleLinger() {
        guard let linger = configuration.lingerWhenIdle, lingerTimer == nil, connections.isEmpty, heldCount == 0 else { return }
        lingerTimer = reactor.schedule(at: .now + linger) { [self] in
            lingerTimer = nil
            guard stopIfIdle() else { return }
            logger.debug("idle; stopping", metadata: ["endpoint": "\(configuration.endpoint)"])
            shutDown()
            reactor.stop()
        }
    }

    /// Ends everything and closes the rendezvous socket. On the reactor's thread.
    func shutDown() {
        guard !shared.withLock({ $0.isShutDown }) else { return }
        shared.withLock { $0.stopping = true }
        for connection in connections.values { close(connection, releasing: false) }
        let ended = end { $0.endAll(.holderStopped) }
        closePending()
        if let listenerWatch { reactor.unwatch(listenerWatch) }
        listenerWatch = nil
        try? listener.close()
        if shared.withLock({ $0.handedOver }) {
            logger.info("handed everything to the successor; exiting without removing \(configuration.endpoint)")
        } else {
            if !ended.isEmpty {
                logger.notice("stopping: closed \(ended.count) held shares; their tokens can no longer be claimed")
            }
            Kernel.unlink(configuration.endpoint)
        }
        let actions = shared.withLock { state in
            state.isShutDown = true
            defer { state.onShutDown.removeAll() }
            return state.onShutDown
        }
        for action in actions { action() }
    }

    /// Runs `action` once the holder has shut down (at once if it has), on whichever thread shuts it down.
    package func whenStopped(_ action: @escaping @Sendable () -> Void) {
        let now = shared.withLock { state -> Bool in
            if state.isShutDown { return true }
            state.onShutDown.append(action)
            return false
        }
        if now { action() }
    }

    /// Closes everything without removing the rendezvous path, which another holder still serves
    /// (a takeover that could not be confirmed). For a holder never started.
    package func abandon() {
        shared.withLock { $0.handedOver = true }
        stop()
    }

    /// Everything went to a successor: stop without removing the rendezvous path. On the reactor's thread.
    package func finishHandover() {
        shared.withLock { $0.handedOver = true }
        shutDown()
        reactor.stop()
    }
}

/// What a broker serves beyond claims: deposits, revocations, listings, metrics and takeover.
/// Every call comes on the holder's reactor thread.
package protocol EscrowService: AnyObject, Sendable {
    /// Answers `request` (any request other than claim and acknowledge), which came with
    /// `descriptor` (a deposit's, owned by the caller, which closes it after this returns).
    func respond(
        to request: EscrowMessage, descriptor: SocketDescriptor?, from connection: EscrowHolder.Connection,
        in holder: EscrowHolder
    ) -> EscrowHolder.Answer
    /// A connection closed (a successor broker's, maybe).
    func connectionClosed(_ connection: EscrowHolder.Connection, in holder: EscrowHolder)
    /// A handed-out share was acknowledged, or its claimant went away.
    func handOutSettled(in holder: EscrowHolder)
    /// `connection` acknowledged share `id`, which the holder did not hand out: whether the
    /// service did (a named share).
    func acknowledged(_ id: UInt64, from connection: EscrowHolder.Connection, in holder: EscrowHolder) -> Bool
}
