import Glibc
import Logging
import SocketShare
import SocketShareCore

/// Supervisor upgrade: the running supervisor starts a new binary (`serve --successor-of 3`) and
/// hands it the listeners, the control and notify sockets, the worker channels and its state over a
/// descriptor channel; the workers keep running. In handoff mode the dispatcher pauses first (new
/// connections wait in the listen backlog) until every connection sent is acknowledged.
///
/// The successor says `ready` once it serves; only then does the old supervisor let go and exit
/// (without touching workers or socket paths). If the successor exits, or is not ready by the
/// deadline, it is killed and the old supervisor resumes as if nothing happened.
extension Supervisor {
    /// The message a successor sends when it serves.
    package static let successorReady = Array("ready".utf8)

    package func beginUpgrade(binary: String, deadline: Duration, requester: DescriptorChannel?) {
        let refusal: String? = state.withLock { state in
            if state.stopping { return "the supervisor is stopping" }
            if state.reload != nil { return "a reload is in progress" }
            if state.upgrade != nil { return "an upgrade is already in progress" }
            return nil
        } ?? (ProcessSpawner.resolveExecutable(binary) == nil ? "\(binary): no such executable" : nil)
        if let refusal {
            reply(requester, ok: false, reason: refusal, generation: nil)
            logger.warning("upgrade refused: \(refusal)")
            return
        }
        state.withLock {
            $0.upgrade = UpgradeAttempt(binary: binary, started: .now, deadline: .now + deadline, requester: requester)
        }
        tellServiceManager("RELOADING=1\nMONOTONIC_USEC=\(monotonicMicroseconds)\nSTATUS=upgrading to \(binary)")
        logger.notice("upgrade: handing over to \(binary)")
        dispatcher?.pause()
        continueUpgrade()
    }

    /// Once the dispatcher has settled (every connection sent was acknowledged), starts the
    /// successor and hands everything over. Called from the loop's timers.
    package func continueUpgrade() {
        guard let upgrade = state.withLock({ $0.upgrade }), upgrade.successor == nil else { return }
        if let dispatcher, !dispatcher.isSettled { return }
        // From here on the worker channels are the successor's to read: this dispatcher lets go.
        dispatcher?.freeze()
        do throws(SocketShareError) {
            let (mine, theirs) = try SocketDescriptor.pair(kind: .seqpacket)
            let channel = DescriptorChannel(mine)
            let child: ChildProcess
            do throws(SocketShareError) {
                child = try ProcessSpawner.spawn(
                    upgrade.binary, arguments: ["serve", "--successor-of", "3", "--log-level", "\(logger.logLevel)"],
                    descriptors: [0: devNull, 3: theirs.rawValue])
                try theirs.close()
            } catch {
                try? theirs.close()
                try? mine.close()
                throw error
            }
            state.withLock { $0.upgrade?.successor = (child, channel) }
            do throws(SocketShareError) {
                try handOver(on: channel, upgrade.deadline)
            } catch {
                if let ended = try? child.wait(deadline: .now + .milliseconds(200)) {
                    state.withLock { $0.upgrade?.successor = nil }
                    throw SocketShareError(
                        .holderGone, operation: "upgrade",
                        detail: "the new supervisor (\(upgrade.binary), pid \(child.pid)) ended (\(ended)) before it was ready")
                }
                throw error
            }
            logger.info("upgrade: state sent to the new supervisor, pid \(child.pid); waiting for it to serve")
        } catch {
            finishUpgrade(failure: error.operation == "upgrade" ? error.detail : "could not hand over: \(error)")
        }
    }

    /// Sends the state, then the descriptors, to the successor.
    private func handOver(on channel: DescriptorChannel, _ deadline: ContinuousClock.Instant) throws(SocketShareError) {
        let channels = dispatcher?.workerChannels ?? []
        let now = ContinuousClock.now
        let (workers, snapshot) = state.withLock { ($0.workers, $0) }
        var descriptors = listeners.map(\.socket.rawValue) + [control.rawValue, notifications.socket.rawValue]
        var transferred: [SupervisorHandover.TransferredWorker] = []
        for worker in workers {
            guard let pidfd = worker.pidfd else { continue }
            let match = channels.first { $0.pid == worker.process.pid }
            if dispatcher != nil && match == nil { continue }
            descriptors.append(pidfd.rawValue)
            if let match {
                descriptors.append(match.channel.socket.rawValue)
                if let doorbell = match.doorbell { descriptors.append(doorbell.rawValue) }
            }
            let uptime = now - worker.started
            transferred.append(SupervisorHandover.TransferredWorker(
                pid: worker.process.pid, slot: worker.slot, generation: worker.generation, isReady: worker.isReady,
                uptimeMilliseconds: Int(uptime.components.seconds * 1000),
                drainMilliseconds: worker.drainDeadline.map { deadline in
                    let left = now.duration(to: deadline)
                    return max(0, Int(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
                },
                accepting: match?.accepting ?? true, hasDoorbell: match?.doorbell != nil))
        }
        let handover = SupervisorHandover(
            configuration: configuration, controlPath: controlPath, notifyPath: notifications.path,
            serviceManagerAddress: serviceManager?.address, listenerNames: listeners.map(\.name), ownedPaths: ownedPaths,
            generation: snapshot.generation, currentGeneration: snapshot.currentGeneration, restarts: snapshot.restarts,
            lastReload: snapshot.lastReload, workers: transferred, logLevel: "\(logger.logLevel)")
        try channel.send(handover.json, deadline: deadline)
        try channel.sendBatch(descriptors, deadline: deadline)
    }

    /// The successor said something: `ready`, or it went away.
    package func successorSpoke() {
        guard let successor = state.withLock({ $0.upgrade?.successor }) else { return }
        let message = try? successor.channel.receive(maximumBytes: 64, deadline: .now)
        message?.closeDescriptors()
        if let message, message.bytes == Self.successorReady {
            finishUpgrade(failure: nil)
        } else if message == nil {
            let ended = (try? successor.process.wait(deadline: .now + .milliseconds(200))).flatMap { $0 }.map { " (\($0))" } ?? ""
            finishUpgrade(failure: "the new supervisor (pid \(successor.process.pid)) ended\(ended) before it was ready")
        }
    }

    /// Ends the upgrade: on success this supervisor lets go (the loop ends and
    /// ``finishHandover()`` runs); on failure the successor is killed and serving resumes.
    package func finishUpgrade(failure: String?) {
        guard let upgrade = state.withLock({ state -> UpgradeAttempt? in
            defer { state.upgrade = nil }
            return state.upgrade
        }) else { return }
        let elapsed = ContinuousClock.now - upgrade.started
        let milliseconds = Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
        if let failure {
            if let successor = upgrade.successor {
                try? successor.process.signal(SIGKILL)
                _ = try? successor.process.wait(deadline: .now + .seconds(5))
                try? successor.channel.close()
            }
            dispatcher?.resume()
            record(kind: "upgrade", generation: 0, succeeded: false, reason: failure, milliseconds: milliseconds)
            logger.error("upgrade failed; this supervisor serves on: \(failure)")
            tellServiceManager("READY=1\nSTATUS=upgrade failed: \(failure)")
            reply(upgrade.requester, ok: false, reason: failure, generation: nil)
            return
        }
        let pid = upgrade.successor?.process.pid ?? 0
        record(kind: "upgrade", generation: Int(pid), succeeded: true, reason: "the supervisor is now pid \(pid)", milliseconds: milliseconds)
        reply(upgrade.requester, ok: true, reason: "the supervisor is now pid \(pid) (\(upgrade.binary))", generation: Int(pid))
        try? upgrade.successor?.channel.close()
        state.withLock { $0.handedOver = true }
        logger.notice("upgrade done: pid \(pid) serves; exiting without touching workers or sockets")
    }

    /// After a successful upgrade: stop without a word to the workers (the successor has them) and
    /// without removing socket paths (the successor serves on them).
    package func finishHandover() {
        dispatcher?.detach()
        for listener in listeners { try? listener.socket.close() }
        try? control.close()
        try? notifications.socket.close()
        try? Kernel.close(devNull)
    }

    // MARK: The successor's side

    /// Takes over from the supervisor that started this process with `serve --successor-of FD`:
    /// receives its state and descriptors. ``run()`` then adopts its workers and tells it to exit.
    public static func succeeding(channelDescriptor fd: CInt, logger: Logger) throws(SocketShareError) -> Supervisor {
        guard Kernel.descriptorFlags(fd) != nil else {
            throw SocketShareError(.invalidArgument, operation: "take over", detail: "--successor-of \(fd): not an open descriptor")
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
            var state = State()
            state.generation = handover.generation
            state.currentGeneration = handover.currentGeneration
            state.restarts = handover.restarts
            state.lastReload = handover.lastReload
            state.toldServiceManagerReady = true
            var inherited: [(pid_t, Int, Bool, DescriptorChannel, SocketDescriptor?)] = []
            let now = ContinuousClock.now
            for worker in handover.workers {
                let pidfd = try next()
                let process = try? ProcessDescriptor(taking: pidfd.release(), pid: worker.pid)
                if handover.configuration.mode == .handoff {
                    let channel = DescriptorChannel(try next())
                    let doorbell = worker.hasDoorbell == true ? try next() : nil
                    inherited.append((worker.pid, worker.generation, worker.accepting, channel, doorbell))
                }
                var record = Worker(
                    slot: worker.slot, process: ChildProcess(pid: worker.pid), pidfd: process, generation: worker.generation,
                    started: now - .milliseconds(worker.uptimeMilliseconds), isChild: false)
                record.isReady = worker.isReady
                record.drainDeadline = worker.drainMilliseconds.map { now + .milliseconds($0) }
                state.workers.append(record)
            }
            let supervisor = try Supervisor(
                configuration: handover.configuration, logger: logger, listeners: listeners, ownedPaths: handover.ownedPaths,
                control: control, controlPath: handover.controlPath, notifications: notifications,
                serviceManager: handover.serviceManagerAddress.map(SystemdNotifier.init(address:)), state: state)
            supervisor.predecessor.withLock { $0 = (channel, inherited) }
            return supervisor
        } catch {
            for descriptor in descriptors[index...] { try? descriptor.close() }
            throw error
        }
    }

    /// Adopts the workers a predecessor handed over, then tells it to exit.
    package func adoptPredecessorsWorkers() {
        guard let (channel, inherited) = predecessor.withLock({ value in defer { value = nil }; return value }) else { return }
        for (pid, generation, accepting, workerChannel, doorbell) in inherited {
            dispatcher?.addWorker(workerChannel, pid: pid, generation: generation, accepting: accepting, doorbell: doorbell)
        }
        try? channel.send(Self.successorReady, deadline: .now + .seconds(5))
        try? channel.close()
        logger.notice("took over from the previous supervisor: \(state.withLock { $0.workers.count }) workers, generation \(state.withLock { $0.currentGeneration })")
        tellServiceManager("MAINPID=\(getpid())\nREADY=1\nSTATUS=serving (upgraded)")
    }
}
