import Glibc

extension EscrowHolder {
    /// What to do after a request.
    enum Answer {
        /// Send this reply and keep the connection.
        case reply(EscrowMessage)
        /// Send this reply and drop the connection (the client broke the protocol).
        case replyAndClose(EscrowMessage)
        /// A descriptor was handed out (the reply is sent); wait for the acknowledgement.
        case handedOut
        /// Nothing to send.
        case silent
    }

    /// Decides the answer to one message. Descriptors that came with it are closed by the caller
    /// once this returns (a deposit keeps its own duplicate).
    func respond(to bytes: [UInt8], descriptors: [SocketDescriptor], from connection: Connection, _ loop: inout LoopState) -> Answer {
        if let version = bytes.first, version != EscrowMessage.version {
            return .replyAndClose(.failure(
                .unsupportedVersion,
                "protocol version \(version) is not supported; this holder speaks version \(EscrowMessage.version)"))
        }
        let request: EscrowMessage
        do throws(SocketShareError) {
            request = try EscrowMessage(bytes: bytes)
        } catch {
            let kind: EscrowFailure = error.detail.contains("field type") ? .unknownMessage : .malformed
            return .replyAndClose(.failure(kind, error.detail))
        }
        guard request.isRequest else {
            return .replyAndClose(.failure(.unknownMessage, "that message is a reply; a holder does not accept it"))
        }
        if case .deposit = request {
            guard descriptors.count == 1 else {
                return .replyAndClose(.failure(
                    .malformed, "a deposit carries exactly one descriptor; \(descriptors.count) came (closed)"))
            }
        } else if !descriptors.isEmpty {
            return .replyAndClose(.failure(.malformed, "descriptors are not expected with this message; they were closed"))
        }
        switch request {
        case .claim(let shareID, let secret):
            return claim(shareID, secret: secret, by: connection)
        case .acknowledge(let shareID):
            return acknowledge(shareID, by: connection)
        case .deposit, .revoke, .list, .metrics, .takeover, .takeoverDone:
            guard configuration.servesBrokerRequests else {
                return .reply(.failure(.unknownMessage, "this holder is a sharer: it serves claims only"))
            }
            return brokerRequest(request, descriptor: descriptors.first, from: connection, &loop)
        default:
            return .replyAndClose(.failure(.unknownMessage, "not a request"))
        }
    }

    /// Authorises a claim and hands the descriptor out, keeping the holder's copy until acknowledged.
    private func claim(_ id: UInt64, secret: ShareSecret, by connection: Connection) -> Answer {
        if connection.offered != nil {
            return .replyAndClose(.failure(.malformed, "a claim is already waiting for its acknowledgement on this connection"))
        }
        return state.withLock { state -> Answer in
            guard let entry = state.entries[id], let held = entry.secret, held == secret else {
                if let finished = state.history[id], let held = finished.secret, held == secret {
                    return .reply(Self.refusal(for: finished.outcome))
                }
                return .reply(.failure(.notFound, "no share with this id and secret is held here"))
            }
            if let refusal = Self.authorize(connection.peer, for: entry, byStartTimeOnly: configuration.identifiesByStartTimeOnly) {
                return .reply(refusal)
            }
            guard entry.offeredTo == nil else {
                return .reply(.failure(.claimInProgress, "this share was handed out and awaits its acknowledgement"))
            }
            guard entry.deadline > .now else {
                return .reply(.failure(.expired, "the share expired"))
            }
            FaultPoint.reached("holder.claim.beforeSend")
            // Sent under the lock so that no revoke or expiry can close the descriptor mid-send.
            guard reply(connection, .claimed(shareID: id), descriptors: [entry.descriptor.rawValue]) else {
                return .silent
            }
            FaultPoint.reached("holder.claim.afterSend")
            state.entries[id]?.offeredTo = ObjectIdentifier(connection)
            connection.offered = id
            return .handedOut
        }
    }

    /// The target confirms it holds the descriptor: the share is done and the holder's copy closed.
    private func acknowledge(_ id: UInt64, by connection: Connection) -> Answer {
        if connection.offered == id {
            connection.offered = nil
            connection.deadline = .now + configuration.requestTimeout
            finishClaimed(id)
            return .silent
        }
        // A pidfd share: the target pulled the descriptor itself and says so.
        let isPulledShare = state.withLock { state in
            guard let entry = state.entries[id], entry.secret == nil else { return false }
            return Self.authorize(connection.peer, for: entry, byStartTimeOnly: configuration.identifiesByStartTimeOnly) == nil
        }
        if isPulledShare {
            finishClaimed(id)
            return .silent
        }
        return .replyAndClose(.failure(.malformed, "acknowledge of share \(id), which was not handed to this connection"))
    }

    /// Whether `peer` may claim `entry`: nil when it may, else the refusal to send.
    ///
    /// The peer must be the target process (pid, then pidfs inode or start time) running as the
    /// target's uid.
    static func authorize(_ peer: PeerProcess, for entry: Entry, byStartTimeOnly: Bool) -> EscrowMessage? {
        let target = entry.target
        guard peer.pid == target.identity.pid else {
            return .failure(.wrongProcess, "this share is for pid \(target.identity.pid); pid \(peer.pid) may not claim it")
        }
        guard peer.isProcess(target, byStartTimeOnly: byStartTimeOnly) else {
            return .failure(
                .wrongStartTime,
                "pid \(peer.pid) is not the target process but a later one with its pid "
                    + "(the target, started at tick \(target.identity.startTime), exited and its pid was reused)")
        }
        guard peer.uid == target.uid else {
            return .failure(.wrongUser, "the claimant runs as uid \(peer.uid); the target ran as uid \(target.uid)")
        }
        return nil
    }

    static func refusal(for outcome: ShareOutcome) -> EscrowMessage {
        switch outcome {
        case .claimed(let by): .failure(.alreadyClaimed, "the share was already claimed by pid \(by.pid); shares are single use")
        case .expired: .failure(.expired, "the share expired before it was claimed")
        case .revoked: .failure(.revoked, "the source revoked the share")
        case .targetExited: .failure(.revoked, "the share's target exited before claiming it")
        case .holderStopped: .failure(.revoked, "the holder stopped")
        }
    }
}
