import Glibc
import SocketShare
import SocketShareCore

/// Workers: starting them, hearing that they are ready, reaping them, the timers that restart and
/// escalate, and the drain at the end. All on the supervisor's reactor thread.
extension Supervisor {
    /// The first round on the reactor: watch the control and notify sockets, start the workers (or
    /// adopt a predecessor's), and say so.
    func begin() {
        watchSharedSockets(true)
        watchWorkerSocket()
        if predecessor != nil {
            adoptPredecessorsWorkers()
        } else {
            for slot in 0..<configuration.workers { start(slot: slot, generation: state.generation, accepting: true) }
        }
        logger.notice("serving", metadata: [
            "mode": "\(configuration.mode)", "workers": "\(configuration.workers)",
            "listeners": "\(boundAddresses.map { "\($0.name)=\($0.endpoint)" }.joined(separator: " "))",
            "control": "\(controlPath)",
        ])
        armTimer()
    }

    /// Watches (or stops watching) what a successor takes over during an upgrade: the control
    /// socket and its connections, the notify socket and the workers' pidfds. Two supervisors must
    /// never act on them at once.
    func watchSharedSockets(_ on: Bool) {
        if on {
            if controlWatch == nil {
                controlWatch = try? reactor.watch(control.rawValue) { [unowned self] _ in acceptControlConnections() }
            }
            if notifyWatch == nil {
                notifyWatch = try? reactor.watch(notifications.socket.rawValue) { [unowned self] _ in
                    for (pid, fields) in notifications.drain() where fields["READY"] == "1" { workerIsReady(pid) }
                }
            }
            for pid in processes.keys { watchProcess(pid) }
            for key in controlConnections.keys { watchControlConnection(key) }
        } else {
            if let controlWatch { reactor.unwatch(controlWatch) }
            if let notifyWatch { reactor.unwatch(notifyWatch) }
            controlWatch = nil
            notifyWatch = nil
            for pid in processes.keys {
                if let watch = processes[pid]?.watch { reactor.unwatch(watch) }
                processes[pid]?.watch = nil
            }
            for connection in controlConnections.values {
                if let watch = connection.watch { reactor.unwatch(watch) }
                connection.watch = nil
            }
        }
    }

    /// Reaps worker `pid` when its pidfd says it has exited.
    func watchProcess(_ pid: pid_t) {
        guard let process = processes[pid], process.watch == nil, let pidfd = process.pidfd else { return }
        processes[pid]?.watch = try? reactor.watch(pidfd.rawValue) { [unowned self] _ in reap(pid) }
    }

    /// Starts a worker of `generation` in `slot`, with the descriptors its mode needs and nothing
    /// else. Returns its pid, or nil when it could not be started (the slot is retried later).
    @discardableResult
    func start(slot: Int, generation: Int, accepting: Bool) -> pid_t? {
        var environment = ProcessSpawner.environment
        environment["SOCKSHARE_WORKER_INDEX"] = "\(slot)"
        environment["SOCKSHARE_GENERATION"] = "\(generation)"
        environment["NOTIFY_SOCKET"] = notifications.path
        var descriptors: [CInt: CInt] = [0: devNull]
        var program = configuration.command[0]
        var arguments = Array(configuration.command.dropFirst())
        var channel: (mine: SocketDescriptor, theirs: SocketDescriptor)? = nil
        do throws(SocketShareError) {
            switch configuration.mode {
            case .shared:
                for (index, listener) in listeners.enumerated() {
                    descriptors[SystemdListeners.firstDescriptor + CInt(index)] = listener.socket.rawValue
                }
                environment.merge(SystemdListeners.environment(names: listeners.map(\.name))) { $1 }
                // LISTEN_PID must be the worker's own pid, known only once it runs: a shell sets it
                // and execs the command, which keeps the pid.
                program = "/bin/sh"
                arguments = ["-c", "LISTEN_PID=$$; export LISTEN_PID; exec \"$@\"", "sockshare-worker"] + configuration.command
            case .handoff:
                let pair = try SocketDescriptor.pair(kind: .seqpacket)
                channel = pair
                descriptors[3] = pair.1.rawValue
                environment[WorkerChannel.environmentVariable] = "3"
            }
            let child = try ProcessSpawner.spawn(program, arguments: arguments, environment: environment, descriptors: descriptors)
            if let channel {
                try? channel.theirs.close()
                dispatcher?.addWorker(DescriptorChannel(channel.mine), pid: child.pid, generation: generation, accepting: accepting)
            }
            processes[child.pid] = WorkerProcess(child: child, pidfd: try? ProcessDescriptor(pid: child.pid))
            if !state.isHandingOver { watchProcess(child.pid) }
            state.started(SupervisorState.Worker(pid: child.pid, slot: slot, generation: generation, started: .now, isChild: true))
            logger.info("worker started", metadata: ["pid": "\(child.pid)", "slot": "\(slot)", "generation": "\(generation)"])
            if configuration.readiness == .none { workerIsReady(child.pid) }
            return child.pid
        } catch {
            if let channel {
                try? channel.mine.close()
                try? channel.theirs.close()
            }
            logger.error("could not start a worker", metadata: ["slot": "\(slot)", "error": "\(error)"])
            state.failedToStart(slot: slot, generation: generation, now: .now)
            armTimer()
            return nil
        }
    }

    /// A worker said it is ready (`READY=1`, or the worker protocol's `ready`).
    func workerIsReady(_ pid: pid_t) {
        guard let outcome = state.ready(pid) else { return }
        logger.debug("worker ready", metadata: ["pid": "\(pid)"])
        if outcome.startupComplete { tellServiceManager("READY=1\nSTATUS=serving with \(configuration.workers) workers") }
        if outcome.reloadComplete { finishReload(failure: nil) }
    }

    /// Reaps an exited worker and does what follows: a restart (current generation), a rollback (a
    /// reload's new generation), nothing (a draining worker, or stopping).
    func reap(_ pid: pid_t) {
        guard let process = processes[pid] else { return }
        let termination: ChildProcess.Termination?
        if let child = process.child {
            guard let ended = try? child.wait(deadline: .now) else { return }
            termination = ended
        } else {
            // Inherited from a predecessor: not our child, so its status is not ours to read.
            guard process.pidfd?.hasExited ?? !Kernel.processExists(pid) else { return }
            termination = nil
        }
        if let watch = process.watch { reactor.unwatch(watch) }
        processes.removeValue(forKey: pid)
        let worker = state.worker(pid)
        let status = termination.map { "\($0)" } ?? "exit status unknown (inherited worker)"
        switch state.exited(pid, now: .now) {
        case .nothing:
            logger.info("worker exited", metadata: ["pid": "\(pid)", "generation": "\(worker?.generation ?? 0)", "status": "\(status)"])
        case .restart(let slot, _):
            logger.warning("worker exited; restarting its slot", metadata: ["pid": "\(pid)", "slot": "\(slot)", "status": "\(status)"])
        case .rollback:
            finishReload(failure: "worker \(pid) of generation \(worker?.generation ?? 0) ended (\(status)) before it was ready")
        }
        if state.isStopping && state.workers.isEmpty { finishDrain() }
        armTimer()
    }

    /// Sets the one timer to the next deadline of the state.
    func armTimer() {
        if let timer { reactor.cancel(timer) }
        timer = nil
        var next = state.nextDeadline
        if let drainGiveUp { next = min(next ?? drainGiveUp, drainGiveUp) }
        guard let next else { return }
        timer = reactor.schedule(at: next) { [unowned self] in
            timer = nil
            timersDue()
        }
    }

    /// Restarts slots whose time has come, escalates drains past their deadline, and rolls back a
    /// reload or upgrade past its deadline.
    private func timersDue() {
        let now = ContinuousClock.now
        let due = state.due(at: now)
        for slot in due.restarts { start(slot: slot, generation: state.currentGeneration, accepting: true) }
        for pid in due.terminate {
            logger.warning("old worker still running at its drain deadline: SIGTERM", metadata: ["pid": "\(pid)"])
            _ = Glibc.kill(pid, SIGTERM)
        }
        for pid in due.kill {
            logger.warning("old worker ignored SIGTERM: SIGKILL", metadata: ["pid": "\(pid)"])
            _ = Glibc.kill(pid, SIGKILL)
        }
        if let waiting = due.reloadLate {
            finishReload(failure: "the new generation was not ready by the deadline: \(waiting.map(String.init).joined(separator: ", ")) never said READY=1")
        }
        if due.upgradeLate { finishUpgrade(failure: "the new supervisor was not ready by the deadline") }
        if let drainGiveUp, drainGiveUp <= now {
            logger.error("workers still running after SIGKILL; stopping without them", metadata: ["count": "\(state.workers.count)"])
            finishDrain()
        }
        armTimer()
    }

    /// Begins the graceful stop: no new connections, workers finish within the drain timeout, then
    /// `SIGTERM`, then `SIGKILL`.
    func beginDrain() {
        guard !state.isStopping, !state.isHandedOver else { return }
        tellServiceManager("STOPPING=1\nSTATUS=draining")
        logger.notice("draining")
        let pending = state.beginStopping()
        if pending.reload { finishReload(failure: "the supervisor is stopping") }
        if pending.upgrade { finishUpgrade(failure: "the supervisor is stopping") }
        let deadline = ContinuousClock.now + configuration.drainTimeout
        if let dispatcher {
            // Hands out what waits in the backlog, waits for acknowledgements, tells workers to stop.
            dispatcher.stop(deadline: deadline) { [reactor] in
                reactor.execute { [self] in dispatcherStopped() }
            }
        } else {
            for pid in state.workers.map(\.pid) { _ = Glibc.kill(pid, SIGTERM) }
        }
        // At the deadline whoever is left gets SIGTERM, and SIGKILL after the grace period.
        reactor.schedule(at: deadline) { [unowned self] in
            guard !state.workers.isEmpty, drainGiveUp == nil else { return }
            let left = state.terminateAll(now: .now)
            logger.warning("workers still running at the drain deadline: SIGTERM", metadata: ["count": "\(left.count)"])
            for pid in left { _ = Glibc.kill(pid, SIGTERM) }
            drainGiveUp = .now + SupervisorState.killGrace + .seconds(5)
            armTimer()
        }
        if state.workers.isEmpty { finishDrain() }
    }

    private func dispatcherStopped() {
        dispatcher?.finish()
        if state.workers.isEmpty { finishDrain() }
    }

    /// Every worker is gone (or ignored even `SIGKILL`): close everything and let ``run()`` return.
    func finishDrain() {
        guard !finished.isSignalled else { return }
        if let dispatcher { dispatcher.finish() }
        closeControlConnections()
        watchSharedSockets(false)
        for listener in listeners { try? listener.socket.close() }
        for path in ownedPaths { Kernel.unlink(path) }
        try? control.close()
        Kernel.unlink(controlPath)
        closeWorkerSocket()
        notifications.close()
        try? Kernel.close(devNull)
        logger.notice("stopped")
        finished.signal()
    }

    /// The current state, as `sockshare status --control` shows it.
    func currentStatus() -> ServeStatus {
        let dispatched = dispatcher?.statistics
        let now = ContinuousClock.now
        return ServeStatus(
            pid: getpid(), mode: configuration.mode.rawValue,
            policy: configuration.mode == .handoff ? configuration.policy.rawValue : nil,
            listeners: boundAddresses.map { ServeStatus.Listener(name: $0.name, address: "\($0.endpoint)") },
            workers: state.workers.sorted { ($0.generation, $0.slot) < ($1.generation, $1.slot) }.map { worker in
                let seen = dispatched?.workers.first { $0.pid == worker.pid }
                return ServeStatus.Worker(
                    pid: worker.pid, slot: worker.slot, generation: worker.generation,
                    handled: dispatched == nil ? nil : (seen?.handled ?? 0),
                    inFlight: dispatched == nil ? nil : (seen?.inFlight ?? 0),
                    unacknowledged: dispatched == nil ? nil : (seen?.unacknowledged ?? 0),
                    restarts: worker.generation == state.currentGeneration ? (state.backoff.restarts[worker.slot] ?? 0) : 0,
                    ready: worker.isReady,
                    uptimeSeconds: Int((now - worker.started).components.seconds), draining: worker.drainDeadline != nil)
            },
            accepted: dispatched?.accepted, redispatched: dispatched?.redispatched, waiting: dispatched?.waiting,
            generation: state.currentGeneration, lastReload: lastReload, reloading: state.reload != nil || state.upgrade != nil,
            externalWorkers: configuration.externalWorkers == nil ? nil : externalWorkerStatus(dispatched),
            externalRefusals: configuration.externalWorkers == nil ? nil : externalRefusals)
    }
}
