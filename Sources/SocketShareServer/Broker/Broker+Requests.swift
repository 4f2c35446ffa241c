import Glibc
import SocketShare
import SocketShareCore

/// What a broker serves beyond claims: deposit, revoke, list, metrics, and takeover
/// (`Broker+Takeover.swift`). Called on the holder's reactor thread.
extension Broker: EscrowService {
    package func respond(
        to request: EscrowMessage, descriptor: SocketDescriptor?, from connection: EscrowHolder.Connection,
        in holder: EscrowHolder
    ) -> EscrowHolder.Answer {
        if let answer = respondNamed(to: request, descriptor: descriptor, from: connection) { return answer }
        switch request {
        case .deposit(let pid, let start, let ttl):
            guard let descriptor else { return .replyAndClose(.failure(.malformed, "a deposit carries one descriptor")) }
            return deposit(descriptor, targetPID: pid, targetStartTime: start, timeToLiveMilliseconds: ttl, from: connection)
        case .revoke(let id):
            if named.withLock({ $0.entries[id] != nil }) {
                switch named.withLock({ $0.revoke(id, by: connection.peer.uid) }) {
                case .success(let ended):
                    finish([ended])
                    logger.info("revoked named share", metadata: ["name": "\(ended.record.name)", "share": "\(id)", "by": "\(connection.peer.pid)"])
                    return .reply(.revoked(shareID: id))
                case .failure(let refusal):
                    return .reply(refusal.message)
                }
            }
            var refusal: EscrowRefusal?
            holder.end { table in
                switch table.revoke(id, by: connection.peer.uid) {
                case .success(let ended): return [ended]
                case .failure(let reason):
                    refusal = reason
                    return []
                }
            }
            if let refusal { return .reply(refusal.message) }
            logger.info("revoked", metadata: ["share": "\(id)", "by": "\(connection.peer.pid)"])
            return .reply(.revoked(shareID: id))
        case .list(let after):
            let page = holder.withTable {
                $0.listing(
                    for: connection.peer.uid, after: after, pageSize: EscrowMessage.listingPageSize,
                    nowMilliseconds: ShareTime.nowMilliseconds)
            }
            return .reply(.listing(more: page.more, shares: page.shares))
        case .metrics:
            // The counters are the whole broker's: only root and the broker's own user may read them.
            guard capacity.connections.trusted.contains(connection.peer.uid) else {
                return .reply(.failure(.permissionDenied, "the broker's metrics are for root and the broker's own user"))
            }
            return .reply(.metricsText(configuration.metricsText?() ?? ""))
        case .takeover:
            return beginHandover(to: connection)
        case .takeoverDone:
            return .replyAndClose(.failure(.malformed, "no takeover is in progress on this connection"))
        default:
            return .replyAndClose(.failure(.unknownMessage, "not a broker request"))
        }
    }

    package func connectionClosed(_ connection: EscrowHolder.Connection, in holder: EscrowHolder) {
        forgetParkedClaim(of: connection)
        if namedOffers[connection.id] != nil {
            releaseNamed(for: connection)
            handOutSettled(in: holder)
        }
        guard successor === connection else { return }
        abandonHandover()
        logger.warning("the successor broker went away; serving on")
    }

    package func handOutSettled(in holder: EscrowHolder) {
        if successor != nil { handOverIfReady() }
    }

    package func acknowledged(_ id: UInt64, from connection: EscrowHolder.Connection, in holder: EscrowHolder) -> Bool {
        guard acknowledgeNamed(id, from: connection) else { return false }
        handOutSettled(in: holder)
        return true
    }

    private func deposit(
        _ received: SocketDescriptor, targetPID: UInt32, targetStartTime: UInt64, timeToLiveMilliseconds: UInt32,
        from connection: EscrowHolder.Connection
    ) -> EscrowHolder.Answer {
        let ttl = Duration.milliseconds(Int64(timeToLiveMilliseconds))
        guard timeToLiveMilliseconds > 0 else { return .reply(.failure(.malformed, "field ttlMilliseconds: 0; a share needs a time to live")) }
        guard ttl <= configuration.maximumTimeToLive else {
            return .reply(.failure(
                .limitReached, "a time to live of \(Double(timeToLiveMilliseconds) / 1000) s exceeds this broker's maximum of "
                    + "\(configuration.maximumTimeToLive.components.seconds) s"))
        }
        guard targetPID > 0, targetPID <= UInt32(Int32.max) else {
            return .reply(.failure(.malformed, "field targetPid: \(targetPID) is not a process id"))
        }
        let pid = pid_t(targetPID)
        let description: SocketDescription
        do throws(SocketShareError) {
            description = try SocketDescription(of: received.rawValue)
        } catch {
            return .reply(.failure(.malformed, "the descriptor cannot be shared: \(error.detail)"))
        }
        let target: ShareTarget
        do throws(SocketShareError) {
            target = try ShareTarget.resolve(
                pid: pid, expected: targetStartTime == 0 ? nil : ProcessIdentity(pid: pid, startTime: targetStartTime))
        } catch {
            return .reply(.failure(.targetGone, "target: \(error.detail)"))
        }
        // After the target's checks, as the table's own quota check comes: named shares count too.
        if let refusal = quotaRefusal(for: connection.peer.uid) { return .reply(refusal.message) }
        do throws(SocketShareError) {
            let depositor = try connection.peer.identity()
            let token = try holder.deposit(
                try received.duplicate(), description: description, target: target, mechanism: .broker,
                timeToLive: ttl, depositor: depositor, depositorUID: connection.peer.uid)
            FaultPoint.reached("holder.deposit.beforeReply")
            return .reply(.deposited(token: token.bytes))
        } catch {
            return .reply(.failure(error.code == .limitReached ? .limitReached : .internalError, error.detail))
        }
    }
}
