import Glibc

/// The dispatcher's decisions, apart from its I/O: which worker takes the next connection, how many
/// each may have in flight, what happens to a connection a worker refuses or leaves behind, and
/// when everything sent has been acknowledged.
///
/// A pure value: `Connection` is whatever the dispatcher keeps per accepted connection (its
/// socket); the pool never closes one, it hands back those that are done. Unit-tested with numbers.
package struct WorkerPool<Connection> {
    /// A worker, as the decisions see it.
    package struct Member {
        package let pid: pid_t
        package let generation: Int
        /// Connections sent and not yet acknowledged, by id.
        package var unacknowledged: [UInt64: Connection] = [:]
        /// When each connection was sent, oldest first (ids acknowledged since are skipped when
        /// they come up): the stall check needs only the oldest.
        private var sent: [(id: UInt64, at: ContinuousClock.Instant)] = []
        private var sentHead = 0
        /// The connections the worker says it is serving (after acknowledging them).
        package var reportedActive = 0
        package var handled = 0
        package var isReady = false
        package var isRetired = false
        package var isStalled = false
        /// Whether connections go to it (a reload's new generation waits to be promoted).
        package var isAccepting: Bool
        /// Whether it has acknowledged a connection (workers serve started are trusted from the
        /// start; external ones prove themselves first).
        package var isProven: Bool
        /// Unproven workers of one probation group (an external worker's uid) are sent one
        /// connection at a time between them, until each acknowledges one.
        package let probationGroup: UInt32?

        init(pid: pid_t, generation: Int, accepting: Bool, probationGroup: UInt32?) {
            self.pid = pid
            self.generation = generation
            self.isAccepting = accepting
            self.isProven = probationGroup == nil
            self.probationGroup = probationGroup
        }

        /// What the worker has: unacknowledged, and acknowledged but still being served.
        package var inFlight: Int { unacknowledged.count + reportedActive }
        /// Whether it may be sent connections at all.
        package var isEligible: Bool { isAccepting && !isRetired && !isStalled }

        mutating func recordSent(_ id: UInt64, at instant: ContinuousClock.Instant) {
            sent.append((id, instant))
        }

        /// When the oldest unacknowledged connection was sent, without tidying the record.
        func peekOldestSent() -> ContinuousClock.Instant? {
            var head = sentHead
            while head < sent.count, unacknowledged[sent[head].id] == nil { head += 1 }
            return head < sent.count ? sent[head].at : nil
        }

        /// When the oldest unacknowledged connection was sent.
        package mutating func oldestSent() -> ContinuousClock.Instant? {
            while sentHead < sent.count, unacknowledged[sent[sentHead].id] == nil { sentHead += 1 }
            if sentHead > 64 && sentHead * 2 > sent.count {
                sent.removeFirst(sentHead)
                sentHead = 0
            }
            return sentHead < sent.count ? sent[sentHead].at : nil
        }
    }

    /// Connections for one worker, in order.
    package typealias Batch = [(id: UInt64, connection: Connection)]

    /// The generation of external workers (`serve --worker-socket`): processes serve did not start,
    /// which connect by themselves. Reloads do not touch them (they belong to no generation serve
    /// starts), and they take connections once they say they are ready.
    package static var externalGeneration: Int { 0 }

    package let policy: Supervisor.Policy
    /// The most connections in flight to one worker.
    package let limit: Int
    /// A worker that has left a connection unacknowledged this long gets no new ones until it
    /// acknowledges (it still has until the stall timeout for what it has); nil: no such rule.
    package let suspectAfter: Duration?
    package private(set) var members: [Member] = []
    /// Accepted connections no worker has yet, oldest first.
    package private(set) var waiting: Batch = []
    /// The waiting connections a worker left unacknowledged (it died, stalled or refused them):
    /// they go to proven workers only, so that a client waits for at most one stalled worker.
    private var orphans: Set<UInt64> = []
    /// Probation groups whose last probe failed (the worker stalled, or refused what it was sent):
    /// no new probe before `until`; each failure in a row doubles the wait, up to 16 times.
    private var cooldowns: [UInt32: (until: ContinuousClock.Instant, length: Duration)] = [:]
    package private(set) var accepted = 0
    package private(set) var redispatched = 0
    private var nextID: UInt64 = 1
    private var nextWorker = 0

    package init(policy: Supervisor.Policy, limit: Int, suspectAfter: Duration? = nil) {
        self.policy = policy
        self.limit = limit
        self.suspectAfter = suspectAfter
    }

    /// Whether `member` may be sent a connection now: eligible, not suspect, and with room (an
    /// unproven worker for one connection at a time: it is on probation until it acknowledges).
    private func mayTake(_ member: Member, extra: Int, at now: ContinuousClock.Instant) -> Bool {
        guard member.isEligible, member.inFlight + extra < (member.isProven ? limit : 1) else { return false }
        if let suspectAfter, let oldest = member.peekOldestSent(), now - oldest >= suspectAfter { return false }
        return true
    }

    private func position(of pid: pid_t) -> Int? { members.firstIndex { $0.pid == pid } }

    /// The worker `pid`.
    package func member(_ pid: pid_t) -> Member? { position(of: pid).map { members[$0] } }

    // MARK: Workers

    /// Adds a worker. One with a `probationGroup` (an external worker, grouped by its uid) is on
    /// probation until it acknowledges a connection: it is sent one at a time, and only while no
    /// other unproven worker of its group has one — so one uid's workers that never acknowledge
    /// hold at most one client at a time, for at most one stall timeout.
    package mutating func add(pid: pid_t, generation: Int, accepting: Bool, probationGroup: UInt32? = nil) {
        members.append(Member(pid: pid, generation: generation, accepting: accepting, probationGroup: probationGroup))
    }

    /// Forgets a worker that exited or closed its channel; what it had not acknowledged goes back
    /// to the front of the queue, for others. Returns how many, or nil for an unknown worker.
    @discardableResult
    package mutating func remove(_ pid: pid_t) -> Int? {
        guard let index = position(of: pid) else { return nil }
        let gone = members.remove(at: index)
        if nextWorker > index { nextWorker -= 1 }
        let left = gone.unacknowledged.sorted { $0.key < $1.key }.map { (id: $0.key, connection: $0.value) }
        waiting.insert(contentsOf: left, at: 0)
        orphans.formUnion(left.map(\.id))
        redispatched += left.count
        return left.count
    }

    /// Makes `generation`'s workers take connections; every other worker is retired. Returns the
    /// workers retired now (to be told to finish and exit).
    package mutating func promote(generation: Int) -> [pid_t] {
        var retired: [pid_t] = []
        for index in members.indices where members[index].generation != Self.externalGeneration {
            if members[index].generation == generation {
                members[index].isAccepting = true
            } else if !members[index].isRetired {
                members[index].isRetired = true
                retired.append(members[index].pid)
            }
        }
        return retired
    }

    /// Sends `pid` no more connections. Returns false when it was retired already (or unknown).
    package mutating func retire(_ pid: pid_t) -> Bool {
        guard let index = position(of: pid), !members[index].isRetired else { return false }
        members[index].isRetired = true
        return true
    }

    /// `pid` left a connection unacknowledged too long: it takes no more.
    package mutating func stall(_ pid: pid_t) {
        guard let index = position(of: pid) else { return }
        members[index].isStalled = true
    }

    /// `pid`, on probation, failed it (it stalled, or refused the connection it was sent): its
    /// group gets no new probe for `base` — twice as long after each failure in a row, at most 16
    /// times. Returns false when `pid` was not on probation.
    @discardableResult
    package mutating func failProbation(_ pid: pid_t, at now: ContinuousClock.Instant, base: Duration) -> Bool {
        guard let member = member(pid), !member.isProven, let group = member.probationGroup else { return false }
        let length = cooldowns[group].map { min($0.length * 2, base * 16) } ?? base
        cooldowns[group] = (now + length, length)
        return true
    }

    /// Whether `pid` is on probation: an external worker that has acknowledged nothing yet.
    package func isOnProbation(_ pid: pid_t) -> Bool {
        member(pid).map { !$0.isProven } ?? false
    }

    /// `pid` says it is ready; an external worker takes connections from now on.
    package mutating func ready(_ pid: pid_t) {
        guard let index = position(of: pid) else { return }
        members[index].isReady = true
        if members[index].generation == Self.externalGeneration { members[index].isAccepting = true }
    }

    /// When `pid`'s oldest unacknowledged connection was sent.
    package mutating func oldestSent(_ pid: pid_t) -> ContinuousClock.Instant? {
        guard let index = position(of: pid) else { return nil }
        return members[index].oldestSent()
    }

    // MARK: Connections

    /// How many more connections the workers may take now, less those already waiting.
    package func room(at now: ContinuousClock.Instant = .now) -> Int {
        members.reduce(0) { total, member in
            total + (mayTake(member, extra: 0, at: now) ? (member.isProven ? limit : 1) - member.inFlight : 0)
        } - waiting.count
    }

    /// Whether some worker may take a connection (the listeners are worth reading).
    package func hasRoom(at now: ContinuousClock.Instant = .now) -> Bool {
        members.contains { mayTake($0, extra: 0, at: now) }
    }

    /// Whether nothing waits and every connection sent was acknowledged.
    package var isSettled: Bool { waiting.isEmpty && members.allSatisfy { $0.unacknowledged.isEmpty } }

    /// Queues an accepted connection; returns its id.
    @discardableResult
    package mutating func enqueue(_ connection: Connection) -> UInt64 {
        let id = nextID
        nextID += 1
        accepted += 1
        waiting.append((id, connection))
        return id
    }

    /// Takes the waiting connections that workers have room for, grouped per worker, by the policy
    /// (an orphan goes to a proven worker only). They are the caller's to send: ``sent(_:to:at:)``
    /// once they are, ``unsent(_:)`` if not.
    package mutating func assign(at now: ContinuousClock.Instant = .now) -> [(pid: pid_t, batch: Batch)] {
        guard !waiting.isEmpty else { return [] }
        var extra = [Int](repeating: 0, count: members.count)
        var probing = Set(members.filter { !$0.isProven && $0.inFlight > 0 }.compactMap(\.probationGroup))
        var batches: [Int: Batch] = [:]
        var order: [Int] = []
        var left: Batch = []
        for item in waiting {
            guard let index = choose(extra: extra, at: now, provenOnly: orphans.contains(item.id), probing: probing) else {
                left.append(item)
                continue
            }
            orphans.remove(item.id)
            if let group = members[index].probationGroup, !members[index].isProven { probing.insert(group) }
            if batches[index] == nil { order.append(index) }
            batches[index, default: []].append(item)
            extra[index] += 1
        }
        waiting = left
        return order.map { (members[$0].pid, batches[$0]!) }
    }

    /// The worker for the next connection, counting those already assigned in this round: an
    /// unproven one only when `provenOnly` is not set and no other of its group is being probed.
    private mutating func choose(extra: [Int], at now: ContinuousClock.Instant, provenOnly: Bool, probing: Set<UInt32>) -> Int? {
        func candidate(_ index: Int) -> Bool {
            let member = members[index]
            if !member.isProven, let group = member.probationGroup {
                if provenOnly || probing.contains(group) { return false }
                if let cooldown = cooldowns[group], now < cooldown.until { return false }
            }
            return mayTake(member, extra: extra[index], at: now)
        }
        switch policy {
        case .leastLoaded:
            var best: Int? = nil
            var bestLoad = Int.max
            for index in members.indices where candidate(index) {
                let load = members[index].inFlight + extra[index]
                if load < bestLoad {
                    best = index
                    bestLoad = load
                }
            }
            return best
        case .roundRobin:
            for offset in 0..<members.count {
                let index = (nextWorker + offset) % members.count
                if candidate(index) {
                    nextWorker = (index + 1) % members.count
                    return index
                }
            }
            return nil
        }
    }

    /// `batch` went to `pid` at `instant`: it awaits the worker's acknowledgement.
    package mutating func sent(_ batch: some Collection<(id: UInt64, connection: Connection)>, to pid: pid_t, at instant: ContinuousClock.Instant) {
        guard let index = position(of: pid) else { return unsent(Array(batch)) }
        for item in batch {
            members[index].unacknowledged[item.id] = item.connection
            members[index].recordSent(item.id, at: instant)
        }
    }

    /// `batch` could not be sent (the worker's queue is full, or it is gone): it waits again.
    package mutating func unsent(_ batch: some Collection<(id: UInt64, connection: Connection)>) {
        waiting.append(contentsOf: batch)
    }

    /// `pid` holds `ids` and serves `active` connections. Returns the connections done with here.
    package mutating func acknowledge(_ ids: [UInt64], by pid: pid_t, active: Int) -> [Connection] {
        guard let index = position(of: pid) else { return [] }
        var done: [Connection] = []
        for id in ids {
            if let connection = members[index].unacknowledged.removeValue(forKey: id) {
                done.append(connection)
                members[index].handled += 1
                if !members[index].isProven, let group = members[index].probationGroup { cooldowns[group] = nil }
                members[index].isProven = true
            }
        }
        members[index].reportedActive = active
        return done
    }

    /// `pid` refused `ids`: they go back to the front of the queue. Returns how many.
    package mutating func refuse(_ ids: [UInt64], by pid: pid_t) -> Int {
        guard let index = position(of: pid) else { return 0 }
        let refused = ids.compactMap { id in members[index].unacknowledged.removeValue(forKey: id).map { (id: id, connection: $0) } }
        waiting.insert(contentsOf: refused, at: 0)
        orphans.formUnion(refused.map(\.id))
        redispatched += refused.count
        return refused.count
    }

    /// `pid` serves `active` connections.
    package mutating func report(_ active: Int, by pid: pid_t) {
        guard let index = position(of: pid) else { return }
        members[index].reportedActive = active
    }
}
