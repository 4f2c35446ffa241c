import Glibc
import SocketShare
import SocketShareCore

/// The broker's decisions about named shares, apart from its I/O: which names are held, who their
/// policies admit, single use against a standing store (`keep`), claims in flight, expiry.
///
/// Names are scoped by depositor: each uid has names of its own, so no one can take a name before
/// another uid does and have that uid's claimants served a socket of theirs (squatting). A claim
/// names whose share it wants; by default it looks at the claimant's own names, then root's, then
/// the broker's own user's (`Claim.from`). A share whose policy does not admit the claimant is
/// refused exactly as one that does not exist, so a claim tells nothing of other users' shares.
///
/// A pure value, like `EscrowTable`: time comes in as arguments, the claimant's ids come in as a
/// `Claimant`, and every operation that ends a share returns its held value for the caller to close.
package struct NamedShareTable<Held> {
    /// A named share being held.
    package struct Entry {
        package var record: NamedShareRecord
        package var description: SocketDescription
        package var held: Held
        /// When it expires; nil for a kept share held until revoked.
        package var deadline: ContinuousClock.Instant?
        /// The connections it was handed to, awaiting their acknowledgement.
        package var offeredTo: Set<UInt64> = []
    }

    /// A share that ended, for the caller to close and log.
    package struct Ended {
        package var record: NamedShareRecord
        package var held: Held
        package var outcome: ShareOutcome
    }

    /// Who asks for a share, by the kernel's word at connect time.
    package struct Claimant {
        package var pid: pid_t
        package var uid: uid_t
        package var gid: gid_t
        /// The claimant's cgroup path, read only when a policy names one; nil when unreadable.
        package var cgroup: () -> String?

        package init(pid: pid_t, uid: uid_t, gid: gid_t, cgroup: @escaping () -> String?) {
            self.pid = pid
            self.uid = uid
            self.gid = gid
            self.cgroup = cgroup
        }
    }

    /// The answer to a claim.
    package enum Claim {
        /// Send this descriptor as share `id`; it awaits the connection's acknowledgement.
        case handOut(id: UInt64, Held)
        /// Refuse.
        case refuse(EscrowRefusal)
    }

    /// What an acknowledgement did.
    package enum Acknowledgement {
        /// A single-use share is claimed and ended: close its held value.
        case ended(Ended)
        /// A kept share was received once more; it stays held.
        case counted(NamedShareRecord)
        /// The share was not handed to that connection.
        case unknown
    }

    /// The most named shares held at once.
    package let maximumShares: Int
    package private(set) var entries: [UInt64: Entry] = [:]
    private var byName: [Key: UInt64] = [:]
    private var perUser: [uid_t: Int] = [:]
    private var deadlines = DeadlineQueue()
    private var ids: ShareIDs

    /// An empty table drawing share ids from `ids` (unguessable ones by default).
    package init(maximumShares: Int, ids: ShareIDs = .random) {
        self.maximumShares = maximumShares
        self.ids = ids
    }

    /// A name in its depositor's scope.
    package struct Key: Hashable, Sendable {
        package var depositorUID: uid_t
        package var name: String

        package init(_ depositorUID: uid_t, _ name: String) {
            self.depositorUID = depositorUID
            self.name = name
        }
    }

    /// The named shares held now.
    package var count: Int { entries.count }
    /// The earliest deadline of a held share (possibly of one since ended: `expire(at:)` checks).
    package var nextDeadline: ContinuousClock.Instant? { deadlines.earliest }
    /// Whether some share was handed out and is not yet acknowledged.
    package var hasHandedOut: Bool { entries.values.contains { !$0.offeredTo.isEmpty } }

    /// The named shares `uid` deposited that are held now.
    package func count(depositedBy uid: uid_t) -> Int { perUser[uid, default: 0] }

    /// The id of the share `depositorUID` holds as `name`, if there is one.
    package func id(named name: String, from depositorUID: uid_t) -> UInt64? { byName[Key(depositorUID, name)] }

    /// Holds a new named share; its id is assigned here (any id in `record` is replaced).
    ///
    /// - Returns: The record as held, or the refusal (`nameTaken`, `limitReached`); the caller
    ///   still owns `held` on refusal.
    package mutating func insert(
        _ record: NamedShareRecord, description: SocketDescription, held: Held, deadline: ContinuousClock.Instant?
    ) -> Result<NamedShareRecord, EscrowRefusal> {
        if let existing = byName[Key(record.depositorUID, record.name)] {
            return .failure(EscrowRefusal(
                .nameTaken, "you already hold a share named \(record.name) (id \(existing)); revoke it first, or choose another name"))
        }
        guard entries.count < maximumShares else {
            return .failure(EscrowRefusal(.limitReached, "\(entries.count) named shares are held; the limit is \(maximumShares)"))
        }
        var record = record
        repeat { record.id = ids.draw() } while entries[record.id] != nil
        install(record, description: description, held: held, deadline: deadline)
        return .success(record)
    }

    /// Holds a share a predecessor handed over, under its own id; later ids follow the highest.
    /// A name already held here (impossible from one predecessor) is refused: the caller closes it.
    @discardableResult
    package mutating func install(
        _ record: NamedShareRecord, description: SocketDescription, held: Held, deadline: ContinuousClock.Instant?
    ) -> Bool {
        let key = Key(record.depositorUID, record.name)
        guard byName[key] == nil, entries[record.id] == nil else { return false }
        entries[record.id] = Entry(record: record, description: description, held: held, deadline: deadline)
        byName[key] = record.id
        perUser[record.depositorUID, default: 0] += 1
        if let deadline { deadlines.insert(deadline, id: record.id) }
        ids.skip(past: record.id)
        return true
    }

    /// The depositors a claim looks at, in order: `from` when the claimant named one, else its own
    /// uid, then root, then `brokerUID` (the broker's own user).
    package static func depositors(from: uid_t?, claimant: uid_t, brokerUID: uid_t) -> [uid_t] {
        if let from { return [from] }
        var order: [uid_t] = []
        for uid in [claimant, 0, brokerUID] where !order.contains(uid) { order.append(uid) }
        return order
    }

    /// Decides a claim of `name` from the first of `depositors` that holds one its policy admits,
    /// by `claimant` on connection `connection`.
    ///
    /// The checks run in this order: a share of that name whose policy admits the claimant (else
    /// `notFound`, whether no such share exists or its policy refuses: the refusals say why, for
    /// the broker's log, not for the claimant), a single-use share already handed out
    /// (`claimInProgress`), expiry (`expired`).
    package mutating func claim(
        _ name: String, from depositors: [uid_t], by claimant: Claimant, connection: UInt64, now: ContinuousClock.Instant
    ) -> Claim {
        var refusals: [String] = []
        for depositor in depositors {
            guard let id = byName[Key(depositor, name)], let entry = entries[id] else { continue }
            if let refusal = Self.refusal(of: claimant, by: entry.record) {
                refusals.append(refusal.text)
                continue
            }
            guard entry.record.keep || entry.offeredTo.isEmpty else {
                return .refuse(EscrowRefusal(
                    .claimInProgress, "share \(name) was handed to another claimant and awaits its acknowledgement"))
            }
            if let deadline = entry.deadline, deadline <= now {
                return .refuse(EscrowRefusal(.expired, "share \(name) expired"))
            }
            entries[id]?.offeredTo.insert(connection)
            return .handOut(id: id, entry.held)
        }
        return .refuse(Self.notFound(name, from: depositors, policyRefusals: refusals))
    }

    /// The one answer to a claim of a share that does not exist or does not admit the claimant.
    /// `policyRefusals` (why policies refused) go to the broker's log only: ``Claim``'s text never
    /// says whether a share exists.
    package static func notFound(_ name: String, from depositors: [uid_t], policyRefusals: [String] = []) -> EscrowRefusal {
        var refusal = EscrowRefusal(
            .notFound,
            "no share named \(name) from uid \(depositors.map(String.init).joined(separator: ", uid ")) is held here for this "
                + "process (or its policy does not admit it; the broker's log says which)")
        refusal.logDetail = policyRefusals.isEmpty ? nil : policyRefusals.joined(separator: "; ")
        return refusal
    }

    /// Why `claimant` may not claim the share `record` describes, or nil when it may.
    package static func refusal(of claimant: Claimant, by record: NamedShareRecord) -> EscrowRefusal? {
        let policy = record.policy.isEmpty ? ClaimPolicy(uid: record.depositorUID) : record.policy
        guard let why = policy.refusal(uid: claimant.uid, gid: claimant.gid, cgroup: claimant.cgroup) else { return nil }
        return EscrowRefusal(.policyRefused, "share \(record.name) of uid \(record.depositorUID): \(why)")
    }

    /// The claimant on `connection` (the process `claimant`) holds share `id`.
    package mutating func acknowledge(_ id: UInt64, connection: UInt64, claimant: ProcessIdentity) -> Acknowledgement {
        guard var entry = entries[id], entry.offeredTo.contains(connection) else { return .unknown }
        entry.offeredTo.remove(connection)
        entry.record.claims += 1
        entries[id] = entry
        if entry.record.keep { return .counted(entry.record) }
        return end(id, .claimed(by: claimant)).map { .ended($0) } ?? .unknown
    }

    /// The claimant on `connection` went away without acknowledging: every share handed to it is
    /// claimable again. Returns the names released.
    package mutating func release(connection: UInt64) -> [String] {
        var released: [String] = []
        for (id, entry) in entries where entry.offeredTo.contains(connection) {
            entries[id]?.offeredTo.remove(connection)
            released.append(entry.record.name)
        }
        return released.sorted()
    }

    /// Ends share `id` with `outcome`; nil when it is not held.
    package mutating func end(_ id: UInt64, _ outcome: ShareOutcome) -> Ended? {
        guard let entry = entries.removeValue(forKey: id) else { return nil }
        byName.removeValue(forKey: Key(entry.record.depositorUID, entry.record.name))
        perUser[entry.record.depositorUID, default: 1] -= 1
        if perUser[entry.record.depositorUID] == 0 { perUser.removeValue(forKey: entry.record.depositorUID) }
        return Ended(record: entry.record, held: entry.held, outcome: outcome)
    }

    /// Ends the shares whose deadline passed by `now`. One handed out and not yet acknowledged is
    /// left to its claimant until its acknowledgement or release, and looked at again later.
    package mutating func expire(at now: ContinuousClock.Instant, acknowledgeTimeout: Duration) -> [Ended] {
        var ended: [Ended] = []
        for id in deadlines.popDue(now) {
            guard let entry = entries[id], let deadline = entry.deadline, deadline <= now else { continue }
            if entry.offeredTo.isEmpty || entry.record.keep {
                if let done = end(id, .expired) { ended.append(done) }
            } else {
                deadlines.insert(now + acknowledgeTimeout, id: id)
            }
        }
        return ended
    }

    /// Ends the share `depositor` holds as `name` (the requester's own when nil), at the request of
    /// `uid`: its depositor, or root.
    package mutating func revoke(named name: String, from depositor: uid_t?, by uid: uid_t) -> Result<Ended, EscrowRefusal> {
        let owner = depositor ?? uid
        guard let id = byName[Key(owner, name)], uid == owner || uid == 0 else {
            return .failure(EscrowRefusal(.notFound, "no share named \(name) of uid \(owner) that you may revoke is held here"))
        }
        return .success(end(id, .revoked)!)
    }

    /// Ends share `id` at the request of `uid`: its depositor or root only. A share that is not the
    /// requester's is refused as one that does not exist: ids say nothing of other users' shares.
    package mutating func revoke(_ id: UInt64, by uid: uid_t) -> Result<Ended, EscrowRefusal> {
        guard let entry = entries[id], uid == entry.record.depositorUID || uid == 0 else {
            return .failure(EscrowRefusal(.notFound, "no share \(id) of yours is held here"))
        }
        return .success(end(id, .revoked)!)
    }

    /// Ends every share with `outcome`.
    package mutating func endAll(_ outcome: ShareOutcome) -> [Ended] {
        entries.keys.sorted().compactMap { end($0, outcome) }
    }

    /// The named shares `uid` may see (its own; all for root) with ids above `after`, one page.
    package func listing(for uid: uid_t, after: UInt64, pageSize: Int, nowMilliseconds: UInt64) -> (more: Bool, shares: [NamedShare]) {
        let visible = entries.values
            .filter { ($0.record.depositorUID == uid || uid == 0) && $0.record.id > after }
            .sorted { $0.record.id < $1.record.id }
        let page = visible.prefix(pageSize).map { NamedShare($0.record, description: $0.description, nowMilliseconds: nowMilliseconds) }
        return (visible.count > page.count, page)
    }
}
