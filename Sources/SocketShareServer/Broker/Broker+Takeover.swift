import Glibc
import Logging
import SocketShare
import SocketShareCore

/// Restart without loss: a running broker hands its listening socket and every held share to a
/// successor over the descriptor channel, and exits only once the successor says all arrived.
///
/// 1. successor → broker: `takeover`. The broker stops accepting (new clients wait in the listen
///    backlog of the very socket that is about to change hands: none is refused) and lets claims
///    in flight finish, for up to the acknowledge timeout.
/// 2. broker → successor: `takeoverListener` with the listening socket, then `takeoverShares`
///    messages of up to 200 shares, each share's descriptor attached in order.
/// 3. successor → broker: `takeoverDone`. Only then does the broker close its copies and exit,
///    leaving the socket path in place. If the successor fails before that, the broker serves on.
extension Broker {
    /// The most shares per `takeoverShares` message (their metadata must fit one packet).
    static let takeoverBatch = 200

    /// A successor asked for everything. On the holder's reactor thread.
    func beginHandover(to connection: EscrowHolder.Connection) -> EscrowHolder.Answer {
        guard connection.peer.uid == geteuid() || connection.peer.uid == 0 else {
            return .reply(.failure(.permissionDenied, "only uid \(geteuid()) (the broker's) or root may take over"))
        }
        guard successor == nil else {
            return .reply(.failure(.claimInProgress, "another broker is already taking over"))
        }
        successor = connection
        holder.pauseAccepting()
        connection.deadline = .now + .seconds(3600)
        let deadline = ContinuousClock.now + holder.configuration.limits.acknowledgeTimeout
        handoverDeadline = deadline
        handoverTimer = holder.reactor.schedule(at: deadline) { [self] in
            handoverTimer = nil
            if successor != nil { handOverIfReady() }
        }
        logger.notice("a successor (pid \(connection.peer.pid)) asked to take over; no longer accepting connections")
        handOverIfReady()
        return .silent
    }

    /// Hands everything to the successor once no claim is in flight (or the handover deadline
    /// passed); on success the holder stops. On the holder's reactor thread.
    func handOverIfReady() {
        guard let successor else { return }
        if holder.hasHandedOut || !namedOffers.isEmpty, let handoverDeadline, ContinuousClock.now < handoverDeadline { return }
        let deadline = ContinuousClock.now + .seconds(30)
        do throws(SocketShareError) {
            let entries = holder.withTable { table in table.entries.values.sorted { $0.record.id < $1.record.id } }
            let namedEntries = named.withLock { table in table.entries.values.sorted { $0.record.id < $1.record.id } }
            try successor.channel.send(
                EscrowMessage.takeoverListener(shareCount: UInt32(entries.count), namedCount: UInt32(namedEntries.count)).bytes,
                descriptors: [holder.listener.rawValue], deadline: deadline)
            FaultPoint.reached("takeover.afterListener")
            try Self.send(entries, in: Self.takeoverBatch, on: successor.channel, deadline: deadline) {
                .takeoverShares($0.map(\.record))
            } descriptor: { $0.held.rawValue }
            try Self.send(namedEntries, in: EscrowMessage.namedTakeoverBatch, on: successor.channel, deadline: deadline) {
                .takeoverNamed($0.map(\.record))
            } descriptor: { $0.held.rawValue }
            FaultPoint.reached("takeover.afterShares")
            guard let reply = try successor.channel.receive(maximumBytes: EscrowMessage.maximumRequestLength, deadline: deadline),
                  (try? EscrowMessage(bytes: reply.bytes)) == .takeoverDone else {
                throw SocketShareError(.protocolViolation, operation: "takeover", detail: "the successor did not confirm")
            }
            logger.notice(
                "handed \(entries.count) shares, \(namedEntries.count) named shares and the listening socket to pid \(successor.peer.pid)")
            cancelHandoverTimer()
            holder.finishHandover()
        } catch {
            logger.error("takeover failed; serving on", metadata: ["error": "\(error)"])
            holder.close(successor, releasing: true)
        }
    }

    /// Sends `entries` in messages of at most `batch`, each with its entries' descriptors attached in order.
    private static func send<Entry>(
        _ entries: [Entry], in batch: Int, on channel: DescriptorChannel, deadline: ContinuousClock.Instant,
        message: (ArraySlice<Entry>) -> EscrowMessage, descriptor: (Entry) -> CInt
    ) throws(SocketShareError) {
        var index = 0
        while index < entries.count {
            let slice = entries[index..<min(index + batch, entries.count)]
            try channel.send(message(slice).bytes, descriptors: slice.map(descriptor), deadline: deadline)
            index += slice.count
        }
    }

    /// The successor went away or failed: serve on. On the holder's reactor thread.
    func abandonHandover() {
        successor = nil
        handoverDeadline = nil
        cancelHandoverTimer()
        holder.resumeAccepting()
    }

    private func cancelHandoverTimer() {
        if let handoverTimer { holder.reactor.cancel(handoverTimer) }
        handoverTimer = nil
    }

    /// Takes over from the broker serving at `configuration.socketPath`: receives its listening
    /// socket and every share it holds over the descriptor channel; the old broker then exits.
    /// Tokens it issued stay claimable here; no connection is refused meanwhile. Serve with ``run()``.
    public static func takingOver(configuration: Configuration, logger: Logger) throws(SocketShareError) -> Broker {
        let (settings, capacity) = try prepare(configuration, logger: logger)
        let channel: DescriptorChannel
        do throws(SocketShareError) {
            // The directory is ours (prepared above): the running broker must be this user or root.
            channel = try Rendezvous.connect(
                to: settings.endpoint, trust: .ownUserOrRoot, for: "take over", absent: "no broker answers there")
        } catch {
            throw error.within("take over", context: "from \(settings.endpoint) (is a broker running there?)")
        }
        defer { try? channel.close() }
        let predecessor = try? PeerProcess(of: channel.socket.rawValue)
        let deadline = ContinuousClock.now + .seconds(60)
        try channel.send(EscrowMessage.takeover.bytes, deadline: deadline)

        var owned: [SocketDescriptor] = []
        do throws(SocketShareError) {
            guard let first = try channel.receive(maximumBytes: EscrowMessage.maximumReplyLength, deadline: deadline) else {
                throw SocketShareError(.holderGone, operation: "take over", detail: "the running broker closed the connection")
            }
            let firstDescriptors = first.takeDescriptors()
            owned += firstDescriptors
            let count: UInt32
            let namedCount: UInt32
            switch try EscrowMessage(bytes: first.bytes) {
            case .takeoverListener(let shareCount, let namedShareCount) where firstDescriptors.count == 1:
                count = shareCount
                namedCount = namedShareCount
            case .failure(let code, let text):
                throw SocketShareError(code.code, operation: "take over", detail: text)
            default:
                throw SocketShareError(.protocolViolation, operation: "take over", detail: "unexpected first message")
            }
            let listener = firstDescriptors[0]
            var received: [(ShareRecord, SocketDescriptor)] = []
            while received.count < Int(count) {
                guard let message = try channel.receive(maximumBytes: EscrowMessage.maximumReplyLength, deadline: deadline) else {
                    throw SocketShareError(
                        .holderGone, operation: "take over", detail: "the running broker closed after \(received.count) of \(count) shares")
                }
                let descriptors = message.takeDescriptors()
                owned += descriptors
                guard case .takeoverShares(let shares) = try EscrowMessage(bytes: message.bytes),
                      shares.count == descriptors.count else {
                    throw SocketShareError(.protocolViolation, operation: "take over", detail: "a share batch without its descriptors")
                }
                received += zip(shares, descriptors).map { ($0, $1) }
            }
            var receivedNamed: [(NamedShareRecord, SocketDescriptor)] = []
            while receivedNamed.count < Int(namedCount) {
                guard let message = try channel.receive(maximumBytes: EscrowMessage.maximumReplyLength, deadline: deadline) else {
                    throw SocketShareError(
                        .holderGone, operation: "take over",
                        detail: "the running broker closed after \(receivedNamed.count) of \(namedCount) named shares")
                }
                let descriptors = message.takeDescriptors()
                owned += descriptors
                guard case .takeoverNamed(let shares) = try EscrowMessage(bytes: message.bytes),
                      shares.count == descriptors.count else {
                    throw SocketShareError(
                        .protocolViolation, operation: "take over", detail: "a named share batch without its descriptors")
                }
                receivedNamed += zip(shares, descriptors).map { ($0, $1) }
            }
            owned.removeAll()
            let holder: EscrowHolder
            do throws(SocketShareError) {
                holder = try EscrowHolder(configuration: settings, listener: listener, installing: received)
            } catch {
                for (_, descriptor) in receivedNamed { try? descriptor.close() }
                throw error
            }
            FaultPoint.reached("takeover.beforeDone")
            do throws(SocketShareError) {
                try channel.send(EscrowMessage.takeoverDone.bytes, deadline: deadline)
            } catch {
                // Everything arrived, but the predecessor is not there to hear it. If it has exited,
                // these shares exist nowhere else: serve them. If it lives, its takeover failed and it
                // kept them, and two holders of one share must never both serve.
                guard let predecessor, predecessor.hasExited else {
                    holder.abandon()
                    for (_, descriptor) in receivedNamed { try? descriptor.close() }
                    throw error
                }
                logger.warning("the predecessor (pid \(predecessor.pid)) exited before our confirmation; serving what it handed over")
            }
            logger.notice(
                "took over \(received.count) shares, \(receivedNamed.count) named shares and the listening socket at \(settings.endpoint)")
            return Broker(configuration: configuration, capacity: capacity, holder: holder, installing: receivedNamed)
        } catch {
            for descriptor in owned { try? descriptor.close() }
            throw error
        }
    }
}
