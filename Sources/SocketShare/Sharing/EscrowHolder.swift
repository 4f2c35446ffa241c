import Glibc
import Synchronization

/// Holds duplicates of shared sockets until their targets claim them, and serves the claims.
///
/// One type serves both holders of the design: the in-process *sharer* (started by
/// ``SocketShare/duplicate(_:for:options:)``, on its own thread) and the *broker* daemon. It listens
/// on a `SOCK_SEQPACKET` socket at a path inside a ``RuntimeDirectory`` and speaks the escrow
/// protocol (``EscrowMessage``).
///
/// Rules it enforces for every share: only the target process (pid and start time, via
/// `SO_PEERPIDFD` or `SO_PEERCRED`) with the target's uid may claim; a share is handed out once
/// and closed after the claimant acknowledges; an unacknowledged hand-out is offered again when the
/// claimant goes away; at expiry, or when the target exits, the held duplicate is closed.
final class EscrowHolder: Sendable {
    /// How a holder behaves.
    struct Configuration: Sendable {
        /// The path of the rendezvous socket.
        var endpoint: String
        /// What tokens issued here name as their mechanism (`sharer` or `broker`).
        var mechanism: ShareMechanism
        /// Stop by itself once nothing has been held for this long (the sharer); nil runs until ``stop()``.
        var lingerWhenIdle: Duration?
        /// The most shares held at once.
        var maximumShares = 100_000
        /// How long a connection may stay silent before it is dropped.
        var requestTimeout: Duration = .seconds(10)
        /// How long a claimant has to acknowledge a descriptor before the share is offered again.
        var acknowledgeTimeout: Duration = .seconds(5)
        /// The most client connections at once; more are closed on arrival.
        var maximumConnections = 4096
        /// How many finished shares are remembered, to tell a replayed claim why it is refused.
        var historyLimit = 4096
        /// Compare claimants with targets by start time even where pidfs could say exactly, as on
        /// kernels before 6.9 (for tests).
        var identifiesByStartTimeOnly = false
    }

    /// A share being held.
    struct Entry {
        let id: UInt64
        /// Nil for pidfd shares, which are pulled, not claimed.
        let secret: ShareSecret?
        let target: ProcessIdentity
        let targetUID: uid_t
        let targetWatch: ProcessDescriptor
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
        var history: [UInt64: Finished] = [:]
        var historyOrder: [UInt64] = []
        var waiters: [UInt64: [CheckedContinuation<ShareOutcome, Never>]] = [:]
        var nextID: UInt64
        var stopping = false
        var stopped = false
        var idleSince: ContinuousClock.Instant? = .now
    }

    let configuration: Configuration
    let listener: SocketDescriptor
    let state: Mutex<State>
    /// Written to wake the loop (a deposit changed the deadlines, or stop() was called).
    let wakeRead: CInt
    let wakeWrite: CInt

    /// Binds the rendezvous socket at `configuration.endpoint`, whose directory must already be a
    /// prepared ``RuntimeDirectory``. Nothing is served until ``start()`` or ``run()``.
    init(configuration: Configuration) throws(SocketShareError) {
        self.configuration = configuration
        let listener = try SocketDescriptor.listening(on: .unix(path: configuration.endpoint), kind: .seqpacket, backlog: 512)
        do throws(SocketShareError) {
            try listener.setNonBlocking(true)
            let (read, write) = try Kernel.pipe()
            try Kernel.setNonBlocking(write, true)
            try Kernel.setNonBlocking(read, true)
            wakeRead = read
            wakeWrite = write
        } catch {
            try? listener.close()
            Kernel.unlink(configuration.endpoint)
            throw error
        }
        self.listener = listener
        var generator = SystemRandomNumberGenerator()
        state = Mutex(State(nextID: generator.next() >> 16 | 1))
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

    /// The number of shares held now.
    var heldCount: Int { state.withLock { $0.entries.count } }

    /// Takes `descriptor` into escrow for `target` and returns the token that redeems it.
    ///
    /// - Parameters:
    ///   - descriptor: The holder's own duplicate; the holder owns it from now on (even on error).
    ///   - target: The only process that may claim.
    ///   - watch: A pidfd of `target`: its exit ends the share.
    /// - Throws: ``SocketShareError`` with code `invalidArgument` when `watch` is not `target` (it
    ///   exited, and its pid names another process now).
    ///   - mechanism: `.pidfd` shares are pulled by the target and only acknowledged here.
    func deposit(
        _ descriptor: SocketDescriptor, description: SocketDescription, target: ProcessIdentity, targetUID: uid_t,
        watch: ProcessDescriptor, mechanism: ShareMechanism, timeToLive: Duration,
        depositor: ProcessIdentity, depositorUID: uid_t
    ) throws(SocketShareError) -> ShareToken {
        guard watch.identity == target else {
            try? descriptor.close()
            throw SocketShareError(
                .invalidArgument, operation: "deposit",
                detail: "\(target) has exited; pid \(target.pid) now names a process started at tick \(watch.identity.startTime)")
        }
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
                    detail: "\(state.entries.count) shares held; the limit is \(configuration.maximumShares)"))
            }
            let id = state.nextID
            state.nextID &+= 1
            let entry = Entry(
                id: id, secret: secret, target: target, targetUID: targetUID, targetWatch: watch,
                descriptor: descriptor, description: description, depositor: depositor, depositorUID: depositorUID,
                createdAtMilliseconds: now, expiresAtMilliseconds: now + ttlMilliseconds,
                deadline: .now + timeToLive, offeredTo: nil)
            state.entries[id] = entry
            state.idleSince = nil
            let redemption: ShareToken.Redemption =
                if let secret { .escrow(secret: secret) } else { .pidfd(descriptor: descriptor.rawValue) }
            return .success(ShareToken(
                mechanism: mechanism == .pidfd ? .pidfd : configuration.mechanism, description: description,
                source: depositor, target: target, createdAtMilliseconds: now,
                expiresAtMilliseconds: now + ttlMilliseconds, endpoint: configuration.endpoint, shareID: id,
                redemption: redemption))
        }
        switch result {
        case .success(let token):
            wake()
            return token
        case .failure(let error):
            try? descriptor.close()
            throw error
        }
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
        finish(id) { .claimed(by: $0.target) }
    }

    @discardableResult
    private func finish(_ id: UInt64, _ outcomeOf: (Entry) -> ShareOutcome) -> Bool {
        let (entry, outcome, waiters): (Entry?, ShareOutcome, [CheckedContinuation<ShareOutcome, Never>]) = state.withLock { state in
            guard let entry = state.entries.removeValue(forKey: id) else { return (nil, .holderStopped, []) }
            let outcome = outcomeOf(entry)
            state.history[id] = Finished(secret: entry.secret, outcome: outcome)
            state.historyOrder.append(id)
            if state.historyOrder.count > configuration.historyLimit {
                state.history.removeValue(forKey: state.historyOrder.removeFirst())
            }
            if state.entries.isEmpty { state.idleSince = .now }
            return (entry, outcome, state.waiters.removeValue(forKey: id) ?? [])
        }
        guard let entry else { return false }
        try? entry.descriptor.close()
        for waiter in waiters { waiter.resume(returning: outcome) }
        return true
    }

    func wake() {
        var byte: UInt8 = 1
        _ = Glibc.write(wakeWrite, &byte, 1)
    }
}
