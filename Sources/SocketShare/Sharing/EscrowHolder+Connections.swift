import Glibc
import SocketShareCore

/// The holder's clients, on its reactor's thread: accepting, reading requests, claims and
/// acknowledgements, and the timeouts that drop silent connections.
extension EscrowHolder {
    /// A client connected to the holder. Touched on the reactor's thread only.
    package final class Connection {
        /// The connection's id: what the table records a hand-out against.
        package let id: UInt64
        package let channel: DescriptorChannel
        /// Who connected.
        package let peer: PeerProcess
        /// When the connection is dropped unless it speaks.
        package var deadline: ContinuousClock.Instant
        /// The share handed to this connection and not yet acknowledged.
        package var offered: UInt64?
        var watch: Reactor.Watch?
        var timer: Reactor.Timer?

        init(id: UInt64, channel: DescriptorChannel, peer: PeerProcess, deadline: ContinuousClock.Instant) {
            self.id = id
            self.channel = channel
            self.peer = peer
            self.deadline = deadline
        }

        /// The peer as the table asks after it.
        func claimant(byStartTimeOnly: Bool) -> EscrowTable<SocketDescriptor>.Claimant {
            let peer = peer
            return .init(pid: peer.pid, uid: peer.uid) { peer.isProcess($0, byStartTimeOnly: byStartTimeOnly) }
        }
    }

    /// What to do after a request.
    package enum Answer {
        /// Send this reply and keep the connection.
        case reply(EscrowMessage)
        /// Send this reply and drop the connection (the client broke the protocol).
        case replyAndClose(EscrowMessage)
        /// Nothing to send; keep the connection.
        case silent
    }

    /// Accepts waiting clients; bounded per round so one flood cannot starve the connections already
    /// here. A connection beyond the quota (``ConnectionQuota``: in all, or of its uid) is told why
    /// and closed at once.
    func acceptConnections() {
        for _ in 0..<64 {
            let next: SocketDescriptor?
            do throws(SocketShareError) {
                next = try listener.accept()
            } catch where error.code == .limitReached {
                // EMFILE/ENFILE: the listener stays readable, so watching it now would spin.
                // Clients wait in the backlog; look again in a moment.
                if let listenerWatch {
                    reactor.setReadable(listenerWatch, false)
                    reactor.schedule(at: .now + .milliseconds(100)) { [self] in
                        // Unless a takeover has stopped accepting meanwhile (then there is no watch).
                        if let watch = self.listenerWatch { reactor.setReadable(watch, true) }
                    }
                }
                logger.warning("out of descriptors: accepting again in 100 ms", metadata: ["error": "\(error)"])
                return
            } catch {
                return
            }
            guard let accepted = next else { return }
            guard let peer = try? PeerProcess(of: accepted.rawValue) else {
                try? accepted.close()
                continue
            }
            if let refusal = quota.admit(peer.uid) {
                if let skipped = refusalLog.admit(peer.uid, at: .now) {
                    logger.warning("connection refused", metadata: [
                        "pid": "\(peer.pid)", "uid": "\(peer.uid)", "why": "\(refusal)", "refusedSinceLastLine": "\(skipped)",
                    ])
                }
                metrics.refused(.limitReached)
                DescriptorChannel(accepted).turnAway(EscrowMessage.failure(.limitReached, refusal).bytes)
                continue
            }
            let connection = Connection(
                id: nextConnectionID, channel: DescriptorChannel(accepted), peer: peer,
                deadline: .now + configuration.requestTimeout)
            nextConnectionID += 1
            do throws(SocketShareError) {
                connection.watch = try reactor.watch(accepted.rawValue) { [self, unowned connection] _ in
                    serve(connection)
                }
            } catch {
                quota.release(peer.uid)
                try? accepted.close()
                continue
            }
            connections[connection.id] = connection
            if let lingerTimer {
                reactor.cancel(lingerTimer)
                self.lingerTimer = nil
            }
            armDeadline(of: connection)
            // A claimant sends its request right after connecting: serve it now if it is here
            // rather than after another trip through epoll.
            serve(connection)
        }
    }

    /// Drops `connection` at its deadline, unless it spoke meanwhile (then looks again at the new one).
    private func armDeadline(of connection: Connection) {
        connection.timer = reactor.schedule(at: connection.deadline) { [self, weak connection] in
            guard let connection, connections[connection.id] === connection else { return }
            connection.timer = nil
            if connection.deadline <= .now {
                close(connection, releasing: true)
            } else {
                armDeadline(of: connection)
            }
        }
    }

    /// Reads and answers what `connection` sent.
    private func serve(_ connection: Connection) {
        guard connections[connection.id] === connection else { return }
        let message: ChannelMessage?
        do throws(SocketShareError) {
            message = try connection.channel.receive(maximumBytes: EscrowMessage.maximumRequestLength, deadline: .now)
        } catch {
            if error.code == .timedOut { return }
            if error.code == .protocolViolation {
                reply(connection, .failure(.malformed, "message longer than \(EscrowMessage.maximumRequestLength) bytes"))
            }
            close(connection, releasing: true)
            return
        }
        guard let message else {
            close(connection, releasing: true)
            return
        }
        connection.deadline = .now + configuration.requestTimeout
        let descriptors = message.takeDescriptors()
        let answer = respond(to: message.bytes, descriptors: descriptors, from: connection)
        for descriptor in descriptors { try? descriptor.close() }
        switch answer {
        case .reply(let message):
            if !reply(connection, message) { close(connection, releasing: true) }
        case .replyAndClose(let message):
            reply(connection, message)
            close(connection, releasing: true)
        case .silent:
            break
        }
    }

    /// Decides the answer to one message. Descriptors that came with it are closed by the caller
    /// once this returns (a deposit keeps its own duplicate).
    private func respond(to bytes: [UInt8], descriptors: [SocketDescriptor], from connection: Connection) -> Answer {
        if let version = bytes.first, version != EscrowMessage.version {
            return .replyAndClose(.failure(
                .unsupportedVersion,
                "protocol version \(version) is not supported; this holder speaks version \(EscrowMessage.version)"))
        }
        let request: EscrowMessage
        do throws(SocketShareError) {
            request = try EscrowMessage(bytes: bytes)
        } catch {
            return .replyAndClose(.failure(error.cause == .unknownMessageType ? .unknownMessage : .malformed, error.detail))
        }
        guard request.isRequest else {
            return .replyAndClose(.failure(.unknownMessage, "that message is a reply; a holder does not accept it"))
        }
        let isDeposit = switch request {
        case .deposit, .depositNamed: true
        default: false
        }
        if isDeposit {
            guard descriptors.count == 1 else {
                return .replyAndClose(.failure(
                    .malformed, "a deposit carries exactly one descriptor; \(descriptors.count) came (closed)"))
            }
        } else if !descriptors.isEmpty {
            return .replyAndClose(.failure(.malformed, "descriptors are not expected with this message; they were closed"))
        }
        switch request {
        case .claim(let shareID, let secret):
            return claim(shareID, secret: secret, by: connection, pulling: false)
        case .pull(let shareID, let secret):
            return claim(shareID, secret: secret, by: connection, pulling: true)
        case .acknowledge(let shareID):
            return acknowledge(shareID, by: connection)
        default:
            guard let service else {
                return .reply(.failure(.unknownMessage, "this holder is a sharer: it serves claims only"))
            }
            return service.respond(to: request, descriptor: descriptors.first, from: connection, in: self)
        }
    }

    /// Authorises a claim and hands the descriptor out, keeping the holder's copy until acknowledged:
    /// attached to the reply, or, when `pulling` (a pidfd share), named in it for the claimant to pull
    /// from this process with `pidfd_getfd(2)`.
    private func claim(_ id: UInt64, secret: ShareSecret, by connection: Connection, pulling: Bool) -> Answer {
        if connection.offered != nil {
            return .replyAndClose(.failure(.malformed, "a claim is already waiting for its acknowledgement on this connection"))
        }
        let claimant = connection.claimant(byStartTimeOnly: configuration.identifiesByStartTimeOnly)
        let decision = withTable { $0.claim(id, secret: secret, by: claimant, connection: connection.id, now: .now) }
        switch decision {
        case .refuse(let refusal):
            return .reply(refusal.message)
        case .handOut(let descriptor):
            FaultPoint.reached("holder.claim.beforeSend")
            // The descriptor stays open while it is sent (or pulled, until the acknowledgement): only
            // this thread closes held duplicates.
            let sent = pulling
                ? reply(connection, .pullable(shareID: id, descriptor: UInt32(descriptor.rawValue)))
                : reply(connection, .claimed(shareID: id), descriptors: [descriptor.rawValue])
            guard sent else {
                withTable { _ = $0.release(id, connection: connection.id) }
                return .replyAndClose(.failure(.internalError, "the descriptor could not be sent"))
            }
            FaultPoint.reached("holder.claim.afterSend")
            connection.offered = id
            connection.deadline = .now + configuration.limits.acknowledgeTimeout
            return .silent
        }
    }

    /// The target confirms it holds the descriptor: the share is done and the holder's copy closed.
    private func acknowledge(_ id: UInt64, by connection: Connection) -> Answer {
        if connection.offered == id {
            connection.offered = nil
            end { table in table.acknowledge(id, connection: connection.id).map { [$0] } ?? [] }
            service?.handOutSettled(in: self)
            return .silent
        }
        if let service, service.acknowledged(id, from: connection, in: self) { return .silent }
        return .replyAndClose(.failure(.malformed, "acknowledge of share \(id), which was not handed to this connection"))
    }

    /// Sends `message` (with `descriptors`, which stay the caller's) without waiting; false when
    /// it could not be sent.
    @discardableResult
    package func reply(_ connection: Connection, _ message: EscrowMessage, descriptors: [CInt] = []) -> Bool {
        if case .failure(let code, _) = message { metrics.refused(code) }
        return (try? connection.channel.send(message.bytes, descriptors: descriptors, deadline: .now)) != nil
    }

    /// Closes `connection`. With `releasing`, a share handed to it and not acknowledged becomes
    /// claimable again.
    package func close(_ connection: Connection, releasing: Bool) {
        guard connections.removeValue(forKey: connection.id) != nil else { return }
        quota.release(connection.peer.uid)
        if let watch = connection.watch { reactor.unwatch(watch) }
        if let timer = connection.timer { reactor.cancel(timer) }
        if releasing, let offered = connection.offered {
            if withTable({ $0.release(offered, connection: connection.id) }) {
                logger.info("claimant left before acknowledging; the share is claimable again", metadata: ["share": "\(offered)"])
            }
            service?.handOutSettled(in: self)
        }
        try? connection.channel.close()
        service?.connectionClosed(connection, in: self)
        if connections.isEmpty { scheduleLinger() }
    }

    /// Stops accepting new clients (they wait in the listen backlog). On the reactor's thread.
    package func pauseAccepting() {
        if let listenerWatch { reactor.unwatch(listenerWatch) }
        listenerWatch = nil
    }

    /// Accepts again after `pauseAccepting()`. On the reactor's thread.
    package func resumeAccepting() {
        guard listenerWatch == nil, listener.isOpen else { return }
        listenerWatch = try? reactor.watch(listener.rawValue) { [self] _ in acceptConnections() }
    }
}
