import Glibc
import SocketShare
import SocketShareCore

extension Supervisor {
    /// How many generations may run at once: the one starting, the current one, and two draining. A
    /// reload kills the workers of older generations still draining (they survived several reloads
    /// and their drain deadlines), so old generations never pile up.
    package static let generationCap = 4

    /// Starts a new generation. The answer to `requester` (a `reload` on the control socket) is sent
    /// once the new generation is serving, or has been rolled back.
    package func beginReload(deadline: Duration, requester: DescriptorChannel?) {
        let refusal: String? = state.withLock { state in
            if state.stopping { return "the supervisor is stopping" }
            if let reload = state.reload { return "a reload is already in progress (generation \(reload.generation))" }
            if state.upgrade != nil { return "an upgrade is in progress" }
            return nil
        }
        if let refusal {
            reply(requester, ok: false, reason: refusal, generation: nil)
            logger.warning("reload refused: \(refusal)")
            return
        }
        // The generation cap: stragglers of generations too old go now.
        let stragglers = state.withLock { state in
            state.workers.filter { $0.generation <= state.generation + 1 - Self.generationCap && $0.drainDeadline != nil }
                .map(\.process.pid)
        }
        for pid in stragglers {
            logger.warning("an older generation is still draining at the next reload: SIGKILL", metadata: ["pid": "\(pid)"])
            _ = Glibc.kill(pid, SIGKILL)
        }
        let generation = state.withLock { state -> Int in
            state.generation += 1
            state.reload = ReloadAttempt(
                generation: state.generation, started: .now, deadline: .now + deadline, waiting: [], requester: requester)
            return state.generation
        }
        tellServiceManager("RELOADING=1\nMONOTONIC_USEC=\(monotonicMicroseconds)\nSTATUS=reloading: starting generation \(generation)")
        logger.notice("reload: starting generation \(generation)", metadata: ["deadline": "\(deadline)"])
        var started: [pid_t] = []
        for slot in 0..<configuration.workers {
            guard let pid = start(slot: slot, generation: generation, accepting: false) else {
                finishReload(failure: "could not start a worker of generation \(generation)")
                return
            }
            started.append(pid)
        }
        let done = state.withLock { state -> Bool in
            guard state.reload?.generation == generation else { return false }
            let ready = Set(state.workers.filter { $0.isReady }.map(\.process.pid))
            state.reload!.waiting = Set(started).subtracting(ready)
            return state.reload!.waiting.isEmpty
        }
        if done { finishReload(failure: nil) }
    }

    /// Ends the reload under way: with `failure` nil the new generation takes over and the old one
    /// drains; otherwise the new generation is stopped and the old serves on.
    package func finishReload(failure: String?) {
        guard let reload = state.withLock({ state -> ReloadAttempt? in
            defer { state.reload = nil }
            return state.reload
        }) else { return }
        let elapsed = ContinuousClock.now - reload.started
        let milliseconds = Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
        if let failure {
            let doomed = state.withLock { state -> [Worker] in
                for index in state.workers.indices where state.workers[index].generation == reload.generation {
                    state.workers[index].drainDeadline = .now
                    state.workers[index].killAt = .now + Self.killGrace
                }
                return state.workers.filter { $0.generation == reload.generation }
            }
            for worker in doomed { try? worker.process.signal(SIGTERM) }
            record(kind: "reload", generation: reload.generation, succeeded: false, reason: failure, milliseconds: milliseconds)
            logger.error("reload to generation \(reload.generation) failed; generation \(state.withLock { $0.currentGeneration }) serves on: \(failure)")
            tellServiceManager("READY=1\nSTATUS=reload failed: \(failure)")
            reply(reload.requester, ok: false, reason: failure, generation: reload.generation)
            return
        }
        let deadline = ContinuousClock.now + configuration.drainTimeout
        let retiring = state.withLock { state -> [Worker] in
            state.currentGeneration = reload.generation
            state.pendingRestarts.removeAll()
            for index in state.workers.indices where state.workers[index].generation != reload.generation && state.workers[index].drainDeadline == nil {
                state.workers[index].drainDeadline = deadline
            }
            return state.workers.filter { $0.generation != reload.generation }
        }
        if let dispatcher {
            // New connections go to the new generation only; the old is told to finish and exit.
            dispatcher.promote(generation: reload.generation)
        } else {
            // Socket-activated servers stop accepting and finish their connections on SIGTERM.
            for worker in retiring { try? worker.process.signal(SIGTERM) }
        }
        let reason = "generation \(reload.generation) serves; \(retiring.count) old workers drain (deadline \(configuration.drainTimeout))"
        record(kind: "reload", generation: reload.generation, succeeded: true, reason: reason, milliseconds: milliseconds)
        logger.notice("reload done: \(reason)", metadata: ["milliseconds": "\(milliseconds)"])
        tellServiceManager("READY=1\nSTATUS=serving generation \(reload.generation)")
        reply(reload.requester, ok: true, reason: reason, generation: reload.generation)
    }

    package func record(kind: String, generation: Int, succeeded: Bool, reason: String, milliseconds: Int) {
        let outcome = ServeStatus.ReloadOutcome(
            kind: kind, generation: generation, succeeded: succeeded, reason: reason,
            finishedAt: ShareTime.iso8601(milliseconds: ShareTime.nowMilliseconds), milliseconds: milliseconds)
        state.withLock { $0.lastReload = outcome }
    }

    /// Answers a `reload` or `upgrade` request: `{"ok":true|false,"generation":N,"reason":"…"}`.
    package func reply(_ requester: DescriptorChannel?, ok: Bool, reason: String, generation: Int?) {
        guard let requester else { return }
        let answer = ControlAnswer(ok: ok, reason: reason, generation: generation)
        try? requester.send(answer.json, deadline: .now + .seconds(1))
    }

    package var monotonicMicroseconds: Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return now.tv_sec * 1_000_000 + now.tv_nsec / 1000
    }
}
