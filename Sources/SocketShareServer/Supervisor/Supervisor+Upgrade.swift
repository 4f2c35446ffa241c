import Glibc
import Logging
import SocketShare
import SocketShareCore

/// Supervisor upgrade: the running supervisor starts a new binary (with its `successorArguments`,
/// the channel at descriptor 3, `$SOCKSHARE_PREDECESSOR_FD=3`) and hands it the listeners, the
/// control and notify sockets, the worker channels and its state over a descriptor channel; the
/// workers keep running. In handoff mode the dispatcher pauses first (new connections wait in the
/// listen backlog) until every connection sent is acknowledged.
///
/// The successor says `ready` once it serves; only then does the old supervisor let go and stop
/// (without touching workers or socket paths). If the successor exits, or is not ready by the
/// deadline, it is killed and the old supervisor resumes as if nothing happened.
extension Supervisor {
    /// The message a successor sends when it serves.
    package static let successorReady = Array("ready".utf8)
    /// The environment variable that names a successor's channel to its predecessor.
    public static let predecessorVariable = "SOCKSHARE_PREDECESSOR_FD"

    func beginUpgrade(binary: String, deadline: Duration, requester: DescriptorChannel?) {
        let refusal = configuration.externalWorkers != nil
            ? "an upgrade does not yet carry the worker socket and its external workers over; restart serve instead"
            : ProcessSpawner.resolveExecutable(binary) == nil
            ? "\(binary): no such executable"
            : state.beginUpgrade(binary: binary, now: .now, deadline: deadline)?.description
        if let refusal {
            reply(requester, ok: false, reason: refusal, generation: nil)
            logger.warning("upgrade refused: \(refusal)")
            return
        }
        upgradeRequester = requester
        tellServiceManager("RELOADING=1\nMONOTONIC_USEC=\(monotonicMicroseconds)\nSTATUS=upgrading to \(binary)")
        logger.notice("upgrade: handing over to \(binary)")
        armTimer()
        if let dispatcher {
            dispatcher.pause { [reactor] in reactor.execute { [self] in continueUpgrade() } }
        } else {
            continueUpgrade()
        }
    }

    /// Once the dispatcher has settled (every connection sent was acknowledged), starts the
    /// successor and hands everything over.
    private func continueUpgrade() {
        guard let upgrade = state.upgrade, upgrade.successor == nil else { return }
        // From here on the worker channels are the successor's to read: this dispatcher lets go.
        dispatcher?.freeze()
        watchSharedSockets(false)
        do throws(SocketShareError) {
            let (mine, theirs) = try SocketDescriptor.pair(kind: .seqpacket)
            let channel = DescriptorChannel(mine)
            let child: ChildProcess
            do throws(SocketShareError) {
                var environment = ProcessSpawner.environment
                environment[Self.predecessorVariable] = "3"
                child = try ProcessSpawner.spawn(
                    upgrade.binary, arguments: successorArguments, environment: environment,
                    descriptors: [0: devNull, 3: theirs.rawValue])
                try theirs.close()
            } catch {
                try? theirs.close()
                try? mine.close()
                throw error.within("upgrade", context: "start \(upgrade.binary)")
            }
            state.successorStarted(child.pid)
            successor = (child, channel, nil)
            do throws(SocketShareError) {
                try handOver(on: channel, upgrade.deadline)
            } catch {
                if let ended = try? child.wait(deadline: .now + .milliseconds(200)) {
                    throw SocketShareError(
                        .holderGone, operation: "upgrade",
                        detail: "the new supervisor (\(upgrade.binary), pid \(child.pid)) ended (\(ended)) before it was ready")
                }
                throw error.within("upgrade", context: "hand over")
            }
            successor?.watch = try? reactor.watch(channel.socket.rawValue) { [unowned self] _ in successorSpoke() }
            logger.info("upgrade: state sent to the new supervisor, pid \(child.pid); waiting for it to serve")
        } catch {
            finishUpgrade(failure: error.detail)
        }
    }

    /// Sends the state, then the descriptors, to the successor.
    private func handOver(on channel: DescriptorChannel, _ deadline: ContinuousClock.Instant) throws(SocketShareError) {
        let channels = dispatcher?.workerChannels ?? []
        let now = ContinuousClock.now
        var descriptors = listeners.map(\.socket.rawValue) + [control.rawValue, notifications.socket.rawValue]
        var transferred: [SupervisorHandover.TransferredWorker] = []
        for worker in state.workers {
            guard let pidfd = processes[worker.pid]?.pidfd else { continue }
            let match = channels.first { $0.pid == worker.pid }
            if dispatcher != nil && match == nil { continue }
            descriptors.append(pidfd.rawValue)
            if let match {
                descriptors.append(match.channel.socket.rawValue)
                if let doorbell = match.doorbell { descriptors.append(doorbell.rawValue) }
            }
            transferred.append(SupervisorHandover.TransferredWorker(
                pid: worker.pid, slot: worker.slot, generation: worker.generation, isReady: worker.isReady,
                uptimeMilliseconds: Int((now - worker.started) / .milliseconds(1)),
                drainMilliseconds: worker.drainDeadline.map { max(0, Int(now.duration(to: $0) / .milliseconds(1))) },
                accepting: match?.accepting ?? true, hasDoorbell: match?.doorbell != nil))
        }
        let handover = SupervisorHandover(
            configuration: configuration, controlPath: controlPath, notifyPath: notifications.path,
            serviceManagerAddress: serviceManager?.address, listenerNames: listeners.map(\.name), ownedPaths: ownedPaths,
            generation: state.generation, currentGeneration: state.currentGeneration, restarts: state.backoff.restarts,
            lastReload: lastReload, workers: transferred, logLevel: "\(logger.logLevel)")
        try channel.send(handover.json, deadline: deadline)
        try channel.sendBatch(descriptors, deadline: deadline)
    }

    /// The successor said something: `ready`, or it went away.
    private func successorSpoke() {
        guard let successor else { return }
        let message = try? successor.channel.receive(maximumBytes: 64, deadline: .now)
        message?.closeDescriptors()
        if let message, message.bytes == Self.successorReady {
            finishUpgrade(failure: nil)
        } else if message == nil {
            let ended = (try? successor.process.wait(deadline: .now + .milliseconds(200))).flatMap { $0 }.map { " (\($0))" } ?? ""
            finishUpgrade(failure: "the new supervisor (pid \(successor.process.pid)) ended\(ended) before it was ready")
        }
    }

    /// Ends the upgrade: on success this supervisor lets go (``run()`` returns); on failure the
    /// successor is killed and serving resumes.
    func finishUpgrade(failure: String?) {
        let requester = upgradeRequester
        upgradeRequester = nil
        let running = successor
        successor = nil
        if let watch = running?.watch { reactor.unwatch(watch) }
        guard let upgrade = state.finishUpgrade(succeeded: failure == nil) else { return }
        if let failure {
            if let running {
                try? running.process.signal(SIGKILL)
                _ = try? running.process.wait(deadline: .now + .seconds(5))
                try? running.channel.close()
            }
            if !state.isStopping {
                watchSharedSockets(true)
                dispatcher?.resume()
            }
            record(kind: "upgrade", generation: 0, succeeded: false, reason: failure, since: upgrade.started)
            logger.error("upgrade failed; this supervisor serves on: \(failure)")
            tellServiceManager("READY=1\nSTATUS=upgrade failed: \(failure)")
            reply(requester, ok: false, reason: failure, generation: nil)
            armTimer()
            return
        }
        let pid = running?.process.pid ?? 0
        record(kind: "upgrade", generation: Int(pid), succeeded: true, reason: "the supervisor is now pid \(pid)", since: upgrade.started)
        reply(requester, ok: true, reason: "the supervisor is now pid \(pid) (\(upgrade.binary))", generation: Int(pid))
        try? running?.channel.close()
        logger.notice("upgrade done: pid \(pid) serves; exiting without touching workers or sockets")
        finishHandover()
    }

    /// After a successful upgrade: stop without a word to the workers (the successor has them) and
    /// without removing socket paths (the successor serves on them).
    private func finishHandover() {
        dispatcher?.detach()
        closeControlConnections()
        if let timer { reactor.cancel(timer) }
        for listener in listeners { try? listener.socket.close() }
        try? control.close()
        try? notifications.socket.close()
        try? Kernel.close(devNull)
        finished.signal()
    }

    // MARK: The successor's side

    /// Takes over from the supervisor that started this process for an upgrade: receives its state
    /// and descriptors over the channel at `fd` (`$SOCKSHARE_PREDECESSOR_FD`). ``run()`` then adopts
    /// its workers and tells it to stop.
    public static func succeeding(
        channelDescriptor fd: CInt, successorArguments: [String], logger: Logger
    ) throws(SocketShareError) -> Supervisor {
        guard Kernel.descriptorFlags(fd) != nil else {
            throw SocketShareError(.invalidArgument, operation: "take over", detail: "descriptor \(fd): not open")
        }
        try Kernel.setCloseOnExec(fd, true)
        let channel = DescriptorChannel(SocketDescriptor(taking: fd))
        let deadline = ContinuousClock.now + .seconds(30)
        guard let message = try channel.receive(maximumBytes: 1 << 20, deadline: deadline) else {
            throw SocketShareError(.holderGone, operation: "take over", detail: "the predecessor closed the channel")
        }
        message.closeDescriptors()
        let handover = try SupervisorHandover(json: message.bytes)
        let descriptors = try channel.receiveBatch(deadline: deadline)
        var index = 0
        func next() throws(SocketShareError) -> SocketDescriptor {
            guard index < descriptors.count else {
                throw SocketShareError(.protocolViolation, operation: "take over", detail: "fewer descriptors than the state names")
            }
            defer { index += 1 }
            return descriptors[index]
        }
        do throws(SocketShareError) {
            var listeners: [Dispatcher.Listener] = []
            for name in handover.listenerNames { listeners.append(Dispatcher.Listener(name: name, socket: try next())) }
            let control = try next()
            let notifications = NotifyListener(socket: try next(), path: handover.notifyPath)
            var state = SupervisorState(
                workerCount: handover.configuration.workers, generation: handover.generation,
                currentGeneration: handover.currentGeneration, restarts: handover.restarts)
            state.toldServiceManagerReady = true
            var inherited: [InheritedWorker] = []
            var processes: [pid_t: WorkerProcess] = [:]
            let now = ContinuousClock.now
            for worker in handover.workers {
                let pidfd = try next()
                let process = try? ProcessDescriptor(taking: pidfd.release(), pid: worker.pid)
                var adopted = InheritedWorker(pid: worker.pid, generation: worker.generation, accepting: worker.accepting)
                if handover.configuration.mode == .handoff {
                    adopted.channel = DescriptorChannel(try next())
                    adopted.doorbell = worker.hasDoorbell == true ? try next() : nil
                }
                inherited.append(adopted)
                processes[worker.pid] = WorkerProcess(child: nil, pidfd: process)
                var record = SupervisorState.Worker(
                    pid: worker.pid, slot: worker.slot, generation: worker.generation,
                    started: now - .milliseconds(worker.uptimeMilliseconds), isChild: false)
                record.isReady = worker.isReady
                record.drainDeadline = worker.drainMilliseconds.map { now + .milliseconds($0) }
                state.started(record)
            }
            let supervisor = try Supervisor(
                configuration: handover.configuration, logger: logger, listeners: listeners, ownedPaths: handover.ownedPaths,
                control: control, controlPath: handover.controlPath, notifications: notifications,
                serviceManager: handover.serviceManagerAddress.map(SystemdNotifier.init(address:)),
                successorArguments: successorArguments, state: state)
            supervisor.processes = processes
            supervisor.lastReload = handover.lastReload
            supervisor.predecessor = (channel, inherited)
            return supervisor
        } catch {
            for descriptor in descriptors[index...] { try? descriptor.close() }
            throw error
        }
    }

    /// Adopts the workers a predecessor handed over, then tells it to stop. On the reactor's thread.
    func adoptPredecessorsWorkers() {
        guard let (channel, inherited) = predecessor else { return }
        predecessor = nil
        for worker in inherited {
            if let workerChannel = worker.channel {
                dispatcher?.addWorker(
                    workerChannel, pid: worker.pid, generation: worker.generation, accepting: worker.accepting,
                    doorbell: worker.doorbell)
            }
        }
        try? channel.send(Self.successorReady, deadline: .now + .seconds(5))
        try? channel.close()
        logger.notice("took over from the previous supervisor: \(state.workers.count) workers, generation \(state.currentGeneration)")
        tellServiceManager("MAINPID=\(getpid())\nREADY=1\nSTATUS=serving (upgraded)")
    }
}
