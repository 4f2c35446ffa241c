import Glibc

extension Dispatcher {
    /// A connection accepted and not yet acknowledged by any worker.
    struct Pending {
        let id: UInt64
        let socket: SocketDescriptor
        let listener: Int
        let peer: String
        let local: String
        var sentAt: ContinuousClock.Instant = .now
    }

    /// A worker, as the loop tracks it.
    final class Worker {
        let pid: pid_t
        let generation: Int
        let channel: DescriptorChannel
        /// A pidfd: readable once the process has exited.
        let process: ProcessDescriptor?
        var unacknowledged: [UInt64: Pending] = [:]
        var reportedActive = 0
        var handled = 0
        var isReady = false
        var isRetired = false
        var isStalled = false
        /// Whether connections go to it (a reload's new generation waits to be promoted).
        var isAccepting: Bool
        /// The worker's doorbell (``WorkerMessage/doorbell``): one byte is written to it after each
        /// message sent to the worker.
        var doorbell: SocketDescriptor?

        init(pid: pid_t, generation: Int, channel: DescriptorChannel, accepting: Bool) {
            self.pid = pid
            self.generation = generation
            self.channel = channel
            self.isAccepting = accepting
            self.process = try? ProcessDescriptor(pid: pid)
        }

        var inFlight: Int { unacknowledged.count + reportedActive }
        var isEligible: Bool { isAccepting && !isRetired && !isStalled }
    }

    /// The loop's own state.
    struct Loop {
        var workers: [Worker] = []
        var waiting: [Pending] = []
        var nextID: UInt64 = 1
        var nextWorker = 0
        var accepted = 0
        var redispatched = 0
        var stopDeadline: ContinuousClock.Instant?
        var lastPublished: ContinuousClock.Instant = .now - .seconds(1)
        var paused = false
        var frozen = false
        var detached = false
        /// Local addresses of listeners bound to a specific address (accepted sockets share them).
        var localAddresses: [String?] = []
    }

    func run() {
        var loop = Loop()
        loop.localAddresses = listeners.map { listener in
            guard let address = try? listener.socket.socketDescription().localAddress else { return nil }
            switch address {
            case .ipv4(let host, _) where host == "0.0.0.0": return nil
            case .ipv6(let host, _, _) where host == "::": return nil
            default: return "\(address)"
            }
        }
        while step(&loop) {}
        shared.withLock { $0.finished = true }
    }

    /// One round; returns false once stopped.
    private func step(_ loop: inout Loop) -> Bool {
        for command in shared.withLock({ state in defer { state.commands.removeAll() }; return state.commands }) {
            switch command {
            case .add(let channel, let pid, let generation, let accepting, let doorbell):
                let worker = Worker(pid: pid, generation: generation, channel: channel, accepting: accepting)
                worker.doorbell = doorbell
                loop.workers.append(worker)
                configuration.logger.debug("worker added", metadata: ["pid": "\(pid)", "generation": "\(generation)"])
            case .retire(let pid):
                for worker in loop.workers where worker.pid == pid && !worker.isRetired {
                    retire(worker)
                }
            case .promote(let generation):
                for worker in loop.workers {
                    if worker.generation == generation {
                        worker.isAccepting = true
                    } else if !worker.isRetired {
                        retire(worker)
                    }
                }
            case .pause:
                loop.paused = true
            case .freeze:
                loop.paused = true
                loop.frozen = true
            case .resume:
                loop.paused = false
                loop.frozen = false
            case .detach:
                loop.detached = true
            case .stop(let deadline):
                loop.stopDeadline = deadline
                // Take whatever already waits in the backlogs: closing a listener later would reset it.
                for index in listeners.indices { acceptAll(index, &loop, limit: Int.max) }
            }
        }
        if loop.frozen && !loop.detached {
            publish(loop)
            // Touch nothing but the command pipe until resumed or detached.
            var wake = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            _ = try? Kernel.poll(&wake, deadline: nil)
            var buffer = [UInt8](repeating: 0, count: 64)
            while Glibc.read(wakeRead, &buffer, buffer.count) > 0 {}
            return true
        }
        dispatchWaiting(&loop)
        if loop.detached {
            configuration.logger.info("dispatcher handed its workers to a successor")
            publish(loop)
            return false
        }
        if let deadline = loop.stopDeadline {
            let settled = loop.waiting.isEmpty && loop.workers.allSatisfy { $0.unacknowledged.isEmpty }
            if settled || ContinuousClock.now >= deadline {
                for worker in loop.workers {
                    try? worker.channel.send(WorkerMessage.stop.bytes, deadline: .now + .milliseconds(100))
                    ring(worker)
                }
                configuration.logger.info("dispatcher stopped", metadata: ["unsettled": "\(loop.waiting.count)"])
                publish(loop)
                return false
            }
        }
        // Counters for status are refreshed at most every 5 ms under load, at once when idle.
        if ContinuousClock.now - loop.lastPublished >= .milliseconds(5) {
            publish(loop)
            loop.lastPublished = .now
        }

        let hasRoom = loop.stopDeadline == nil && !loop.paused && loop.workers.contains { $0.isEligible && $0.inFlight < configuration.maximumInFlightPerWorker }
        var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        for listener in listeners { fds.append(pollfd(fd: listener.socket.rawValue, events: hasRoom ? Int16(POLLIN) : 0, revents: 0)) }
        for worker in loop.workers {
            fds.append(pollfd(fd: worker.channel.socket.rawValue, events: Int16(POLLIN), revents: 0))
            fds.append(pollfd(fd: worker.process?.rawValue ?? -1, events: Int16(POLLIN), revents: 0))
        }
        var deadline = loop.stopDeadline
        for worker in loop.workers where !worker.isStalled {
            if let oldest = worker.unacknowledged.values.map(\.sentAt).min() {
                deadline = min(deadline ?? oldest + configuration.stallTimeout, oldest + configuration.stallTimeout)
            }
        }
        if (try? Kernel.poll(&fds, deadline: .now)) == 0 {
            // Nothing to do right now: publish before sleeping, so status is exact when idle.
            publish(loop)
            loop.lastPublished = .now
            guard (try? Kernel.poll(&fds, deadline: deadline)) != nil else { return false }
        }

        if fds[0].revents != 0 {
            var buffer = [UInt8](repeating: 0, count: 64)
            while Glibc.read(wakeRead, &buffer, buffer.count) > 0 {}
        }
        let workers = loop.workers
        for (index, worker) in workers.enumerated() {
            let channelEvents = fds[1 + listeners.count + 2 * index].revents
            let exited = fds[2 + listeners.count + 2 * index].revents != 0
            var gone = exited
            if channelEvents != 0 && !readMessages(from: worker, &loop) { gone = true }
            if gone { remove(worker, &loop, reason: exited ? "exited" : "closed its channel") }
        }
        for index in listeners.indices where fds[1 + index].revents != 0 {
            acceptAll(index, &loop, limit: configuration.acceptBatch)
        }
        checkStalls(&loop)
        return true
    }

    /// Accepts up to `limit` connections from listener `index`, while some worker has room (or
    /// unconditionally when stopping).
    private func acceptAll(_ index: Int, _ loop: inout Loop, limit: Int) {
        var taken = 0
        while taken < limit {
            let room = loop.workers.reduce(0) { total, worker in
                total + (worker.isEligible ? max(0, configuration.maximumInFlightPerWorker - worker.inFlight) : 0)
            }
            if loop.stopDeadline == nil && room <= loop.waiting.count { break }
            guard let (fd, peer) = (try? Kernel.acceptWithPeer(listeners[index].socket.rawValue)) ?? nil else { break }
            let socket = SocketDescriptor(taking: fd)
            let local = loop.localAddresses[index] ?? ((try? Kernel.localAddress(fd)).map { "\($0)" } ?? "")
            loop.waiting.append(Pending(
                id: loop.nextID, socket: socket, listener: index, peer: peer?.text ?? "", local: local))
            loop.nextID += 1
            loop.accepted += 1
            taken += 1
        }
        if taken > 0 {
            FaultPoint.reached("dispatch.afterAccept")
            dispatchWaiting(&loop)
        }
    }

    /// Sends waiting connections to workers with room, batched per worker.
    private func dispatchWaiting(_ loop: inout Loop) {
        guard !loop.waiting.isEmpty else { return }
        var batches: [ObjectIdentifier: (Worker, [Pending])] = [:]
        var left: [Pending] = []
        for pending in loop.waiting {
            guard let worker = choose(&loop, extra: batches) else {
                left.append(pending)
                continue
            }
            batches[ObjectIdentifier(worker), default: (worker, [])].1.append(pending)
        }
        loop.waiting = left
        for (worker, batch) in batches.values {
            var start = 0
            while start < batch.count {
                let slice = Array(batch[start..<min(start + WorkerMessage.maximumBatch, batch.count)])
                let message = WorkerMessage.connections(slice.map {
                    HandedConnection(id: $0.id, listenerName: listeners[$0.listener].name, peerAddress: $0.peer, localAddress: $0.local)
                })
                do throws(SocketShareError) {
                    try worker.channel.send(message.bytes, descriptors: slice.map(\.socket.rawValue), deadline: .now)
                    ring(worker)
                    FaultPoint.reached("dispatch.afterSend")
                    let now = ContinuousClock.now
                    for var pending in slice {
                        pending.sentAt = now
                        worker.unacknowledged[pending.id] = pending
                    }
                } catch {
                    // The worker's queue is full, or it is gone: keep these for the next round.
                    loop.waiting.append(contentsOf: batch[start...])
                    break
                }
                start += slice.count
            }
        }
    }

    /// The worker for the next connection, counting connections already batched for each.
    private func choose(_ loop: inout Loop, extra: [ObjectIdentifier: (Worker, [Pending])]) -> Worker? {
        let limit = configuration.maximumInFlightPerWorker
        func load(_ worker: Worker) -> Int { worker.inFlight + (extra[ObjectIdentifier(worker)]?.1.count ?? 0) }
        switch configuration.policy {
        case .leastLoaded:
            var best: Worker? = nil
            var bestLoad = Int.max
            for worker in loop.workers where worker.isEligible {
                let current = load(worker)
                if current < limit && current < bestLoad {
                    best = worker
                    bestLoad = current
                }
            }
            return best
        case .roundRobin:
            for offset in 0..<loop.workers.count {
                let worker = loop.workers[(loop.nextWorker + offset) % loop.workers.count]
                if worker.isEligible && load(worker) < limit {
                    loop.nextWorker = (loop.nextWorker + offset + 1) % loop.workers.count
                    return worker
                }
            }
            return nil
        }
    }

    /// Reads every message the worker has sent. Returns false when the worker is gone.
    private func readMessages(from worker: Worker, _ loop: inout Loop) -> Bool {
        while true {
            let message: ChannelMessage?
            do throws(SocketShareError) {
                message = try worker.channel.receive(maximumBytes: WorkerMessage.maximumLength, deadline: .now)
            } catch {
                return error.code == .timedOut
            }
            guard let message else { return false }
            guard let decoded = try? WorkerMessage(bytes: message.bytes) else {
                message.closeDescriptors()
                configuration.logger.warning("worker sent a message that is not the worker protocol", metadata: ["pid": "\(worker.pid)"])
                return false
            }
            if decoded == .doorbell && message.descriptorCount == 1 && worker.doorbell == nil {
                worker.doorbell = message.takeDescriptors().first
                // Messages sent before the doorbell arrived were not rung for.
                ring(worker)
            }
            message.closeDescriptors()
            switch decoded {
            case .accepted(let ids, let active):
                for id in ids {
                    if let pending = worker.unacknowledged.removeValue(forKey: id) {
                        try? pending.socket.close()
                        worker.handled += 1
                    }
                }
                worker.reportedActive = Int(active)
            case .refused(let ids):
                let refused = ids.compactMap { worker.unacknowledged.removeValue(forKey: $0) }
                loop.waiting.insert(contentsOf: refused, at: 0)
                loop.redispatched += refused.count
                if !refused.isEmpty {
                    configuration.logger.info("worker refused connections; sending them elsewhere", metadata: [
                        "pid": "\(worker.pid)", "count": "\(refused.count)",
                    ])
                }
            case .load(let active):
                worker.reportedActive = Int(active)
            case .ready:
                worker.isReady = true
                configuration.onReady?(worker.pid)
            case .doorbell:
                guard worker.doorbell != nil else {
                    configuration.logger.warning("worker sent a doorbell message without a socket", metadata: ["pid": "\(worker.pid)"])
                    return false
                }
            case .leaving:
                if !worker.isRetired {
                    configuration.logger.info("worker is leaving", metadata: ["pid": "\(worker.pid)"])
                    retire(worker)
                }
            case .connections, .stop:
                return false
            }
        }
    }

    /// Sends a worker no more connections and tells it to finish and exit. What it has not
    /// acknowledged stays its own until it does, or until it is gone (then it goes to others).
    private func retire(_ worker: Worker) {
        worker.isRetired = true
        try? worker.channel.send(WorkerMessage.stop.bytes, deadline: .now + .seconds(1))
        ring(worker)
    }

    /// Writes one byte to the worker's doorbell, if it has one. A full doorbell already has bytes
    /// waiting to be read, so `EAGAIN` needs nothing more.
    private func ring(_ worker: Worker) {
        guard let doorbell = worker.doorbell else { return }
        var byte: UInt8 = 1
        _ = Glibc.send(doorbell.rawValue, &byte, 1, Kernel.dontWait | Kernel.noSignal)
    }

    /// Drops a worker that exited or closed its channel; what it had not acknowledged goes to others.
    private func remove(_ worker: Worker, _ loop: inout Loop, reason: String) {
        loop.workers.removeAll { $0 === worker }
        let orphans = Array(worker.unacknowledged.values).sorted { $0.id < $1.id }
        worker.unacknowledged.removeAll()
        loop.waiting.insert(contentsOf: orphans, at: 0)
        loop.redispatched += orphans.count
        try? worker.channel.close()
        try? worker.doorbell?.close()
        configuration.logger.notice("worker \(reason)", metadata: [
            "pid": "\(worker.pid)", "redispatched": "\(orphans.count)",
        ])
        dispatchWaiting(&loop)
    }

    /// Reports workers that left a connection unacknowledged too long; they take no more.
    private func checkStalls(_ loop: inout Loop) {
        let now = ContinuousClock.now
        for worker in loop.workers where !worker.isStalled {
            guard let oldest = worker.unacknowledged.values.map(\.sentAt).min(), now - oldest >= configuration.stallTimeout else { continue }
            worker.isStalled = true
            configuration.logger.warning("worker stalled: connections unacknowledged", metadata: [
                "pid": "\(worker.pid)", "waiting": "\(worker.unacknowledged.count)",
            ])
            configuration.onStall?(worker.pid)
        }
    }

    private func publish(_ loop: Loop) {
        let workers = loop.workers.map { worker in
            WorkerStatistics(
                pid: worker.pid, generation: worker.generation, handled: worker.handled, inFlight: worker.inFlight,
                unacknowledged: worker.unacknowledged.count, isReady: worker.isReady, isAccepting: worker.isEligible)
        }
        let channels = loop.workers.map {
            WorkerChannelState(pid: $0.pid, generation: $0.generation, accepting: $0.isAccepting, channel: $0.channel, doorbell: $0.doorbell)
        }
        let settled = loop.waiting.isEmpty && loop.workers.allSatisfy { $0.unacknowledged.isEmpty }
        shared.withLock { state in
            state.statistics = Statistics(
                accepted: loop.accepted, redispatched: loop.redispatched, waiting: loop.waiting.count, workers: workers)
            state.channels = channels
            state.settled = settled
            state.frozen = loop.frozen
        }
    }
}
