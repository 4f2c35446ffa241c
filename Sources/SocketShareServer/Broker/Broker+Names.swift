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
        case .claimNamed(let name):
            return claimNamed(name, by: connection)
        case .revokeNamed(let name):
            let result = named.withLock { $0.revoke(named: name, by: connection.peer.uid) }
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
        if let limit = configuration.maximumSharesPerUser {
            let mine = named.withLock { $0.entries.values.filter { $0.record.depositorUID == connection.peer.uid }.count }
                + holder.withTable { $0.entries.values.filter { $0.record.depositorUID == connection.peer.uid }.count }
            guard mine < limit else {
                return .reply(.failure(.limitReached, "uid \(connection.peer.uid) holds \(limit) shares, its limit; revoke some first"))
            }
        }
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
            return .reply(.depositedNamed(shareID: record.id))
        case .failure(let refusal):
            try? duplicate.close()
            return .reply(refusal.message)
        }
    }

    private func claimNamed(_ name: String, by connection: EscrowHolder.Connection) -> EscrowHolder.Answer {
        if connection.offered != nil || namedOffers[connection.id] != nil {
            return .replyAndClose(.failure(.malformed, "a claim is already waiting for its acknowledgement on this connection"))
        }
        let peer = connection.peer
        let claimant = NamedShareTable<SocketDescriptor>.Claimant(pid: peer.pid, uid: peer.uid, gid: peer.gid) { peer.cgroup() }
        let decision = named.withLock { $0.claim(name, by: claimant, connection: connection.id, now: .now) }
        switch decision {
        case .refuse(let refusal):
            // A waiting claimant asks again and again for a name not there yet: that is not news.
            let level: Logger.Level = switch refusal.failure {
            case .policyRefused: .notice
            case .notFound, .claimInProgress: .debug
            default: .info
            }
            logger.log(level: level, "named claim refused", metadata: [
                "name": "\(name)", "reason": "\(refusal.failure)", "pid": "\(peer.pid)", "uid": "\(peer.uid)", "gid": "\(peer.gid)",
                "why": "\(refusal.text)",
            ])
            return .reply(refusal.message)
        case .handOut(let id, let descriptor):
            guard holder.reply(connection, .claimed(shareID: id), descriptors: [descriptor.rawValue]) else {
                _ = named.withLock { $0.release(connection: connection.id) }
                return .replyAndClose(.failure(.internalError, "the descriptor could not be sent"))
            }
            namedOffers[connection.id] = id
            connection.deadline = .now + holder.configuration.limits.acknowledgeTimeout
            return .silent
        }
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
        }
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
