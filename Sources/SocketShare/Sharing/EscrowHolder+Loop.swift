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

    /// Serves claims on the calling thread until ``stop()`` (or, for a lingering sharer, until idle).
    func run() {
        var connections: [CInt: Connection] = [:]
        while true {
            let now = ContinuousClock.now
            let snapshot = state.withLock { state -> (stop: Bool, watches: [(UInt64, CInt)], deadline: ContinuousClock.Instant?) in
                if !state.stopping, let linger = configuration.lingerWhenIdle, state.entries.isEmpty,
                   connections.isEmpty, let idle = state.idleSince, idle + linger <= now {
                    state.stopping = true
                }
                var deadline: ContinuousClock.Instant? = nil
                func consider(_ instant: ContinuousClock.Instant) { deadline = min(deadline ?? instant, instant) }
                for entry in state.entries.values where entry.offeredTo == nil { consider(entry.deadline) }
                if let linger = configuration.lingerWhenIdle, let idle = state.idleSince { consider(idle + linger) }
                let watches = state.entries.values.map { ($0.id, $0.targetWatch.rawValue) }
                return (state.stopping, watches, deadline)
            }
            if snapshot.stop { break }
            var deadline = snapshot.deadline
            for connection in connections.values { deadline = min(deadline ?? connection.deadline, connection.deadline) }

            var fds = [
                pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0),
                pollfd(fd: listener.rawValue, events: Int16(POLLIN), revents: 0),
            ]
            let connectionFDs = Array(connections.keys)
            for fd in connectionFDs { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            for (_, watch) in snapshot.watches { fds.append(pollfd(fd: watch, events: Int16(POLLIN), revents: 0)) }
            guard (try? Kernel.poll(&fds, deadline: deadline)) != nil else { break }

            if fds[0].revents != 0 { drainWakePipe() }
            if fds[1].revents != 0 { acceptConnections(into: &connections) }
            for (index, fd) in connectionFDs.enumerated() where fds[2 + index].revents != 0 {
                guard let connection = connections[fd] else { continue }
                if !serve(connection) { drop(connection, from: &connections) }
            }
            for (index, (id, _)) in snapshot.watches.enumerated() where fds[2 + connectionFDs.count + index].revents != 0 {
                finish(id, .targetExited)
            }
            let after = ContinuousClock.now
            let expired = state.withLock { state in
                state.entries.values.filter { $0.offeredTo == nil && $0.deadline <= after }.map(\.id)
            }
            for id in expired { finish(id, .expired) }
            for connection in connections.values where connection.deadline <= after {
                drop(connection, from: &connections)
            }
        }
        shutDown(connections: connections)
    }

    private func shutDown(connections: [CInt: Connection]) {
        for connection in connections.values { try? connection.channel.close() }
        let ids = state.withLock { state in
            state.stopping = true
            return Array(state.entries.keys)
        }
        for id in ids { finish(id, .holderStopped) }
        try? listener.close()
        Kernel.unlink(configuration.endpoint)
        state.withLock { $0.stopped = true }
    }

    private func drainWakePipe() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while Glibc.read(wakeRead, &buffer, buffer.count) > 0 {}
    }

    private func acceptConnections(into connections: inout [CInt: Connection]) {
        // Bounded per round so one flood cannot starve the connections already here.
        for _ in 0..<64 {
            guard let accepted = try? listener.accept() else { return }
            guard connections.count < configuration.maximumConnections else {
                try? accepted.close()
                continue
            }
            guard let peer = try? PeerProcess(of: accepted.rawValue) else {
                try? accepted.close()
                continue
            }
            let connection = Connection(
                channel: DescriptorChannel(accepted), peer: peer, deadline: .now + configuration.requestTimeout)
            connections[accepted.rawValue] = connection
            // A claimant sends its request right after connecting: serve it now rather than after
            // another trip through poll.
            if !serve(connection) { drop(connection, from: &connections) }
        }
    }

    /// Releases a connection; a share handed to it but not acknowledged becomes claimable again.
    private func drop(_ connection: Connection, from connections: inout [CInt: Connection]) {
        if let offered = connection.offered {
            state.withLock { state in
                if state.entries[offered]?.offeredTo == ObjectIdentifier(connection) {
                    state.entries[offered]?.offeredTo = nil
                }
            }
        }
        connections.removeValue(forKey: connection.channel.socket.rawValue)
        try? connection.channel.close()
    }

    /// Reads and answers one message. Returns false when the connection should be dropped.
    private func serve(_ connection: Connection) -> Bool {
        let message: ChannelMessage?
        do throws(SocketShareError) {
            message = try connection.channel.receive(maximumBytes: EscrowMessage.maximumLength, deadline: .now)
        } catch {
            if error.code == .timedOut { return true }
            if error.code == .protocolViolation {
                reply(connection, .failure(.malformed, "message longer than \(EscrowMessage.maximumLength) bytes"))
            }
            return false
        }
        guard let message else { return false }
        connection.deadline = .now + configuration.requestTimeout
        let answer = respond(to: message, from: connection)
        message.closeDescriptors()
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
        (try? connection.channel.send(message.bytes, descriptors: descriptors, deadline: .now)) != nil
    }
}
