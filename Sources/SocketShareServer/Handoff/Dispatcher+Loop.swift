import Glibc
import Logging
import SocketShare
import SocketShareCore

extension Dispatcher {
    /// A connection accepted and not yet acknowledged by any worker.
    package struct Pending {
        package let socket: SocketDescriptor
        package let listener: Int
        package let peer: String
        package let local: String
    }

    /// A worker's I/O, as the loop holds it (its bookkeeping is the ``WorkerPool``'s).
    package final class Worker {
        package let pid: pid_t
        package let generation: Int
        package let channel: DescriptorChannel
        /// A pidfd: readable once the process has exited.
        package let process: ProcessDescriptor?
        package var stallTimer: Reactor.Timer?
        /// The worker's doorbell (``WorkerMessage/doorbell``): one byte is written to it after each
        /// message sent to the worker.
        package var doorbell: SocketDescriptor?
        package var channelWatch: Reactor.Watch?
        package var processWatch: Reactor.Watch?

        package init(pid: pid_t, generation: Int, channel: DescriptorChannel) {
            self.pid = pid
            self.generation = generation
            self.channel = channel
            // External workers have no pid here (`WorkerPool.externalGeneration`): their channel
            // closing is how they are known to be gone.
            self.process = pid > 0 ? try? ProcessDescriptor(pid: pid) : nil
        }
    }

    /// The dispatcher's state and work, on its reactor's thread only.
    package final class Core: @unchecked Sendable {
        package let reactor: Reactor
        package let listeners: [Listener]
        package let configuration: Configuration
        package var logger: Logger { configuration.logger }

        /// The decisions: which worker, how many in flight, what goes back to the queue.
        private var pool: WorkerPool<Pending>
        /// The workers' I/O, by pid.
        private var workers: [pid_t: Worker] = [:]
        private var paused = false
        private var frozen = false
        private var stopDeadline: ContinuousClock.Instant?
        private var onStopped: (() -> Void)?
        /// Called once nothing is waiting and every connection sent is acknowledged.
        private var onSettled: [@Sendable () -> Void] = []
        private var listenerWatches: [Reactor.Watch] = []
        /// Set while the listeners rest after `accept` ran out of descriptors.
        private var outOfDescriptors: Reactor.Timer?
        /// Whether the listeners are watched for readability (there is room for their connections).
        private var listening = false
        /// Local addresses of listeners bound to a specific address (accepted sockets share them).
        private var localAddresses: [String?] = []

        package init(reactor: Reactor, listeners: [Listener], configuration: Configuration) {
            self.reactor = reactor
            self.listeners = listeners
            self.configuration = configuration
            // A worker that leaves a connection unacknowledged for a tenth of the stall timeout gets no
            // new ones until it acknowledges: a client waits at most one stall timeout.
            pool = WorkerPool(
                policy: configuration.policy, limit: configuration.maximumInFlightPerWorker,
                suspectAfter: configuration.stallTimeout / 10)
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

        package func add(
            _ channel: DescriptorChannel, pid: pid_t, generation: Int, accepting: Bool, doorbell: SocketDescriptor?,
            probationGroup: UInt32?
        ) {
            let worker = Worker(pid: pid, generation: generation, channel: channel)
            worker.doorbell = doorbell
            workers[pid] = worker
            // External workers are on probation until they acknowledge a connection (WorkerPool.add).
            pool.add(
                pid: pid, generation: generation, accepting: accepting,
                probationGroup: generation == WorkerPool<Pending>.externalGeneration ? probationGroup : nil)
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
            for pid in pool.promote(generation: generation) { sendStop(pid) }
            dispatchWaiting()
            updateListening()
        }

        package func retire(pid: pid_t) {
            if pool.retire(pid) { sendStop(pid) }
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
            for worker in workers.values {
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
            for worker in workers.values {
                try? worker.channel.send(WorkerMessage.stop.bytes, deadline: .now + .milliseconds(100))
                ring(worker)
            }
            logger.info("dispatcher stopped", metadata: ["unsettled": "\(pool.waiting.count)"])
            done()
        }

        // MARK: Snapshots

        package var isSettled: Bool { pool.isSettled }

        package var statistics: Statistics {
            Statistics(
                accepted: pool.accepted, redispatched: pool.redispatched, waiting: pool.waiting.count,
                workers: pool.members.map { member in
                    WorkerStatistics(
                        pid: member.pid, generation: member.generation, handled: member.handled, inFlight: member.inFlight,
                        unacknowledged: member.unacknowledged.count, isReady: member.isReady, isAccepting: member.isEligible)
                })
        }

        package var channels: [WorkerChannelState] {
            pool.members.compactMap { member in
                workers[member.pid].map {
                    WorkerChannelState(
                        pid: member.pid, generation: member.generation, accepting: member.isAccepting, channel: $0.channel,
                        doorbell: $0.doorbell)
                }
            }
        }

        package func snapshot() -> (statistics: Statistics, settled: Bool, channels: [WorkerChannelState]) {
            (statistics, isSettled, channels)
        }

        // MARK: Connections

        /// Watches the listeners only while some worker has room (or a stop takes the backlog).
        private func updateListening() {
            let wanted = stopDeadline == nil && !paused && !frozen && outOfDescriptors == nil && pool.hasRoom()
            guard wanted != listening else { return }
            listening = wanted
            for watch in listenerWatches { reactor.setReadable(watch, wanted) }
        }

        /// Accepts up to `limit` connections from listener `index`, while some worker has room (or
        /// unconditionally when stopping).
        private func acceptAll(_ index: Int, limit: Int) {
            var room = pool.room()
            var taken = 0
            while taken < limit, stopDeadline != nil || room > 0 {
                let accepted: (CInt, SocketAddress?)?
                do throws(SocketShareError) {
                    accepted = try Kernel.acceptWithPeer(listeners[index].socket.rawValue)
                } catch where error.code == .limitReached {
                    // EMFILE/ENFILE: the listener stays readable, so watching it now would spin.
                    // Connections wait in the backlog; look again in a moment.
                    pauseForDescriptors(error)
                    break
                } catch {
                    break
                }
                guard let (fd, peer) = accepted else { break }
                let local = localAddresses[index] ?? ((try? Kernel.localAddress(fd)).map { "\($0)" } ?? "")
                pool.enqueue(Pending(socket: SocketDescriptor(taking: fd), listener: index, peer: peer?.text ?? "", local: local))
                taken += 1
                room -= 1
            }
            if taken > 0 {
                FaultPoint.reached("dispatch.afterAccept")
                dispatchWaiting()
            }
            updateListening()
        }

        /// Out of descriptors: stops watching the listeners for ``descriptorPause``, then tries again.
        private func pauseForDescriptors(_ error: SocketShareError) {
            guard outOfDescriptors == nil else { return }
            outOfDescriptors = reactor.schedule(at: .now + Self.descriptorPause) { [unowned self] in
                outOfDescriptors = nil
                updateListening()
            }
            logger.warning("out of descriptors: accepting again in \(Self.descriptorPause)", metadata: ["error": "\(error)"])
            updateListening()
        }

        /// How long the listeners rest after `accept` ran out of descriptors.
        static let descriptorPause: Duration = .milliseconds(100)

        /// Sends waiting connections to workers with room, batched per worker.
        private func dispatchWaiting() {
            guard !frozen else { return }
            for (pid, batch) in pool.assign() {
                guard let worker = workers[pid] else {
                    pool.unsent(batch)
                    continue
                }
                var start = 0
                while start < batch.count {
                    let slice = batch[start..<min(start + WorkerMessage.maximumBatch, batch.count)]
                    let message = WorkerMessage.connections(slice.map {
                        HandedConnection(
                            id: $0.id, listenerName: listeners[$0.connection.listener].name, peerAddress: $0.connection.peer,
                            localAddress: $0.connection.local)
                    })
                    do throws(SocketShareError) {
                        try worker.channel.send(message.bytes, descriptors: slice.map(\.connection.socket.rawValue), deadline: .now)
                        ring(worker)
                        FaultPoint.reached("dispatch.afterSend")
                        pool.sent(slice, to: pid, at: .now)
                        logger.trace("sent connections", metadata: ["pid": "\(pid)", "count": "\(slice.count)", "ids": "\(slice.map(\.id))"])
                        scheduleStallCheck(worker)
                    } catch {
                        // The worker's queue is full, or it is gone: keep these for the next round.
                        pool.unsent(batch[start...])
                        break
                    }
                    start += slice.count
                }
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
                    for pending in pool.acknowledge(ids, by: worker.pid, active: Int(active)) { try? pending.socket.close() }
                case .refused(let ids) where pool.isOnProbation(worker.pid):
                    // A worker on probation that refuses may have read the requests first: it fails
                    // its probation, as a stalled one does, and what it was sent goes to proven workers.
                    _ = pool.refuse(ids, by: worker.pid)
                    failProbation(worker, reason: "refused the connection it was sent on probation")
                    return true
                case .refused(let ids):
                    let refused = pool.refuse(ids, by: worker.pid)
                    if refused > 0 {
                        logger.info("worker refused connections; sending them elsewhere", metadata: [
                            "pid": "\(worker.pid)", "count": "\(refused)",
                        ])
                    }
                case .load(let active):
                    pool.report(Int(active), by: worker.pid)
                case .ready:
                    pool.ready(worker.pid)
                    configuration.onReady?(worker.pid)
                case .doorbell:
                    guard worker.doorbell != nil else {
                        logger.warning("worker sent a doorbell message without a socket", metadata: ["pid": "\(worker.pid)"])
                        return false
                    }
                case .leaving:
                    if pool.retire(worker.pid) {
                        logger.info("worker is leaving", metadata: ["pid": "\(worker.pid)"])
                        sendStop(worker.pid)
                    }
                case .connections, .stop, .takenBack:
                    return false
                }
            }
        }

        /// Tells a retired worker to finish and exit. What it has not acknowledged stays its own
        /// until it does, or until it is gone (then it goes to others).
        private func sendStop(_ pid: pid_t) {
            guard let worker = workers[pid] else { return }
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
            guard workers[worker.pid] === worker else { return }
            workers.removeValue(forKey: worker.pid)
            if let watch = worker.channelWatch { reactor.unwatch(watch) }
            if let watch = worker.processWatch { reactor.unwatch(watch) }
            if let timer = worker.stallTimer { reactor.cancel(timer) }
            let orphans = pool.remove(worker.pid) ?? 0
            try? worker.channel.close()
            try? worker.doorbell?.close()
            logger.notice("worker \(reason)", metadata: ["pid": "\(worker.pid)", "redispatched": "\(orphans)"])
            dispatchWaiting()
            updateListening()
            finishStopping(force: false)
            reportSettled()
        }

        /// Drops an external worker that stalled, or failed its probation: it is told that what it
        /// has not acknowledged is taken back (so that, should it wake, it serves none of it), its
        /// channel is closed, those connections go to proven workers, and its uid's next probe waits.
        private func failProbation(_ worker: Worker, reason: String) {
            pool.failProbation(worker.pid, at: .now, base: configuration.stallTimeout)
            _ = try? worker.channel.send(WorkerMessage.takenBack.bytes, deadline: .now)
            ring(worker)
            remove(worker, reason: reason)
        }

        /// Checks the worker at its oldest connection's stall deadline; a worker that left one
        /// unacknowledged that long is reported and takes no more.
        private func scheduleStallCheck(_ worker: Worker) {
            guard worker.stallTimer == nil, pool.member(worker.pid)?.isStalled == false,
                  let oldest = pool.oldestSent(worker.pid) else { return }
            worker.stallTimer = reactor.schedule(at: oldest + configuration.stallTimeout) { [unowned self, weak worker] in
                guard let worker else { return }
                worker.stallTimer = nil
                guard pool.member(worker.pid)?.isStalled == false else { return }
                // Acknowledgements it sent may be waiting on the channel: read them first.
                if !frozen, !readMessages(from: worker) {
                    remove(worker, reason: "closed its channel")
                    return
                }
                guard workers[worker.pid] === worker, let oldest = pool.oldestSent(worker.pid) else { return }
                guard ContinuousClock.now - oldest >= configuration.stallTimeout else {
                    scheduleStallCheck(worker)
                    return
                }
                pool.stall(worker.pid)
                logger.warning("worker stalled: connections unacknowledged", metadata: [
                    "pid": "\(worker.pid)", "waiting": "\(pool.member(worker.pid)?.unacknowledged.count ?? 0)",
                ])
                if worker.generation == WorkerPool<Pending>.externalGeneration {
                    failProbation(worker, reason: "stalled and was disconnected")
                    return
                }
                configuration.onStall?(worker.pid)
                updateListening()
            }
        }
    }
}
