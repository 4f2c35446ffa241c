import Glibc

extension EscrowHolder {
    /// Deposit, revoke, list, metrics and takeover: what a broker serves beyond claims.
    func brokerRequest(
        _ request: EscrowMessage, descriptor: SocketDescriptor?, from connection: Connection, _ loop: inout LoopState
    ) -> Answer {
        switch request {
        case .deposit(let pid, let start, let ttl):
            return deposit(descriptor!, targetPID: pid, targetStartTime: start, timeToLiveMilliseconds: ttl, from: connection)
        case .revoke(let id):
            let owner = state.withLock { $0.entries[id]?.depositorUID }
            guard let owner else { return .reply(.failure(.notFound, "no share \(id) is held here")) }
            guard connection.peer.uid == owner || connection.peer.uid == 0 else {
                return .reply(.failure(.permissionDenied, "share \(id) belongs to uid \(owner); only it or root may revoke it"))
            }
            revoke(id)
            logger.info("revoked", metadata: ["share": "\(id)", "by": "\(connection.peer.pid)"])
            return .reply(.revoked(shareID: id))
        case .list(let after):
            return .reply(listing(for: connection.peer.uid, after: after))
        case .metrics:
            return .reply(.metricsText(configuration.metricsText?() ?? ""))
        case .takeover:
            guard connection.peer.uid == geteuid() || connection.peer.uid == 0 else {
                return .reply(.failure(.permissionDenied, "only uid \(geteuid()) (the broker's) or root may take over"))
            }
            guard loop.successor == nil else {
                return .reply(.failure(.claimInProgress, "another broker is already taking over"))
            }
            loop.successor = connection
            loop.handoverDeadline = .now + configuration.acknowledgeTimeout
            connection.deadline = .now + .seconds(3600)
            logger.notice("a successor (pid \(connection.peer.pid)) asked to take over; no longer accepting connections")
            return .silent
        case .takeoverDone:
            return .replyAndClose(.failure(.malformed, "no takeover is in progress on this connection"))
        default:
            return .replyAndClose(.failure(.unknownMessage, "not a broker request"))
        }
    }

    private func deposit(
        _ received: SocketDescriptor, targetPID: UInt32, targetStartTime: UInt64, timeToLiveMilliseconds: UInt32,
        from connection: Connection
    ) -> Answer {
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
        do throws(SocketShareError) {
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
            let depositor = try connection.peer.identity()
            let token = try deposit(
                try received.duplicate(), description: description, target: target, mechanism: .broker,
                timeToLive: ttl, depositor: depositor, depositorUID: connection.peer.uid)
            FaultPoint.reached("holder.deposit.beforeReply")
            return .reply(.deposited(token: token.bytes))
        } catch {
            let code: EscrowFailure = error.code == .limitReached ? .limitReached : .internalError
            return .reply(.failure(code, error.detail))
        }
    }

    /// Shares `uid` may see (its own; all for root), with ids above `after`, one page.
    private func listing(for uid: uid_t, after: UInt64) -> EscrowMessage {
        let now = ShareTime.nowMilliseconds
        return state.withLock { state in
            let visible = state.entries.values
                .filter { ($0.depositorUID == uid || uid == 0) && $0.id > after }
                .sorted { $0.id < $1.id }
            let page = visible.prefix(EscrowMessage.listingPageSize).map { entry in
                HeldShare(
                    id: entry.id, family: entry.description.family, kind: entry.description.kind,
                    protocolNumber: entry.description.protocolNumber, isListening: entry.description.isListening,
                    isConnected: entry.description.isConnected, localAddress: "\(entry.description.localAddress)",
                    sourcePID: entry.depositor.pid, targetPID: entry.target.identity.pid, depositorUID: entry.depositorUID,
                    ageMilliseconds: now &- entry.createdAtMilliseconds,
                    expiresInMilliseconds: entry.expiresAtMilliseconds > now ? entry.expiresAtMilliseconds - now : 0)
            }
            return .listing(more: visible.count > page.count, shares: page)
        }
    }
}
