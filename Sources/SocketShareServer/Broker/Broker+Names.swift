import Glibc
import Logging
import SocketShare
import SocketShareCore

/// Named shares: a socket deposited under a name, claimed by whoever its `ClaimPolicy` admits by
/// the kernel's word (`SO_PEERCRED` uid and gid, the peer's cgroup), rather than by one target
/// pid. The way to share with a process whose pid the source cannot see: another pid namespace,
/// another container, a process that starts later. Every call here runs on the holder's reactor
/// thread, which alone closes a named share's held duplicate.
extension Broker {
    /// Answers the named-share requests; nil for any other request.
    func respondNamed(
        to request: EscrowMessage, descriptor: SocketDescriptor?, from connection: EscrowHolder.Connection
    ) -> EscrowHolder.Answer? {
        switch request {
        case .depositNamed(let name, let policy, let ttl, let keep):
            guard let descriptor else { return .replyAndClose(.failure(.malformed, "a deposit carries one descriptor")) }
            return depositNamed(descriptor, name: name, policy: policy, timeToLiveMilliseconds: ttl, keep: keep, from: connection)
        case .claimNamed(let name, let wait, let from):
            let depositors = NamedShareTable<SocketDescriptor>.depositors(from: from, claimant: connection.peer.uid, brokerUID: geteuid())
            return claimNamed(name, from: depositors, waitMilliseconds: wait, by: connection)
        case .revokeNamed(let name, let from):
            let result = named.withLock { $0.revoke(named: name, from: from, by: connection.peer.uid) }
            switch result {
            case .success(let ended):
                finish([ended])
                logger.info("revoked named share", metadata: ["name": "\(name)", "share": "\(ended.record.id)", "by": "\(connection.peer.pid)"])
                return .reply(.revoked(shareID: ended.record.id))
            case .failure(let refusal):
                return .reply(refusal.message)
            }
        case .listNamed(let after):
            let page = named.withLock {
                $0.listing(for: connection.peer.uid, after: after, pageSize: EscrowMessage.namedListingPageSize,
                           nowMilliseconds: ShareTime.nowMilliseconds)
            }
            return .reply(.namedListing(more: page.more, shares: page.shares))
        default:
            return nil
        }
    }

    private func depositNamed(
        _ received: SocketDescriptor, name: String, policy: ClaimPolicy, timeToLiveMilliseconds ttl: UInt32, keep: Bool,
        from connection: EscrowHolder.Connection
    ) -> EscrowHolder.Answer {
        guard ttl > 0 || keep else {
            return .reply(.failure(.malformed, "field ttlMilliseconds: 0 (until revoked) is for kept shares only"))
        }
        let timeToLive = Duration.milliseconds(Int64(ttl))
        guard ttl == 0 || timeToLive <= configuration.maximumTimeToLive else {
            return .reply(.failure(
                .limitReached, "a time to live of \(Double(ttl) / 1000) s exceeds this broker's maximum of "
                    + "\(configuration.maximumTimeToLive.components.seconds) s"))
        }
        if let refusal = quotaRefusal(for: connection.peer.uid) { return .reply(refusal.message) }
        let description: SocketDescription
        let duplicate: SocketDescriptor
        do throws(SocketShareError) {
            description = try SocketDescription(of: received.rawValue)
            duplicate = try received.duplicate()
        } catch {
            return .reply(.failure(.malformed, "the descriptor cannot be shared: \(error.detail)"))
        }
        let now = ShareTime.nowMilliseconds
        let depositor = (try? connection.peer.identity()) ?? ProcessIdentity(pid: connection.peer.pid, startTime: 0)
        let draft = NamedShareRecord(
            id: 0, name: name, policy: policy, keep: keep, depositor: depositor, depositorUID: connection.peer.uid,
            createdAtMilliseconds: now, expiresAtMilliseconds: ttl == 0 ? 0 : now + UInt64(ttl))
        let deadline = ttl == 0 ? nil : ContinuousClock.now + timeToLive
        let result = named.withLock { table in
            table.insert(draft, description: description, held: duplicate, deadline: deadline).map { ($0, table.count) }
        }
        switch result {
        case .success(let (record, heldNow)):
            holder.metrics.namedDeposited(heldNow: heldNow)
            logger.info("named share deposited", metadata: [
                "name": "\(name)", "share": "\(record.id)", "policy": "\(policy)", "keep": "\(keep)",
                "socket": "\(description)", "depositor": "\(connection.peer.pid)", "uid": "\(connection.peer.uid)",
            ])
            armNamedTimer()
            retryParkedClaims(for: name)
            return .reply(.depositedNamed(shareID: record.id))
        case .failure(let refusal):
            try? duplicate.close()
            return .reply(refusal.message)
        }
    }

    /// A claim the broker holds until its name can be handed out (`claimNamed` with a wait).
    struct ParkedClaim {
        let name: String
        /// The depositors whose shares of that name it may have, in order.
        let depositors: [uid_t]
        let connection: EscrowHolder.Connection
        var timer: Reactor.Timer?
    }

    /// What one attempt at a named claim came to.
    enum NamedClaimAttempt {
        /// The descriptor was sent; the share awaits the connection's acknowledgement.
        case handedOut
        /// Refused, for this reason.
        case refused(EscrowRefusal)
        /// The descriptor could not be sent: the connection is broken.
        case sendFailed
    }

    private func claimNamed(
        _ name: String, from depositors: [uid_t], waitMilliseconds wait: UInt32, by connection: EscrowHolder.Connection
    ) -> EscrowHolder.Answer {
        if connection.offered != nil || namedOffers[connection.id] != nil || parkedClaims[connection.id] != nil {
            return .replyAndClose(.failure(.malformed, "a claim is already waiting on this connection"))
        }
        switch attemptNamedClaim(name, from: depositors, by: connection) {
        case .handedOut:
            return .silent
        case .refused(let refusal) where wait > 0 && Self.mayBeHandedOutLater(refusal):
            // A wait is held at most the broker's maximum; the client asks again for the rest.
            let waiting = min(Duration.milliseconds(Int64(wait)), configuration.maximumClaimWait)
            park(ParkedClaim(name: name, depositors: depositors, connection: connection), waitingUpTo: waiting)
            return .silent
        case .refused(let refusal):
            return .reply(refusal.message)
        case .sendFailed:
            return .replyAndClose(.failure(.internalError, "the descriptor could not be sent"))
        }
    }

    /// Whether a refused claim may succeed later without anything the claimant does: the name is
    /// not held yet, or a single-use share is in another claimant's hands, who may leave without it.
    private static func mayBeHandedOutLater(_ refusal: EscrowRefusal) -> Bool {
        refusal.failure == .notFound || refusal.failure == .claimInProgress
    }

    /// Decides a claim of `name` from `depositors` by `connection` and, when it may have the share, sends it.
    private func attemptNamedClaim(_ name: String, from depositors: [uid_t], by connection: EscrowHolder.Connection) -> NamedClaimAttempt {
        let peer = connection.peer
        let claimant = NamedShareTable<SocketDescriptor>.Claimant(pid: peer.pid, uid: peer.uid, gid: peer.gid) { peer.cgroup() }
        let decision = named.withLock { $0.claim(name, from: depositors, by: claimant, connection: connection.id, now: .now) }
        switch decision {
        case .refuse(let refusal):
            // A name not held yet is routine (the claimant started first): not news. A policy that
            // refused is: the claimant is told only "not found", the log says why.
            let level: Logger.Level = refusal.logDetail != nil ? .notice : refusal.failure == .notFound || refusal.failure == .claimInProgress ? .debug : .info
            logger.log(level: level, "named claim refused", metadata: [
                "name": "\(name)", "reason": "\(refusal.logDetail != nil ? "policyRefused" : "\(refusal.failure)")",
                "pid": "\(peer.pid)", "uid": "\(peer.uid)", "gid": "\(peer.gid)", "why": "\(refusal.logDetail ?? refusal.text)",
            ])
            if refusal.logDetail != nil { holder.metrics.refused(.policyRefused) }
            return .refused(refusal)
        case .handOut(let id, let descriptor):
            guard holder.reply(connection, .claimed(shareID: id), descriptors: [descriptor.rawValue]) else {
                _ = named.withLock { $0.release(connection: connection.id) }
                return .sendFailed
            }
            namedOffers[connection.id] = id
            connection.deadline = .now + holder.configuration.limits.acknowledgeTimeout
            return .handedOut
        }
    }

    /// Holds a claim until a deposit or a release lets it through (``retryParkedClaims(for:)``), or
    /// until `wait` ends: then it gets the answer a claim would get then.
    private func park(_ claim: ParkedClaim, waitingUpTo wait: Duration) {
        let connection = claim.connection
        let id = connection.id
        // The idle timeout must not drop a connection the broker itself keeps waiting.
        connection.deadline = .now + wait + .seconds(1)
        let timer = holder.reactor.schedule(at: .now + wait) { [self] in
            guard let parked = parkedClaims.removeValue(forKey: id) else { return }
            answer(parked, finally: true)
        }
        var parked = claim
        parked.timer = timer
        parkedClaims[id] = parked
    }

    /// Tries the parked claims of `name` again, in the order they came: after a deposit of the name,
    /// or after a claimant left without the share.
    func retryParkedClaims(for name: String) {
        for id in parkedClaims.keys.sorted() {
            guard let parked = parkedClaims[id], parked.name == name else { continue }
            answer(parked, finally: false)
        }
    }

    /// Tries a parked claim: handed out or refused for good, it is answered and no longer parked;
    /// refused for now, it stays parked unless this is its last try (its wait ended).
    private func answer(_ parked: ParkedClaim, finally last: Bool) {
        let id = parked.connection.id
        let outcome = attemptNamedClaim(parked.name, from: parked.depositors, by: parked.connection)
        if case .refused(let refusal) = outcome, !last, Self.mayBeHandedOutLater(refusal) { return }
        if let timer = parkedClaims.removeValue(forKey: id)?.timer { holder.reactor.cancel(timer) }
        switch outcome {
        case .handedOut:
            break
        case .refused(let refusal):
            parked.connection.deadline = .now + holder.configuration.requestTimeout
            if !holder.reply(parked.connection, refusal.message) { holder.close(parked.connection, releasing: true) }
        case .sendFailed:
            holder.close(parked.connection, releasing: true)
        }
    }

    /// A parked claim's connection closed.
    func forgetParkedClaim(of connection: EscrowHolder.Connection) {
        if let timer = parkedClaims.removeValue(forKey: connection.id)?.timer { holder.reactor.cancel(timer) }
    }

    /// `connection` acknowledged share `id`: true when it was a named share handed to it.
    func acknowledgeNamed(_ id: UInt64, from connection: EscrowHolder.Connection) -> Bool {
        guard namedOffers[connection.id] == id else { return false }
        namedOffers.removeValue(forKey: connection.id)
        let claimant = (try? connection.peer.identity()) ?? ProcessIdentity(pid: connection.peer.pid, startTime: 0)
        let result = named.withLock { $0.acknowledge(id, connection: connection.id, claimant: claimant) }
        let record: NamedShareRecord
        switch result {
        case .ended(let ended):
            record = ended.record
            finish([ended])
        case .counted(let counted):
            record = counted
        case .unknown:
            return false
        }
        holder.metrics.namedClaimed()
        logger.info("named share claimed", metadata: [
            "name": "\(record.name)", "share": "\(id)", "pid": "\(connection.peer.pid)", "uid": "\(connection.peer.uid)",
            "claims": "\(record.claims)", "kept": "\(record.keep)",
        ])
        return true
    }

    /// A connection closed: what was handed to it and not acknowledged is claimable again.
    func releaseNamed(for connection: EscrowHolder.Connection) {
        guard namedOffers.removeValue(forKey: connection.id) != nil else { return }
        for name in named.withLock({ $0.release(connection: connection.id) }) {
            logger.info("claimant left before acknowledging; the named share is claimable again", metadata: ["name": "\(name)"])
            retryParkedClaims(for: name)
        }
    }

    /// The quotas (`Capacity`) count pid-targeted and named shares together: the refusal when
    /// `uid` may not deposit one more, else nil.
    func quotaRefusal(for uid: uid_t) -> EscrowRefusal? {
        let (namedHeld, namedTotal) = named.withLock { ($0.count(depositedBy: uid), $0.count) }
        let (heldHeld, heldTotal) = holder.withTable { ($0.count(depositedBy: uid), $0.count) }
        guard let why = capacity.depositRefusal(uid: uid, held: namedHeld + heldHeld, total: namedTotal + heldTotal) else { return nil }
        return EscrowRefusal(.limitReached, why)
    }

    /// Closes the held duplicates of named shares that ended, and counts them.
    func finish(_ ended: [NamedShareTable<SocketDescriptor>.Ended]) {
        guard !ended.isEmpty else { return }
        for share in ended { try? share.held.close() }
        holder.metrics.namedEnded(ended.map(\.outcome), heldNow: named.withLock { $0.count })
        for share in ended where share.outcome == .expired {
            logger.info("named share expired", metadata: ["name": "\(share.record.name)", "share": "\(share.record.id)"])
        }
    }

    /// Sets the expiry timer for the earliest named deadline.
    func armNamedTimer() {
        if let namedTimer { holder.reactor.cancel(namedTimer) }
        namedTimer = named.withLock { $0.nextDeadline }.map { deadline in
            holder.reactor.schedule(at: deadline) { [self] in
                namedTimer = nil
                let timeout = holder.configuration.limits.acknowledgeTimeout
                finish(named.withLock { $0.expire(at: .now, acknowledgeTimeout: timeout) })
                armNamedTimer()
            }
        }
    }

    /// Closes every named share (the broker stopped, or handed them to a successor, which holds its own).
    func endAllNamed() -> Int {
        let ended = named.withLock { $0.endAll(.holderStopped) }
        for share in ended { try? share.held.close() }
        return ended.count
    }
}
