import Glibc

extension Supervisor {
    /// The first and the longest wait before a crashed worker's slot is started again.
    static let initialBackoff: Duration = .milliseconds(100)
    static let maximumBackoff: Duration = .seconds(10)
    /// A worker that ran this long before it crashed is restarted without delay growth.
    static let healthyUptime: Duration = .seconds(10)

    /// Starts a worker in `slot`, with the descriptors its mode needs and nothing else.
    func start(slot: Int) {
        let generation = state.withLock { $0.generation }
        var environment = ProcessSpawner.environment
        environment["SOCKSHARE_WORKER_INDEX"] = "\(slot)"
        environment["SOCKSHARE_GENERATION"] = "\(generation)"
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
                environment[WorkerConnections.environmentVariable] = "3"
            }
            let child = try ProcessSpawner.spawn(program, arguments: arguments, environment: environment, descriptors: descriptors)
            if let channel {
                try? channel.theirs.close()
                dispatcher?.addWorker(DescriptorChannel(channel.mine), pid: child.pid, generation: generation)
            }
            let worker = Worker(slot: slot, process: child, pidfd: try? ProcessDescriptor(pid: child.pid), generation: generation, started: .now)
            state.withLock { $0.workers.append(worker) }
            logger.info("worker started", metadata: ["pid": "\(child.pid)", "slot": "\(slot)", "generation": "\(generation)"])
        } catch {
            if let channel {
                try? channel.mine.close()
                try? channel.theirs.close()
            }
            logger.error("could not start a worker", metadata: ["slot": "\(slot)", "error": "\(error)"])
            scheduleRestart(slot: slot, after: nil)
        }
    }

    /// Reaps an exited worker and, unless stopping, schedules its slot's restart.
    func reap(_ worker: Worker) {
        guard let termination = try? worker.process.wait(deadline: .now) else { return }
        let stopping = state.withLock { state in
            state.workers.removeAll { $0.process.pid == worker.process.pid }
            state.exits.append((worker.process.pid, termination))
            return state.stopping
        }
        if stopping {
            logger.info("worker exited", metadata: ["pid": "\(worker.process.pid)", "status": "\(termination)"])
        } else {
            logger.warning("worker exited; restarting its slot", metadata: [
                "pid": "\(worker.process.pid)", "slot": "\(worker.slot)", "status": "\(termination)",
            ])
            scheduleRestart(slot: worker.slot, after: ContinuousClock.now - worker.started)
        }
    }

    private func scheduleRestart(slot: Int, after uptime: Duration?) {
        state.withLock { state in
            var delay = state.backoff[slot] ?? Self.initialBackoff
            if let uptime, uptime >= Self.healthyUptime { delay = Self.initialBackoff }
            state.pendingRestarts.append(Restart(slot: slot, at: .now + delay))
            state.backoff[slot] = min(delay * 2, Self.maximumBackoff)
            state.restarts[slot, default: 0] += 1
        }
    }

    /// Stops gracefully: no new connections, workers finish within the drain timeout, then
    /// `SIGTERM`, then `SIGKILL`; the listeners and the control socket are closed.
    func drain() {
        state.withLock {
            $0.stopping = true
            $0.pendingRestarts.removeAll()
        }
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
            if !waitForWorkers(until: .now + .seconds(2)) {
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

    /// Answers one control request. Returns false when the client has gone.
    func answerControl(_ channel: DescriptorChannel) -> Bool {
        guard let message = try? channel.receive(maximumBytes: 4096, deadline: .now) else { return false }
        message.closeDescriptors()
        let command = String(decoding: message.bytes, as: UTF8.self).trimmingSpaces
        let reply: [UInt8]
        switch command {
        case "status":
            reply = status().json
        default:
            reply = Array("{\"error\":\"unknown command; this supervisor answers: status\"}".utf8)
        }
        return (try? channel.send(reply, deadline: .now + .seconds(1))) != nil
    }

    /// The current state, as `sockshare status --control` shows it.
    public func status() -> ServeStatus {
        let (workers, restarts, generation) = state.withLock { ($0.workers, $0.restarts, $0.generation) }
        let dispatched = dispatcher?.statistics
        let now = ContinuousClock.now
        return ServeStatus(
            pid: getpid(), mode: configuration.mode.rawValue,
            policy: configuration.mode == .handoff ? configuration.policy.rawValue : nil,
            listeners: boundAddresses.map { ServeStatus.Listener(name: $0.name, address: "\($0.endpoint)") },
            workers: workers.sorted { $0.slot < $1.slot }.map { worker in
                let seen = dispatched?.workers.first { $0.pid == worker.process.pid }
                return ServeStatus.Worker(
                    pid: worker.process.pid, slot: worker.slot, generation: worker.generation,
                    handled: dispatched == nil ? nil : (seen?.handled ?? 0),
                    inFlight: dispatched == nil ? nil : (seen?.inFlight ?? 0),
                    unacknowledged: dispatched == nil ? nil : (seen?.unacknowledged ?? 0),
                    restarts: max(0, (restarts[worker.slot] ?? 0)), ready: seen?.isReady ?? false,
                    uptimeSeconds: Int((now - worker.started).components.seconds))
            },
            accepted: dispatched?.accepted, redispatched: dispatched?.redispatched, waiting: dispatched?.waiting,
            generation: generation)
    }
}
