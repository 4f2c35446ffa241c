import Glibc
import Logging

/// Holds duplicates of shared sockets until their targets claim them, and serves the claims.
///
/// One type serves both holders of the design: the in-process *sharer* (started by
/// ``SocketShare/duplicate(_:for:options:)``, on its own thread) and the *broker* daemon
/// (``Broker``), which also takes deposits, revocations, listings and takeovers from other
/// processes. It listens on a `SOCK_SEQPACKET` socket at a path inside a ``RuntimeDirectory`` and
/// speaks the escrow protocol (``EscrowMessage``, `docs/PROTOCOL.md`).
///
/// Rules it enforces for every share: only the target process (pid, and pidfs inode or start time,
/// via `SO_PEERPIDFD`/`SO_PEERCRED`) running as the target's uid may claim; a share is handed out
/// once and closed after the claimant acknowledges; an unacknowledged hand-out is offered again when
/// the claimant goes away; at expiry, or once the target has exited, the held duplicate is closed.
final class EscrowHolder: Sendable {
    /// How a holder behaves.
    struct Configuration: Sendable {
        /// The path of the rendezvous socket.
        var endpoint: String
        /// What tokens issued here name as their mechanism (`sharer` or `broker`).
        var mechanism: ShareMechanism
        /// Stop by itself once nothing has been held for this long (the sharer); nil runs until ``stop()``.
        var lingerWhenIdle: Duration?
        /// Whether other processes may deposit, revoke, list, read metrics and take over (the broker).
        var servesBrokerRequests = false
        /// The most shares held at once.
        var maximumShares = 100_000
        /// The most shares one depositor uid may hold at once; nil for no limit.
        var maximumSharesPerUser: Int? = nil
        /// The longest time to live a deposit may ask for.
        var maximumTimeToLive: Duration = .seconds(86_400)
        /// How long a connection may stay silent before it is dropped.
        var requestTimeout: Duration = .seconds(10)
        /// How long a claimant has to acknowledge a descriptor before the share is offered again.
        var acknowledgeTimeout: Duration = .seconds(5)
        /// The most client connections at once; more are closed on arrival.
        var maximumConnections = 2048
        /// How many finished shares are remembered, to tell a replayed claim why it is refused.
        var historyLimit = 4096
        /// How often targets are checked for having exited.
        var targetSweepInterval: Duration = .milliseconds(500)
        /// Compare claimants with targets by start time even where pidfs could say exactly, as on
        /// kernels before 6.9 (for tests).
        var identifiesByStartTimeOnly = false
        /// Renders the process's metrics for a `metrics` request; nil answers with an empty text.
        var metricsText: (@Sendable () -> String)? = nil
        /// Where the holder logs.
        var logger = Logger(label: "sockshare.escrow", factory: { _ in SwiftLogNoOpLogHandler() })
    }

    /// A share being held.
    struct Entry {
        let id: UInt64
        /// Nil for pidfd shares, which are pulled, not claimed.
        let secret: ShareSecret?
        let mechanism: ShareMechanism
        let target: ShareTarget
        let descriptor: SocketDescriptor
        let description: SocketDescription
        let depositor: ProcessIdentity
        let depositorUID: uid_t
        let createdAtMilliseconds: UInt64
        let expiresAtMilliseconds: UInt64
        let deadline: ContinuousClock.Instant
        /// The connection the descriptor was handed to, awaiting its acknowledgement.
        var offeredTo: ObjectIdentifier?
    }

    /// A share that ended, remembered so that a replayed claim learns why it is refused.
    struct Finished {
        let secret: ShareSecret?
        let outcome: ShareOutcome
    }

    struct State {
        var entries: [UInt64: Entry] = [:]
        var deadlines = DeadlineQueue()
        var perUser: [uid_t: Int] = [:]
        var history: [UInt64: Finished] = [:]
        var historyOrder: [UInt64] = []
        var waiters: [UInt64: [CheckedContinuation<ShareOutcome, Never>]] = [:]
        var nextID: UInt64
        var stopping = false
        var stopped = false
        /// Set when the shares went to a successor broker: stop without closing the path.
        var handedOver = false
        var idleSince: ContinuousClock.Instant? = .now
    }

    let configuration: Configuration
    let listener: SocketDescriptor
    let state: Locked<State>
    /// Written to wake the loop (a deposit changed the deadlines, or stop() was called).
    let wakeRead: CInt
    let wakeWrite: CInt
    let metrics = EscrowMetrics()

    var logger: Logger { configuration.logger }

    /// Binds the rendezvous socket at `configuration.endpoint`, whose directory must already be a
    /// prepared ``RuntimeDirectory``. Nothing is served until ``start()`` or ``run()``.
    convenience init(configuration: Configuration) throws(SocketShareError) {
        let listener = try SocketDescriptor.listening(on: .unix(path: configuration.endpoint), kind: .seqpacket, backlog: 512)
        do throws(SocketShareError) {
            try self.init(configuration: configuration, listener: listener)
        } catch {
            Kernel.unlink(configuration.endpoint)
            throw error
        }
    }

    /// Serves on a listening socket already bound at `configuration.endpoint` (one a predecessor
    /// handed over). The holder owns `listener` from now on, even on error.
    init(configuration: Configuration, listener: SocketDescriptor, firstID: UInt64? = nil) throws(SocketShareError) {
        self.configuration = configuration
        do throws(SocketShareError) {
            try listener.setNonBlocking(true)
            let (read, write) = try Kernel.pipe()
            try Kernel.setNonBlocking(write, true)
            try Kernel.setNonBlocking(read, true)
            wakeRead = read
            wakeWrite = write
        } catch {
            try? listener.close()
            throw error
        }
        self.listener = listener
        var generator = SystemRandomNumberGenerator()
        state = Locked(State(nextID: firstID ?? (generator.next() >> 16 | 1)))
    }

    deinit {
        try? Kernel.close(wakeRead)
        try? Kernel.close(wakeWrite)
    }

    /// Serves on a new thread until stopped.
    func start() throws(SocketShareError) {
        try DetachedThread.start { [self] in run() }
    }

    /// Asks the loop to stop: every held duplicate is closed, waiters learn ``ShareOutcome/holderStopped``,
    /// and the rendezvous socket is removed.
    func stop() {
        state.withLock { $0.stopping = true }
        wake()
    }

    /// Whether the holder has stopped or is stopping (it accepts no new shares then).
    var isStopping: Bool { state.withLock { $0.stopping || $0.stopped } }

    /// Whether the loop has finished.
    var hasStopped: Bool { state.withLock { $0.stopped } }

    /// The number of shares held now.
    var heldCount: Int { state.withLock { $0.entries.count } }

    /// Takes `descriptor` into escrow for `target` and returns the token that redeems it.
    ///
    /// - Parameters:
    ///   - descriptor: The holder's own duplicate; the holder owns it from now on (even on error).
    ///   - target: The only process that may claim, resolved while it runs (``ShareTarget/resolve(pid:expected:)``).
    ///   - mechanism: `.pidfd` shares are pulled by the target and only acknowledged here.
    func deposit(
        _ descriptor: SocketDescriptor, description: SocketDescription, target: ShareTarget,
        mechanism: ShareMechanism, timeToLive: Duration, depositor: ProcessIdentity, depositorUID: uid_t
    ) throws(SocketShareError) -> ShareToken {
        let now = ShareTime.nowMilliseconds
        let ttlMilliseconds = UInt64(max(0, timeToLive.components.seconds)) * 1000
            + UInt64(max(0, timeToLive.components.attoseconds)) / 1_000_000_000_000_000
        let secret: ShareSecret? = mechanism == .pidfd ? nil : ShareSecret.random()
        let result: Result<ShareToken, SocketShareError> = state.withLock { state in
            guard !state.stopping && !state.stopped else {
                return .failure(SocketShareError(.holderGone, operation: "deposit", detail: "the holder is stopping"))
            }
            guard state.entries.count < configuration.maximumShares else {
                return .failure(SocketShareError(
                    .limitReached, operation: "deposit",
                    detail: "\(state.entries.count) shares are held; the limit is \(configuration.maximumShares)"))
            }
            if let limit = configuration.maximumSharesPerUser, state.perUser[depositorUID, default: 0] >= limit {
                return .failure(SocketShareError(
                    .limitReached, operation: "deposit",
                    detail: "uid \(depositorUID) holds \(limit) shares, its limit; claim or revoke some first"))
            }
            let id = state.nextID
            state.nextID &+= 1
            let entry = Entry(
                id: id, secret: secret, mechanism: mechanism, target: target, descriptor: descriptor,
                description: description, depositor: depositor, depositorUID: depositorUID,
                createdAtMilliseconds: now, expiresAtMilliseconds: now + ttlMilliseconds,
                deadline: .now + timeToLive, offeredTo: nil)
            state.entries[id] = entry
            state.deadlines.insert(entry.deadline, id: id)
            state.perUser[depositorUID, default: 0] += 1
            state.idleSince = nil
            return .success(token(for: entry))
        }
        switch result {
        case .success(let token):
            metrics.deposited(heldNow: heldCount)
            logger.debug("deposit", metadata: [
                "share": "\(token.shareID)", "target": "\(target.identity.pid)", "socket": "\(description)",
                "depositor": "\(depositor.pid)",
            ])
            wake()
            return token
        case .failure(let error):
            try? descriptor.close()
            throw error
        }
    }

    /// The token that redeems `entry`.
    func token(for entry: Entry) -> ShareToken {
        ShareToken(
            mechanism: entry.mechanism == .pidfd ? .pidfd : configuration.mechanism, description: entry.description,
            source: entry.depositor, target: entry.target.identity, createdAtMilliseconds: entry.createdAtMilliseconds,
            expiresAtMilliseconds: entry.expiresAtMilliseconds, endpoint: configuration.endpoint, shareID: entry.id,
            redemption: entry.secret.map { .escrow(secret: $0) } ?? .pidfd(descriptor: entry.descriptor.rawValue))
    }

    /// Ends share `id` now, closing the held duplicate. Returns false when it is not held.
    @discardableResult
    func revoke(_ id: UInt64) -> Bool {
        let revoked = finish(id, .revoked)
        if revoked { wake() }
        return revoked
    }

    /// Waits until share `id` ends and returns how. A share this holder never held, or has
    /// forgotten, reports ``ShareOutcome/holderStopped`` at once.
    func outcome(of id: UInt64) async -> ShareOutcome {
        await withCheckedContinuation { continuation in
            let ready: ShareOutcome? = state.withLock { state in
                if let finished = state.history[id] { return finished.outcome }
                guard state.entries[id] != nil else { return .holderStopped }
                state.waiters[id, default: []].append(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Removes share `id`, closes its duplicate, records `outcome` and wakes its waiters.
    @discardableResult
    func finish(_ id: UInt64, _ outcome: ShareOutcome) -> Bool {
        finish(id) { _ in outcome }
    }

    /// Ends share `id` as claimed by its target.
    func finishClaimed(_ id: UInt64) {
        finish(id) { .claimed(by: $0.target.identity) }
    }

    @discardableResult
    private func finish(_ id: UInt64, _ outcomeOf: (Entry) -> ShareOutcome) -> Bool {
        let (entry, outcome, waiters, held): (Entry?, ShareOutcome, [CheckedContinuation<ShareOutcome, Never>], Int) =
            state.withLock { state in
                guard let entry = state.entries.removeValue(forKey: id) else { return (nil, .holderStopped, [], 0) }
                let outcome = outcomeOf(entry)
                state.history[id] = Finished(secret: entry.secret, outcome: outcome)
                state.historyOrder.append(id)
                if state.historyOrder.count > configuration.historyLimit {
                    state.history.removeValue(forKey: state.historyOrder.removeFirst())
                }
                state.perUser[entry.depositorUID, default: 1] -= 1
                if state.perUser[entry.depositorUID] == 0 { state.perUser.removeValue(forKey: entry.depositorUID) }
                if state.entries.isEmpty { state.idleSince = .now }
                return (entry, outcome, state.waiters.removeValue(forKey: id) ?? [], state.entries.count)
            }
        guard let entry else { return false }
        try? entry.descriptor.close()
        metrics.finished(outcome, heldNow: held)
        logger.debug("share ended", metadata: ["share": "\(id)", "outcome": "\(outcome)"])
        for waiter in waiters { waiter.resume(returning: outcome) }
        return true
    }

    func wake() {
        var byte: UInt8 = 1
        _ = Glibc.write(wakeWrite, &byte, 1)
    }
}
