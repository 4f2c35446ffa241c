import Glibc
import SocketShareCore

/// The decisions of an escrow holder, apart from its I/O: which shares are held, for whom and until
/// when, who may claim one, what happens when a claimant goes away, and what a replayed claim is told.
///
/// A pure value: time comes in as arguments, and whether a claimant is the target process is asked
/// of the `Claimant` (the holder answers it from `SO_PEERPIDFD`/`SO_PEERCRED`; tests answer it
/// themselves). `Held` is what the holder keeps per share — its duplicate of the socket; the table
/// never closes one: every operation that ends a share returns it (`Ended`) for the caller to close.
///
/// Every share is one `ShareRecord` (the same model a broker hands to its successor, and that a
/// listing shows a view of) plus its socket's description, the held value and its deadline.
package struct EscrowTable<Held> {
    /// A share being held.
    package struct Entry {
        package var record: ShareRecord
        package var description: SocketDescription
        package var held: Held
        /// When it expires on the holder's clock.
        package var deadline: ContinuousClock.Instant
        /// The connection it was handed to, awaiting that connection's acknowledgement.
        package var offeredTo: UInt64?
    }

    /// A share that ended: what the holder must close, and how it ended.
    package struct Ended {
        package var record: ShareRecord
        package var held: Held
        package var outcome: ShareOutcome
    }

    /// Who asks for a share.
    package struct Claimant: Sendable {
        package var pid: pid_t
        package var uid: uid_t
        /// Whether the asker is the very process `target` names (not a later one with its pid).
        package var isProcess: @Sendable (ShareTarget) -> Bool

        package init(pid: pid_t, uid: uid_t, isProcess: @escaping @Sendable (ShareTarget) -> Bool) {
            self.pid = pid
            self.uid = uid
            self.isProcess = isProcess
        }
    }

    /// The answer to a claim.
    package enum Claim {
        /// Send this descriptor; the share now awaits the connection's acknowledgement.
        case handOut(Held)
        /// Refuse.
        case refuse(EscrowRefusal)
    }

    package let limits: EscrowLimits
    package private(set) var entries: [UInt64: Entry] = [:]
    private var deadlines = DeadlineQueue()
    private var perUser: [uid_t: Int] = [:]
    private var history: [UInt64: (secret: ShareSecret, outcome: ShareOutcome)] = [:]
    private var historyOrder: [UInt64] = []
    private var ids: ShareIDs

    /// An empty table drawing share ids from `ids` (unguessable ones by default).
    package init(limits: EscrowLimits, ids: ShareIDs = .random) {
        self.limits = limits
        self.ids = ids
    }

    /// The shares held now.
    package var count: Int { entries.count }
    package var isEmpty: Bool { entries.isEmpty }
    /// Whether some share was handed out and is not yet acknowledged.
    package var hasHandedOut: Bool { entries.values.contains { $0.offeredTo != nil } }
    /// The earliest deadline of a held share (possibly of one that has since ended: harmless, as
    /// `expire(at:)` checks).
    package var nextDeadline: ContinuousClock.Instant? { deadlines.earliest }
    /// The shares `uid` deposited that are held now.
    package func count(depositedBy uid: uid_t) -> Int { perUser[uid, default: 0] }
    /// The processes shares are held for.
    package var targets: Set<ShareTarget> { Set(entries.values.map(\.record.target)) }

    /// Holds a new share. Its id is assigned here (any id in `record` is replaced).
    ///
    /// - Throws: `SocketShareError` with code `limitReached` when the table, or the depositor's
    ///   quota, is full; the caller still owns `held` then.
    package mutating func insert(
        _ record: ShareRecord, description: SocketDescription, held: Held, deadline: ContinuousClock.Instant
    ) throws(SocketShareError) -> ShareRecord {
        guard entries.count < limits.maximumShares else {
            throw SocketShareError(
                .limitReached, operation: "deposit",
                detail: "\(entries.count) shares are held; the limit is \(limits.maximumShares)")
        }
        if let limit = limits.maximumSharesPerUser, perUser[record.depositorUID, default: 0] >= limit {
            throw SocketShareError(
                .limitReached, operation: "deposit",
                detail: "uid \(record.depositorUID) holds \(limit) shares, its limit; claim or revoke some first")
        }
        var record = record
        repeat { record.id = ids.draw() } while entries[record.id] != nil || history[record.id] != nil
        add(Entry(record: record, description: description, held: held, deadline: deadline))
        return record
    }

    /// Holds shares a predecessor handed over, under their own ids; later ids follow the highest.
    /// Quotas are not checked: refusing one would lose it.
    package mutating func install(_ record: ShareRecord, description: SocketDescription, held: Held, deadline: ContinuousClock.Instant) {
        add(Entry(record: record, description: description, held: held, deadline: deadline))
        ids.skip(past: record.id)
    }

    private mutating func add(_ entry: Entry) {
        entries[entry.record.id] = entry
        deadlines.insert(entry.deadline, id: entry.record.id)
        perUser[entry.record.depositorUID, default: 0] += 1
    }

    /// Decides a claim of share `id` by `claimant` on connection `connection`.
    ///
    /// The checks run in this order, so that nothing is revealed to who cannot prove the secret:
    /// the id and secret (`notFound`, or why a share that ended is refused), then the claimant (pid
    /// `wrongProcess`, process `wrongStartTime`, uid `wrongUser`), then `claimInProgress`, then `expired`.
    package mutating func claim(
        _ id: UInt64, secret: ShareSecret, by claimant: Claimant, connection: UInt64, now: ContinuousClock.Instant
    ) -> Claim {
        guard let entry = entries[id], entry.record.secret == secret else {
            if let ended = history[id], ended.secret == secret {
                return .refuse(Self.refusal(for: ended.outcome))
            }
            return .refuse(EscrowRefusal(.notFound, "no share with this id and secret is held here"))
        }
        if let refusal = Self.authorize(claimant, for: entry.record.target) { return .refuse(refusal) }
        guard entry.offeredTo == nil else {
            return .refuse(EscrowRefusal(.claimInProgress, "this share was handed out and awaits its acknowledgement"))
        }
        guard entry.deadline > now else { return .refuse(EscrowRefusal(.expired, "the share expired")) }
        entries[id]?.offeredTo = connection
        return .handOut(entry.held)
    }

    /// The claimant on `connection` holds share `id`: it ends as claimed. Nil when the share was
    /// not handed to that connection.
    package mutating func acknowledge(_ id: UInt64, connection: UInt64) -> Ended? {
        guard let entry = entries[id], entry.offeredTo == connection else { return nil }
        return end(id, .claimed(by: entry.record.target.identity))
    }

    /// The claimant on `connection` went away without acknowledging share `id`: it is claimable
    /// again (until its own deadline). Returns whether it was waiting on that connection.
    @discardableResult
    package mutating func release(_ id: UInt64, connection: UInt64) -> Bool {
        guard let entry = entries[id], entry.offeredTo == connection else { return false }
        entries[id]?.offeredTo = nil
        deadlines.insert(entry.deadline, id: id)
        return true
    }

    /// Ends share `id` with `outcome`. Nil when it is not held.
    package mutating func end(_ id: UInt64, _ outcome: ShareOutcome) -> Ended? {
        guard let entry = entries.removeValue(forKey: id) else { return nil }
        history[id] = (entry.record.secret, outcome)
        historyOrder.append(id)
        if historyOrder.count > limits.historyLimit {
            history.removeValue(forKey: historyOrder.removeFirst())
        }
        perUser[entry.record.depositorUID, default: 1] -= 1
        if perUser[entry.record.depositorUID] == 0 { perUser.removeValue(forKey: entry.record.depositorUID) }
        return Ended(record: entry.record, held: entry.held, outcome: outcome)
    }

    /// How a share ended, while it is remembered; nil for one held now or never known.
    package func outcome(of id: UInt64) -> ShareOutcome? { history[id]?.outcome }

    /// Ends the shares whose deadline passed by `now`. One handed out and not yet acknowledged gets
    /// until the acknowledge timeout first: its claimant may already hold it.
    package mutating func expire(at now: ContinuousClock.Instant) -> [Ended] {
        var ended: [Ended] = []
        for id in deadlines.popDue(now) {
            guard let entry = entries[id], entry.deadline <= now else { continue }
            if entry.offeredTo == nil {
                if let done = end(id, .expired) { ended.append(done) }
            } else {
                deadlines.insert(now + limits.acknowledgeTimeout, id: id)
            }
        }
        return ended
    }

    /// Ends every share held for one of `targets` (they exited: nobody can ever claim them).
    package mutating func endShares(for targets: Set<ShareTarget>) -> [Ended] {
        entries.values.filter { targets.contains($0.record.target) }.map(\.record.id).sorted()
            .compactMap { end($0, .targetExited) }
    }

    /// Ends every share with `outcome`.
    package mutating func endAll(_ outcome: ShareOutcome) -> [Ended] {
        entries.keys.sorted().compactMap { end($0, outcome) }
    }

    /// Ends share `id` at the request of `uid`: its depositor or root only. A share that is not the
    /// requester's is refused as one that does not exist: ids say nothing of other users' shares.
    package mutating func revoke(_ id: UInt64, by uid: uid_t) -> Result<Ended, EscrowRefusal> {
        guard let entry = entries[id], uid == entry.record.depositorUID || uid == 0 else {
            return .failure(EscrowRefusal(.notFound, "no share \(id) of yours is held here"))
        }
        return .success(end(id, .revoked)!)
    }

    /// The shares `uid` may see (its own; all for root) with ids above `after`, one page of at most
    /// `pageSize`, and whether more follow.
    package func listing(for uid: uid_t, after: UInt64, pageSize: Int, nowMilliseconds: UInt64) -> (more: Bool, shares: [HeldShare]) {
        let visible = entries.values
            .filter { ($0.record.depositorUID == uid || uid == 0) && $0.record.id > after }
            .sorted { $0.record.id < $1.record.id }
        let page = visible.prefix(pageSize).map { HeldShare($0.record, description: $0.description, nowMilliseconds: nowMilliseconds) }
        return (visible.count > page.count, page)
    }

    /// Whether `claimant` may claim a share for `target`: nil when it may, else the refusal.
    /// The claimant must be the target process (pid, then pidfs inode or start time) running as the
    /// target's uid.
    package static func authorize(_ claimant: Claimant, for target: ShareTarget) -> EscrowRefusal? {
        guard claimant.pid == target.identity.pid else {
            return EscrowRefusal(.wrongProcess, "this share is for pid \(target.identity.pid); pid \(claimant.pid) may not claim it")
        }
        guard claimant.isProcess(target) else {
            return EscrowRefusal(
                .wrongStartTime,
                "pid \(claimant.pid) is not the target process but a later one with its pid "
                    + "(the target, started at tick \(target.identity.startTime), exited and its pid was reused)")
        }
        guard claimant.uid == target.uid else {
            return EscrowRefusal(.wrongUser, "the claimant runs as uid \(claimant.uid); the target ran as uid \(target.uid)")
        }
        return nil
    }

    /// What a claim of a share that ended is told.
    package static func refusal(for outcome: ShareOutcome) -> EscrowRefusal {
        switch outcome {
        case .claimed(let by): EscrowRefusal(.alreadyClaimed, "the share was already claimed by pid \(by.pid); shares are single use")
        case .expired: EscrowRefusal(.expired, "the share expired before it was claimed")
        case .revoked: EscrowRefusal(.revoked, "the source revoked the share")
        case .targetExited: EscrowRefusal(.revoked, "the share's target exited before claiming it")
        case .holderStopped: EscrowRefusal(.revoked, "the holder stopped")
        }
    }
}

/// A request an escrow holder refuses: the failure code and the text sent with it.
package struct EscrowRefusal: Error, Equatable {
    package var failure: EscrowFailure
    package var text: String
    /// What the holder's log may add that the requester is not told (why a policy refused).
    package var logDetail: String?

    package init(_ failure: EscrowFailure, _ text: String) {
        self.failure = failure
        self.text = text
    }

    /// The failure message to send.
    package var message: EscrowMessage { .failure(failure, text) }
}

/// What an escrow table enforces: quotas, the history it keeps, the acknowledge timeout.
package struct EscrowLimits: Sendable {
    /// The most shares held at once.
    package var maximumShares = 100_000
    /// The most shares one depositor uid may hold at once; nil for no limit.
    package var maximumSharesPerUser: Int? = nil
    /// How many ended shares are remembered, to tell a replayed claim why it is refused.
    package var historyLimit = 4096
    /// How long a claimant has to acknowledge a descriptor before the share is offered again.
    package var acknowledgeTimeout: Duration = .seconds(5)

    package init() {}
}

extension EscrowTable: Sendable where Held: Sendable {}
extension EscrowTable.Entry: Sendable where Held: Sendable {}
extension EscrowTable.Ended: Sendable where Held: Sendable {}
