import Glibc
import Logging
import SocketShare
import SocketShareCore

extension Dispatcher {
    /// A connection accepted and not yet acknowledged by any worker.
    package struct Pending {
        package let id: UInt64
        package let socket: SocketDescriptor
        package let listener: Int
        package let peer: String
        package let local: String
    }

    /// A worker, as the loop tracks it.
    package final class Worker {
        package let pid: pid_t
        package let generation: Int
        package let channel: DescriptorChannel
        /// A pidfd: readable once the process has exited.
        package let process: ProcessDescriptor?
        package var unacknowledged: [UInt64: Pending] = [:]
        /// When each connection was sent, oldest first (ids acknowledged since are skipped when they
        /// come up): the stall check needs only the oldest.
        package var sent: [(id: UInt64, at: ContinuousClock.Instant)] = []
        package var sentHead = 0
        package var stallTimer: Reactor.Timer?
        package var reportedActive = 0
        package var handled = 0
        package var isReady = false
        package var isRetired = false
        package var isStalled = false
        /// Whether connections go to it (a reload's new generation waits to be promoted).
        package var isAccepting: Bool
        /// The worker's doorbell (``WorkerMessage/doorbell``): one byte is written to it after each
        /// message sent to the worker.
        package var doorbell: SocketDescriptor?
        package var channelWatch: Reactor.Watch?
        package var processWatch: Reactor.Watch?

        package init(pid: pid_t, generation: Int, channel: DescriptorChannel, accepting: Bool) {
            self.pid = pid
            self.generation = generation
            self.channel = channel
            self.isAccepting = accepting
            self.process = try? ProcessDescriptor(pid: pid)
        }

        package var inFlight: Int { unacknowledged.count + reportedActive }
        package var isEligible: Bool { isAccepting && !isRetired && !isStalled }

        /// When the oldest unacknowledged connection was sent.
        package func oldestSent() -> ContinuousClock.Instant? {
            while sentHead < sent.count, unacknowledged[sent[sentHead].id] == nil { sentHead += 1 }
            if sentHead > 64 && sentHead * 2 > sent.count {
                sent.removeFirst(sentHead)
                sentHead = 0
            }
            return sentHead < sent.count ? sent[sentHead].at : nil
        }
    }

    /// The dispatcher's state and work, on its reactor's thread only.
    package final class Core: @unchecked Sendable {
        package let reactor: Reactor
        package let listeners: [Listener]
        package let configuration: Configuration
        package var logger: Logger { configuration.logger }

        private var workers: [Worker] = []
        private var waiting: [Pending] = []
        private var nextID: UInt64 = 1
        private var nextWorker = 0
        private var accepted = 0
        private var redispatched = 0
        private var paused = false
        private var frozen = false
        private var stopDeadline: ContinuousClock.Instant?
        private var onStopped: (() -> Void)?
        /// Called once nothing is waiting and every connection sent is acknowledged.
        private var onSettled: [@Sendable () -> Void] = []
        private var listenerWatches: [Reactor.Watch] = []
        /// Whether the listeners are watched for readability (there is room for their connections).
        private var listening = false
        /// Local addresses of listeners bound to a specific address (accepted sockets share them).
        private var localAddresses: [String?] = []

        package init(reactor: Reactor, listeners: [Listener], configuration: Configuration) {
            self.reactor = reactor
            self.listeners = listeners
            self.configuration = configuration
        }

        /// Starts watching the listeners (with nothing to send to yet, they are not read).
        package func begin() {
            localAddresses = listeners.map { listener in
                guard let address = try? listener.socket.socketDescription().localAddress else { return nil }
                switch address {
                case .ipv4(let host, _) where host == "0.0.0.0": return nil
                case .ipv6(let host, _, _) where host == "::": return nil
                default: return "\(address)"
                }
            }
            for index in listeners.indices {
                do {
                    listenerWatches.append(try reactor.watch(listeners[index].socket.rawValue, readable: false) { [unowned self] _ in
                        acceptAll(index, limit: configuration.acceptBatch)
                    })
                } catch {
                    logger.error("cannot watch listener \(listeners[index].name): \(error)")
                }
            }
        }

        // MARK: Commands

        package func add(_ channel: DescriptorChannel, pid: pid_t, generation: Int, accepting: Bool, doorbell: SocketDescriptor?) {
            let worker = Worker(pid: pid, generation: generation, channel: channel, accepting: accepting)
            worker.doorbell = doorbell
            workers.append(worker)
            logger.debug("worker added", metadata: ["pid": "\(pid)", "generation": "\(generation)"])
            if !frozen { watchChannel(worker) }
            if let process = worker.process {
                worker.processWatch = try? reactor.watch(process.rawValue) { [unowned self, unowned worker] _ in
                    remove(worker, reason: "exited")
                }
            }
            dispatchWaiting()
            updateListening()
        }

        package func promote(generation: Int) {
            for worker in workers {
                if worker.generation == generation {
                    worker.isAccepting = true
                } else if !worker.isRetired {
                    retire(worker)
                }
            }
            dispatchWaiting()
            updateListening()
        }

        package func retire(pid: pid_t) {
            for worker in workers where worker.pid == pid && !worker.isRetired { retire(worker) }
            updateListening()
        }

        package func setPaused(_ paused: Bool) {
            self.paused = paused
            updateListening()
        }

        /// Frozen: the workers' channels are not read at all (a successor supervisor takes them).
        package func setFrozen(_ frozen: Bool) {
            guard frozen != self.frozen else { return }
            self.frozen = frozen
            for worker in workers {
                if frozen {
                    if let watch = worker.channelWatch { reactor.unwatch(watch) }
                    worker.channelWatch = nil
                } else {
                    watchChannel(worker)
                }
            }
            updateListening()
        }

        /// Calls `settled` once nothing waits and every connection sent is acknowledged (at once if so).
        package func whenSettled(_ settled: @escaping @Sendable () -> Void) {
            onSettled.append(settled)
            reportSettled()
        }

        private func reportSettled() {
            guard !onSettled.isEmpty, isSettled else { return }
            let settled = onSettled
            onSettled.removeAll()
            for callback in settled { callback() }
        }

        /// Accepts what waits in the backlogs, hands it out, and calls `done` once every connection
        /// is acknowledged or at `deadline`, after telling the workers to stop.
        package func stop(deadline: ContinuousClock.Instant, _ done: @escaping () -> Void) {
            stopDeadline = deadline
            onStopped = done
            // Take whatever already waits in the backlogs: closing a listener later would reset it.
            for index in listeners.indices { acceptAll(index, limit: Int.max) }
            updateListening()
            reactor.schedule(at: deadline) { [unowned self] in finishStopping(force: true) }
            finishStopping(force: false)
        }

        private func finishStopping(force: Bool) {
            guard let done = onStopped, force || isSettled else { return }
            onStopped = nil
            for worker in workers {
                try? worker.channel.send(WorkerMessage.stop.bytes, deadline: .now + .milliseconds(100))
                ring(worker)
            }
            logger.info("dispatcher stopped", metadata: ["unsettled": "\(waiting.count)"])
            done()
        }

        // MARK: Snapshots

        package var isSettled: Bool { waiting.isEmpty && workers.allSatisfy { $0.unacknowledged.isEmpty } }

        package var statistics: Statistics {
            Statistics(
                accepted: accepted, redispatched: redispatched, waiting: waiting.count,
                workers: workers.map { worker in
                    WorkerStatistics(
                        pid: worker.pid, generation: worker.generation, handled: worker.handled, inFlight: worker.inFlight,
                        unacknowledged: worker.unacknowledged.count, isReady: worker.isReady, isAccepting: worker.isEligible)
                })
        }

        package var channels: [WorkerChannelState] {
            workers.map {
                WorkerChannelState(pid: $0.pid, generation: $0.generation, accepting: $0.isAccepting, channel: $0.channel, doorbell: $0.doorbell)
            }
        }

        package func snapshot() -> (statistics: Statistics, settled: Bool, channels: [WorkerChannelState]) {
            (statistics, isSettled, channels)
        }

        // MARK: Connections

        /// Watches the listeners only while some worker has room (or a stop takes the backlog).
        private func updateListening() {
            let wanted = stopDeadline == nil && !paused && !frozen
                && workers.contains { $0.isEligible && $0.inFlight < configuration.maximumInFlightPerWorker }
            guard wanted != listening else { return }
            listening = wanted
            for watch in listenerWatches { reactor.setReadable(watch, wanted) }
        }

        /// Accepts up to `limit` connections from listener `index`, while some worker has room (or
        /// unconditionally when stopping).
        private func acceptAll(_ index: Int, limit: Int) {
            var room = workers.reduce(0) { total, worker in
                total + (worker.isEligible ? max(0, configuration.maximumInFlightPerWorker - worker.inFlight) : 0)
            } - waiting.count
            var taken = 0
            while taken < limit, stopDeadline != nil || room > 0 {
                guard let (fd, peer) = (try? Kernel.acceptWithPeer(listeners[index].socket.rawValue)) ?? nil else { break }
                let local = localAddresses[index] ?? ((try? Kernel.localAddress(fd)).map { "\($0)" } ?? "")
                waiting.append(Pending(
                    id: nextID, socket: SocketDescriptor(taking: fd), listener: index, peer: peer?.text ?? "", local: local))
                nextID += 1
                accepted += 1
                taken += 1
                room -= 1
            }
            if taken > 0 {
                FaultPoint.reached("dispatch.afterAccept")
                dispatchWaiting()
            }
            updateListening()
        }

        /// Sends waiting connections to workers with room, batched per worker.
        private func dispatchWaiting() {
            guard !waiting.isEmpty, !frozen else { return }
            var batches: [ObjectIdentifier: (Worker, [Pending])] = [:]
            var left: [Pending] = []
            for pending in waiting {
                guard let worker = choose(extra: batches) else {
                    left.append(pending)
                    continue
                }
                batches[ObjectIdentifier(worker), default: (worker, [])].1.append(pending)
            }
            waiting = left
            for (worker, batch) in batches.values {
                var start = 0
                while start < batch.count {
                    let slice = batch[start..<min(start + WorkerMessage.maximumBatch, batch.count)]
                    let message = WorkerMessage.connections(slice.map {
                        HandedConnection(id: $0.id, listenerName: listeners[$0.listener].name, peerAddress: $0.peer, localAddress: $0.local)
                    })
                    do throws(SocketShareError) {
                        try worker.channel.send(message.bytes, descriptors: slice.map(\.socket.rawValue), deadline: .now)
                        ring(worker)
                        FaultPoint.reached("dispatch.afterSend")
                        let now = ContinuousClock.now
                        for pending in slice {
                            worker.unacknowledged[pending.id] = pending
                            worker.sent.append((pending.id, now))
                        }
                        scheduleStallCheck(worker)
                    } catch {
                        // The worker's queue is full, or it is gone: keep these for the next round.
                        waiting.append(contentsOf: batch[start...])
                        break
                    }
                    start += slice.count
                }
            }
        }

        /// The worker for the next connection, counting connections already batched for each.
        private func choose(extra: [ObjectIdentifier: (Worker, [Pending])]) -> Worker? {
            let limit = configuration.maximumInFlightPerWorker
            func load(_ worker: Worker) -> Int { worker.inFlight + (extra[ObjectIdentifier(worker)]?.1.count ?? 0) }
            switch configuration.policy {
            case .leastLoaded:
                var best: Worker? = nil
                var bestLoad = Int.max
                for worker in workers where worker.isEligible {
                    let current = load(worker)
                    if current < limit && current < bestLoad {
                        best = worker
                        bestLoad = current
                    }
                }
                return best
            case .roundRobin:
                for offset in 0..<workers.count {
                    let worker = workers[(nextWorker + offset) % workers.count]
                    if worker.isEligible && load(worker) < limit {
                        nextWorker = (nextWorker + offset + 1) % workers.count
                        return worker
                    }
                }
                return nil
            }
        }

        // MARK: Workers

        private func watchChannel(_ worker: Worker) {
            guard worker.channelWatch == nil else { return }
            worker.channelWatch = try? reactor.watch(worker.channel.socket.rawValue) { [unowned self, unowned worker] _ in
                if !readMessages(from: worker) { remove(worker, reason: "closed its channel") }
            }
        }

        /// Reads every message the worker has sent. Returns false when the worker is gone.
        private func readMessages(from worker: Worker) -> Bool {
            defer {
                dispatchWaiting()
                updateListening()
                finishStopping(force: false)
                reportSettled()
            }
            while true {
                let message: ChannelMessage
                switch try? worker.channel.receiveWaiting(maximumBytes: WorkerMessage.maximumLength) {
                case .message(let received)?: message = received
                case .none?: return true
                case .closed?, nil: return false
                }
                guard let decoded = try? WorkerMessage(bytes: message.bytes) else {
                    message.closeDescriptors()
                    logger.warning("worker sent a message that is not the worker protocol", metadata: ["pid": "\(worker.pid)"])
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
                    waiting.insert(contentsOf: refused, at: 0)
                    redispatched += refused.count
                    if !refused.isEmpty {
                        logger.info("worker refused connections; sending them elsewhere", metadata: [
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
                        logger.warning("worker sent a doorbell message without a socket", metadata: ["pid": "\(worker.pid)"])
                        return false
                    }
                case .leaving:
                    if !worker.isRetired {
                        logger.info("worker is leaving", metadata: ["pid": "\(worker.pid)"])
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
        private func remove(_ worker: Worker, reason: String) {
            guard workers.contains(where: { $0 === worker }) else { return }
            workers.removeAll { $0 === worker }
            if let watch = worker.channelWatch { reactor.unwatch(watch) }
            if let watch = worker.processWatch { reactor.unwatch(watch) }
            if let timer = worker.stallTimer { reactor.cancel(timer) }
            let orphans = worker.unacknowledged.values.sorted { $0.id < $1.id }
            worker.unacknowledged.removeAll()
            waiting.insert(contentsOf: orphans, at: 0)
            redispatched += orphans.count
            try? worker.channel.close()
            try? worker.doorbell?.close()
            logger.notice("worker \(reason)", metadata: ["pid": "\(worker.pid)", "redispatched": "\(orphans.count)"])
            dispatchWaiting()
            updateListening()
            finishStopping(force: false)
            reportSettled()
        }

        /// Checks the worker at its oldest connection's stall deadline; a worker that left one
        /// unacknowledged that long is reported and takes no more.
        private func scheduleStallCheck(_ worker: Worker) {
            guard worker.stallTimer == nil, !worker.isStalled, let oldest = worker.oldestSent() else { return }
            worker.stallTimer = reactor.schedule(at: oldest + configuration.stallTimeout) { [unowned self, weak worker] in
                guard let worker else { return }
                worker.stallTimer = nil
                guard !worker.isStalled, let oldest = worker.oldestSent() else { return }
                guard ContinuousClock.now - oldest >= configuration.stallTimeout else {
                    scheduleStallCheck(worker)
                    return
                }
                worker.isStalled = true
                logger.warning("worker stalled: connections unacknowledged", metadata: [
                    "pid": "\(worker.pid)", "waiting": "\(worker.unacknowledged.count)",
                ])
                configuration.onStall?(worker.pid)
                updateListening()
            }
        }
    }
}
