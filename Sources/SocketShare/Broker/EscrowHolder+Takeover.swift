import Glibc

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
extension EscrowHolder {
    /// The most shares per `takeoverShares` message (their metadata must fit one packet).
    static let takeoverBatch = 200

    /// Hands everything to `successor` once no claim is in flight (or the handover deadline passed).
    /// Returns true when the successor has it all and this holder should stop.
    func handOverIfReady(to successor: Connection, _ loop: inout LoopState) -> Bool {
        let inFlight = state.withLock { state in state.entries.values.contains { $0.offeredTo != nil } }
        if inFlight, let deadline = loop.handoverDeadline, ContinuousClock.now < deadline { return false }
        let deadline = ContinuousClock.now + .seconds(30)
        do throws(SocketShareError) {
            let entries = state.withLock { state in state.entries.values.sorted { $0.id < $1.id } }
            try successor.channel.send(
                EscrowMessage.takeoverListener(shareCount: UInt32(entries.count)).bytes,
                descriptors: [listener.rawValue], deadline: deadline)
            FaultPoint.reached("takeover.afterListener")
            var index = 0
            while index < entries.count {
                let batch = entries[index..<min(index + Self.takeoverBatch, entries.count)]
                let shares = batch.map { entry in
                    TransferredShare(
                        id: entry.id, secret: entry.secret, mechanism: entry.mechanism, target: entry.target,
                        depositor: entry.depositor, depositorUID: entry.depositorUID,
                        createdAtMilliseconds: entry.createdAtMilliseconds, expiresAtMilliseconds: entry.expiresAtMilliseconds)
                }
                try successor.channel.send(
                    EscrowMessage.takeoverShares(shares).bytes, descriptors: batch.map(\.descriptor.rawValue),
                    deadline: deadline)
                index += batch.count
            }
            FaultPoint.reached("takeover.afterShares")
            guard let reply = try successor.channel.receive(maximumBytes: EscrowMessage.maximumRequestLength, deadline: deadline),
                  (try? EscrowMessage(bytes: reply.bytes)) == .takeoverDone else {
                throw SocketShareError(.protocolViolation, operation: "takeover", detail: "the successor did not confirm")
            }
            state.withLock { $0.handedOver = true }
            logger.notice("handed \(entries.count) shares and the listening socket to pid \(successor.peer.pid)")
            return true
        } catch {
            logger.error("takeover failed; serving on", metadata: ["error": "\(error)"])
            drop(successor, &loop)
            return false
        }
    }

    /// Takes over from the holder serving at `configuration.endpoint`: receives its listening
    /// socket and every share it holds, and returns a holder ready to ``run()`` with them. The
    /// predecessor exits once this returns.
    static func takingOver(configuration: Configuration) throws(SocketShareError) -> EscrowHolder {
        let channel: DescriptorChannel
        do throws(SocketShareError) {
            channel = try DescriptorChannel.connect(to: configuration.endpoint)
        } catch {
            throw error.within("take over", context: "from \(configuration.endpoint) (is a broker running there?)")
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
            switch try EscrowMessage(bytes: first.bytes) {
            case .takeoverListener(let shareCount) where firstDescriptors.count == 1:
                count = shareCount
            case .failure(let code, let text):
                throw SocketShareError(code.code, operation: "take over", detail: text)
            default:
                throw SocketShareError(.protocolViolation, operation: "take over", detail: "unexpected first message")
            }
            let listener = firstDescriptors[0]
            var received: [(TransferredShare, SocketDescriptor)] = []
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
            let firstID = (received.map(\.0.id).max() ?? 0) &+ 1
            let holder = try EscrowHolder(configuration: configuration, listener: listener, firstID: firstID > 1 ? firstID : nil)
            owned.removeAll { $0 === listener }
            try holder.install(received)
            owned.removeAll()
            FaultPoint.reached("takeover.beforeDone")
            do throws(SocketShareError) {
                try channel.send(EscrowMessage.takeoverDone.bytes, deadline: deadline)
            } catch {
                // Everything arrived, but the predecessor is not there to hear it. If it has exited,
                // these shares exist nowhere else: serve them. If it lives, its takeover failed and it
                // kept them, and two holders of one share must never both serve.
                guard let predecessor, predecessor.hasExited else { throw error }
                holder.logger.warning("the predecessor (pid \(predecessor.pid)) exited before our confirmation; serving what it handed over")
            }
            holder.logger.notice("took over \(received.count) shares and the listening socket at \(configuration.endpoint)")
            return holder
        } catch {
            for descriptor in owned { try? descriptor.close() }
            throw error
        }
    }

    /// Adds shares received from a predecessor; the holder owns their descriptors from now on.
    private func install(_ shares: [(TransferredShare, SocketDescriptor)]) throws(SocketShareError) {
        let now = ShareTime.nowMilliseconds
        var entries: [Entry] = []
        for (share, descriptor) in shares {
            guard let description = try? SocketDescription(of: descriptor.rawValue) else {
                try? descriptor.close()
                continue
            }
            let remaining = share.expiresAtMilliseconds > now ? share.expiresAtMilliseconds - now : 0
            entries.append(Entry(
                id: share.id, secret: share.secret, mechanism: share.mechanism, target: share.target,
                descriptor: descriptor, description: description, depositor: share.depositor,
                depositorUID: share.depositorUID, createdAtMilliseconds: share.createdAtMilliseconds,
                expiresAtMilliseconds: share.expiresAtMilliseconds, deadline: .now + .milliseconds(Int64(remaining)),
                offeredTo: nil))
        }
        state.withLock { state in
            for entry in entries {
                state.entries[entry.id] = entry
                state.deadlines.insert(entry.deadline, id: entry.id)
                state.perUser[entry.depositorUID, default: 0] += 1
            }
            if !entries.isEmpty { state.idleSince = nil }
        }
        metrics.held(heldCount)
    }
}
