import Glibc

extension EscrowHolder {
    /// A client connected to the holder.
    final class Connection {
        let channel: DescriptorChannel
        /// Who connected.
        let peer: PeerProcess
        var deadline: ContinuousClock.Instant
        /// The share handed to this connection and not yet acknowledged.
        var offered: UInt64?

        init(channel: DescriptorChannel, peer: PeerProcess, deadline: ContinuousClock.Instant) {
            self.channel = channel
            self.peer = peer
            self.deadline = deadline
        }
    }

    /// The loop's own state, touched by the loop thread only.
    struct LoopState {
        var connections: [CInt: Connection] = [:]
        /// A successor broker asked for everything; serving winds down until it is handed over.
        var successor: Connection?
        var handoverDeadline: ContinuousClock.Instant?
        var nextSweep: ContinuousClock.Instant = .now
    }

    /// Serves on the calling thread until ``stop()`` (or, for a lingering sharer, until idle, or for a
    /// broker, until a successor has taken everything over).
    func run() {
        var loop = LoopState()
        logger.info("serving", metadata: ["endpoint": "\(configuration.endpoint)", "mechanism": "\(configuration.mechanism)"])
        while !step(&loop) {}
        shutDown(loop)
    }

    /// One round of the loop; returns true when the holder should stop.
    private func step(_ loop: inout LoopState) -> Bool {
        let now = ContinuousClock.now
        let idle = loop.connections.isEmpty
        let snapshot = state.withLock { state -> (stop: Bool, deadline: ContinuousClock.Instant?, held: Bool) in
            if !state.stopping, let linger = configuration.lingerWhenIdle, state.entries.isEmpty, idle,
               let since = state.idleSince, since + linger <= now {
                state.stopping = true
            }
            var deadline = state.deadlines.earliest
            if let linger = configuration.lingerWhenIdle, let since = state.idleSince {
                deadline = min(deadline ?? since + linger, since + linger)
            }
            return (state.stopping || state.handedOver, deadline, !state.entries.isEmpty)
        }
        if snapshot.stop { return true }
        if let successor = loop.successor, handOverIfReady(to: successor, &loop) { return true }

        var deadline = snapshot.deadline
        for connection in loop.connections.values { deadline = min(deadline ?? connection.deadline, connection.deadline) }
        if snapshot.held { deadline = min(deadline ?? loop.nextSweep, loop.nextSweep) }
        if let handover = loop.handoverDeadline { deadline = min(deadline ?? handover, handover) }

        let accepting = loop.successor == nil
        var fds = [
            pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0),
            pollfd(fd: listener.rawValue, events: accepting ? Int16(POLLIN) : 0, revents: 0),
        ]
        let connectionFDs = Array(loop.connections.keys)
        for fd in connectionFDs { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
        guard (try? Kernel.poll(&fds, deadline: deadline)) != nil else { return true }

        if fds[0].revents != 0 { drainWakePipe() }
        if accepting && fds[1].revents != 0 { acceptConnections(&loop) }
        for (index, fd) in connectionFDs.enumerated() where fds[2 + index].revents != 0 {
            guard let connection = loop.connections[fd] else { continue }
            if !serve(connection, &loop) { drop(connection, &loop) }
        }
        let after = ContinuousClock.now
        let expired = state.withLock { state in
            var expired: [UInt64] = []
            for id in state.deadlines.popDue(after) {
                guard let entry = state.entries[id], entry.deadline <= after else { continue }
                if entry.offeredTo == nil {
                    expired.append(id)
                } else {
                    // Handed out: its claimant has until the acknowledge timeout; look again then.
                    state.deadlines.insert(after + configuration.acknowledgeTimeout, id: id)
                }
            }
            return expired
        }
        for id in expired { finish(id, .expired) }
        for connection in loop.connections.values where connection.deadline <= after && connection !== loop.successor {
            drop(connection, &loop)
        }
        if snapshot.held && after >= loop.nextSweep {
            sweepTargets()
            loop.nextSweep = after + configuration.targetSweepInterval
        }
        return false
    }

    /// Ends the shares whose targets have exited: nobody can ever claim them.
    private func sweepTargets() {
        let targets = state.withLock { state in Set(state.entries.values.map(\.target)) }
        let gone = targets.filter { !$0.isRunning }
        guard !gone.isEmpty else { return }
        let ids = state.withLock { state in state.entries.values.filter { gone.contains($0.target) }.map(\.id) }
        for id in ids { finish(id, .targetExited) }
    }

    private func shutDown(_ loop: LoopState) {
        for connection in loop.connections.values { try? connection.channel.close() }
        let (ids, handedOver) = state.withLock { state in
            state.stopping = true
            return (Array(state.entries.keys), state.handedOver)
        }
        for id in ids { finish(id, .holderStopped) }
        try? listener.close()
        if handedOver {
            logger.info("handed everything to the successor; exiting without removing \(configuration.endpoint)")
        } else {
            if !ids.isEmpty {
                logger.notice("stopping: closed \(ids.count) held shares; their tokens can no longer be claimed")
            }
            Kernel.unlink(configuration.endpoint)
        }
        state.withLock { $0.stopped = true }
    }

    private func drainWakePipe() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while Glibc.read(wakeRead, &buffer, buffer.count) > 0 {}
    }

    private func acceptConnections(_ loop: inout LoopState) {
        // Bounded per round so one flood cannot starve the connections already here.
        for _ in 0..<64 {
            guard let accepted = try? listener.accept() else { return }
            guard loop.connections.count < configuration.maximumConnections else {
                logger.warning("connection limit reached; closing a new connection", metadata: ["limit": "\(configuration.maximumConnections)"])
                try? accepted.close()
                continue
            }
            guard let peer = try? PeerProcess(of: accepted.rawValue) else {
                try? accepted.close()
                continue
            }
            let connection = Connection(
                channel: DescriptorChannel(accepted), peer: peer, deadline: .now + configuration.requestTimeout)
            loop.connections[accepted.rawValue] = connection
            // A claimant sends its request right after connecting: serve it now rather than after
            // another trip through poll.
            if !serve(connection, &loop) { drop(connection, &loop) }
        }
    }

    /// Releases a connection; a share handed to it but not acknowledged becomes claimable again.
    func drop(_ connection: Connection, _ loop: inout LoopState) {
        if let offered = connection.offered {
            state.withLock { state in
                if let entry = state.entries[offered], entry.offeredTo == ObjectIdentifier(connection) {
                    state.entries[offered]?.offeredTo = nil
                    state.deadlines.insert(entry.deadline, id: offered)
                }
            }
            logger.info("claimant left before acknowledging; the share is claimable again", metadata: ["share": "\(offered)"])
        }
        if loop.successor === connection {
            loop.successor = nil
            loop.handoverDeadline = nil
            logger.warning("the successor broker went away; serving on")
        }
        loop.connections.removeValue(forKey: connection.channel.socket.rawValue)
        try? connection.channel.close()
    }

    /// Reads and answers one message. Returns false when the connection should be dropped.
    private func serve(_ connection: Connection, _ loop: inout LoopState) -> Bool {
        let message: ChannelMessage?
        do throws(SocketShareError) {
            message = try connection.channel.receive(maximumBytes: EscrowMessage.maximumRequestLength, deadline: .now)
        } catch {
            if error.code == .timedOut { return true }
            if error.code == .protocolViolation {
                reply(connection, .failure(.malformed, "message longer than \(EscrowMessage.maximumRequestLength) bytes"))
            }
            return false
        }
        guard let message else { return false }
        connection.deadline = .now + configuration.requestTimeout
        let descriptors = message.takeDescriptors()
        let answer = respond(to: message.bytes, descriptors: descriptors, from: connection, &loop)
        for descriptor in descriptors { try? descriptor.close() }
        switch answer {
        case .reply(let reply):
            return self.reply(connection, reply)
        case .replyAndClose(let reply):
            _ = self.reply(connection, reply)
            return false
        case .handedOut:
            connection.deadline = .now + configuration.acknowledgeTimeout
            return true
        case .silent:
            return true
        }
    }

    @discardableResult
    func reply(_ connection: Connection, _ message: EscrowMessage, descriptors: [CInt] = []) -> Bool {
        if case .failure(let code, _) = message { metrics.refused(code) }
        return (try? connection.channel.send(message.bytes, descriptors: descriptors, deadline: .now)) != nil
    }
}
