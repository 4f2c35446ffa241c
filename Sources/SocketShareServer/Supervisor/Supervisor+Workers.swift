import Glibc
import SocketShare
import SocketShareCore

extension Supervisor {
    /// The first and the longest wait before a crashed worker's slot is started again.
    package static let initialBackoff: Duration = .milliseconds(100)
    package static let maximumBackoff: Duration = .seconds(10)
    /// A worker that ran this long before it crashed is restarted without delay growth.
    package static let healthyUptime: Duration = .seconds(10)
    /// How long a worker has between `SIGTERM` and `SIGKILL`.
    package static let killGrace: Duration = .seconds(2)

    /// Starts a worker of `generation` in `slot`, with the descriptors its mode needs and nothing
    /// else. Returns its pid, or nil when it could not be started (the slot is retried later).
    @discardableResult
    package func start(slot: Int, generation: Int, accepting: Bool) -> pid_t? {
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
            var worker = Worker(
                slot: slot, process: child, pidfd: try? ProcessDescriptor(pid: child.pid), generation: generation,
                started: .now, isChild: true)
            worker.isReady = configuration.readiness == .none
            state.withLock { $0.workers.append(worker) }
            logger.info("worker started", metadata: ["pid": "\(child.pid)", "slot": "\(slot)", "generation": "\(generation)"])
            if worker.isReady { workerIsReady(child.pid) }
            return child.pid
        } catch {
            if let channel {
                try? channel.mine.close()
                try? channel.theirs.close()
            }
            logger.error("could not start a worker", metadata: ["slot": "\(slot)", "error": "\(error)"])
            if state.withLock({ $0.currentGeneration == generation }) { scheduleRestart(slot: slot, after: nil) }
            return nil
        }
    }

    /// A worker said it is ready (`READY=1`, or the worker protocol's `ready`).
    package func workerIsReady(_ pid: pid_t) {
        let (known, reloadDone, startupDone) = state.withLock { state -> (Bool, Bool, Bool) in
            guard let index = state.workers.firstIndex(where: { $0.process.pid == pid }) else { return (false, false, false) }
            state.workers[index].isReady = true
            var reloadDone = false
            if state.reload != nil {
                state.reload!.waiting.remove(pid)
                reloadDone = state.reload!.waiting.isEmpty
            }
            let current = state.workers.filter { $0.generation == state.currentGeneration && $0.drainDeadline == nil }
            let startupDone = !state.toldServiceManagerReady && state.reload == nil && current.count == configuration.workers
                && current.allSatisfy(\.isReady)
            if startupDone { state.toldServiceManagerReady = true }
            return (true, reloadDone, startupDone)
        }
        guard known else { return }
        logger.debug("worker ready", metadata: ["pid": "\(pid)"])
        if startupDone { tellServiceManager("READY=1\nSTATUS=serving with \(configuration.workers) workers") }
        if reloadDone { finishReload(failure: nil) }
    }

    /// Reaps an exited worker and decides what follows: a restart (current generation), a rollback
    /// (a reload's new generation), nothing (a draining worker, or stopping).
    package func reap(_ worker: Worker) {
        let termination: ChildProcess.Termination?
        if worker.isChild {
            guard let ended = try? worker.process.wait(deadline: .now) else { return }
            termination = ended
        } else {
            // Inherited from a predecessor: not our child, so its status is not ours to read.
            guard worker.pidfd?.hasExited ?? !Kernel.processExists(worker.process.pid) else { return }
            termination = nil
        }
        let status = termination.map { "\($0)" } ?? "exit status unknown (inherited worker)"
        enum Next { case nothing, restart, rollback }
        let next = state.withLock { state -> Next in
            guard let index = state.workers.firstIndex(where: { $0.process.pid == worker.process.pid }) else { return .nothing }
            let ended = state.workers.remove(at: index)
            if state.stopping || state.handedOver || ended.drainDeadline != nil { return .nothing }
            if let reload = state.reload, reload.generation == ended.generation { return .rollback }
            return ended.generation == state.currentGeneration ? .restart : .nothing
        }
        switch next {
        case .nothing:
            logger.info("worker exited", metadata: ["pid": "\(worker.process.pid)", "generation": "\(worker.generation)", "status": "\(status)"])
        case .restart:
            logger.warning("worker exited; restarting its slot", metadata: [
                "pid": "\(worker.process.pid)", "slot": "\(worker.slot)", "status": "\(status)",
            ])
            scheduleRestart(slot: worker.slot, after: ContinuousClock.now - worker.started)
        case .rollback:
            finishReload(failure: "worker \(worker.process.pid) of generation \(worker.generation) ended (\(status)) before it was ready")
        }
    }

    package func scheduleRestart(slot: Int, after uptime: Duration?) {
        state.withLock { state in
            var delay = state.backoff[slot] ?? Self.initialBackoff
            if let uptime, uptime >= Self.healthyUptime { delay = Self.initialBackoff }
            state.pendingRestarts.append(Restart(slot: slot, at: .now + delay))
            state.backoff[slot] = min(delay * 2, Self.maximumBackoff)
            state.restarts[slot, default: 0] += 1
        }
    }

    /// Restarts slots whose time has come, escalates drains past their deadline, and rolls back a
    /// reload or upgrade past its deadline.
    package func runTimers() {
        let now = ContinuousClock.now
        let (restarts, generation) = state.withLock { state -> ([Restart], Int) in
            // No restarts while a successor takes over: the slots may be its to fill.
            if state.upgrade?.successor != nil { return ([], state.currentGeneration) }
            let due = state.pendingRestarts.filter { $0.at <= now }
            state.pendingRestarts.removeAll { $0.at <= now }
            return (due, state.currentGeneration)
        }
        for restart in restarts { start(slot: restart.slot, generation: generation, accepting: true) }
        let (terminate, kill) = state.withLock { state -> ([pid_t], [pid_t]) in
            var terminate: [pid_t] = []
            var kill: [pid_t] = []
            for index in state.workers.indices {
                if let killAt = state.workers[index].killAt, killAt <= now {
                    kill.append(state.workers[index].process.pid)
                    state.workers[index].killAt = now + .seconds(3600)
                } else if state.workers[index].killAt == nil, let deadline = state.workers[index].drainDeadline, deadline <= now {
                    terminate.append(state.workers[index].process.pid)
                    state.workers[index].killAt = now + Self.killGrace
                }
            }
            return (terminate, kill)
        }
        for pid in terminate {
            logger.warning("old worker still running at its drain deadline: SIGTERM", metadata: ["pid": "\(pid)"])
            _ = Glibc.kill(pid, SIGTERM)
        }
        for pid in kill {
            logger.warning("old worker ignored SIGTERM: SIGKILL", metadata: ["pid": "\(pid)"])
            _ = Glibc.kill(pid, SIGKILL)
        }
        let (reloadLate, upgradeLate) = state.withLock { ($0.reload.map { $0.deadline <= now } ?? false, $0.upgrade.map { $0.deadline <= now } ?? false) }
        if reloadLate {
            let waiting = state.withLock { $0.reload?.waiting.sorted() ?? [] }
            finishReload(failure: "the new generation was not ready by the deadline: \(waiting.map(String.init).joined(separator: ", ")) never said READY=1")
        }
        if upgradeLate { finishUpgrade(failure: "the new supervisor was not ready by the deadline") }
        continueUpgrade()
    }

    /// The next time ``runTimers()`` has work.
    package func nextTimer() -> ContinuousClock.Instant {
        state.withLock { state in
            var next = ContinuousClock.now + .seconds(1)
            for restart in state.pendingRestarts { next = min(next, restart.at) }
            for worker in state.workers {
                if let killAt = worker.killAt { next = min(next, killAt) }
                if worker.killAt == nil, let deadline = worker.drainDeadline { next = min(next, deadline) }
            }
            if let reload = state.reload { next = min(next, reload.deadline) }
            if let upgrade = state.upgrade { next = min(next, min(upgrade.deadline, .now + .milliseconds(20))) }
            return next
        }
    }

    /// Stops gracefully: no new connections, workers finish within the drain timeout, then
    /// `SIGTERM`, then `SIGKILL`; the listeners and the control socket are closed.
    package func drain() {
        tellServiceManager("STOPPING=1\nSTATUS=draining")
        let pending = state.withLock { state in
            state.stopping = true
            state.pendingRestarts.removeAll()
            return (state.reload, state.upgrade)
        }
        if pending.0 != nil { finishReload(failure: "the supervisor is stopping") }
        if pending.1 != nil { finishUpgrade(failure: "the supervisor is stopping") }
        let deadline = ContinuousClock.now + configuration.drainTimeout
        if let dispatcher {
            // Hands out what waits in the backlog, waits for acknowledgements, tells workers to stop.
            dispatcher.stop(deadline: deadline)
        } else {
            for worker in state.withLock({ $0.workers }) { try? worker.process.signal(SIGTERM) }
        }
        if !waitForWorkers(until: deadline) {
            let left = state.withLock { $0.workers }
            logger.warning("workers still running at the drain deadline: SIGTERM", metadata: ["count": "\(left.count)"])
            for worker in left { try? worker.process.signal(SIGTERM) }
            if !waitForWorkers(until: .now + Self.killGrace) {
                for worker in state.withLock({ $0.workers }) {
                    logger.warning("SIGKILL", metadata: ["pid": "\(worker.process.pid)"])
                    try? worker.process.signal(SIGKILL)
                }
                _ = waitForWorkers(until: .now + .seconds(5))
            }
        }
        for listener in listeners { try? listener.socket.close() }
        for path in ownedPaths { Kernel.unlink(path) }
        try? control.close()
        Kernel.unlink(controlPath)
        notifications.close()
        try? Kernel.close(devNull)
        logger.notice("stopped")
    }

    /// Reaps workers until none is left or `deadline` passes; returns whether none is left.
    private func waitForWorkers(until deadline: ContinuousClock.Instant) -> Bool {
        while true {
            let workers = state.withLock { $0.workers }
            if workers.isEmpty { return true }
            var fds = workers.map { pollfd(fd: $0.pidfd?.rawValue ?? -1, events: Int16(POLLIN), revents: 0) }
            let until = min(deadline, .now + .milliseconds(100))
            _ = try? Kernel.poll(&fds, deadline: until)
            for worker in workers { reap(worker) }
            if ContinuousClock.now >= deadline { return state.withLock { $0.workers.isEmpty } }
        }
    }

    /// The current state, as `sockshare status --control` shows it.
    public func status() -> ServeStatus {
        let (workers, restarts, generation, lastReload, reloading) = state.withLock {
            ($0.workers, $0.restarts, $0.currentGeneration, $0.lastReload, $0.reload != nil || $0.upgrade != nil)
        }
        let dispatched = dispatcher?.statistics
        let now = ContinuousClock.now
        return ServeStatus(
            pid: getpid(), mode: configuration.mode.rawValue,
            policy: configuration.mode == .handoff ? configuration.policy.rawValue : nil,
            listeners: boundAddresses.map { ServeStatus.Listener(name: $0.name, address: "\($0.endpoint)") },
            workers: workers.sorted { ($0.generation, $0.slot) < ($1.generation, $1.slot) }.map { worker in
                let seen = dispatched?.workers.first { $0.pid == worker.process.pid }
                return ServeStatus.Worker(
                    pid: worker.process.pid, slot: worker.slot, generation: worker.generation,
                    handled: dispatched == nil ? nil : (seen?.handled ?? 0),
                    inFlight: dispatched == nil ? nil : (seen?.inFlight ?? 0),
                    unacknowledged: dispatched == nil ? nil : (seen?.unacknowledged ?? 0),
                    restarts: worker.generation == generation ? (restarts[worker.slot] ?? 0) : 0,
                    ready: worker.isReady,
                    uptimeSeconds: Int((now - worker.started).components.seconds), draining: worker.drainDeadline != nil)
            },
            accepted: dispatched?.accepted, redispatched: dispatched?.redispatched, waiting: dispatched?.waiting,
            generation: generation, lastReload: lastReload, reloading: reloading)
    }
}
