import Glibc
import SocketShare
import SocketShareCore

/// Reloads: a new generation of workers on the same listeners, promoted once all of it is ready,
/// rolled back otherwise. On the supervisor's reactor thread; the decisions are ``SupervisorState``'s.
extension Supervisor {
    /// Starts a new generation. `requester` (a `reload` on the control socket) is answered once the
    /// new generation is serving, or has been rolled back.
    func beginReload(deadline: Duration, requester: DescriptorChannel?) {
        let begun: (generation: Int, stragglers: [pid_t])
        switch state.beginReload(now: .now, deadline: deadline) {
        case .failure(let refusal):
            reply(requester, ok: false, reason: refusal.description, generation: nil)
            logger.warning("reload refused: \(refusal)")
            return
        case .success(let value):
            begun = value
        }
        reloadRequester = requester
        for pid in begun.stragglers {
            logger.warning("an older generation is still draining at the next reload: SIGKILL", metadata: ["pid": "\(pid)"])
            _ = Glibc.kill(pid, SIGKILL)
        }
        let generation = begun.generation
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
        if state.reloadStarted(started) { finishReload(failure: nil) }
        armTimer()
    }

    /// Ends the reload under way: with `failure` nil the new generation takes over and the old one
    /// drains; otherwise the new generation is stopped and the old serves on.
    func finishReload(failure: String?) {
        let requester = reloadRequester
        reloadRequester = nil
        let now = ContinuousClock.now
        if let failure {
            guard let (reload, doomed) = state.failReload(now: now) else { return }
            for pid in doomed { _ = Glibc.kill(pid, SIGTERM) }
            record(kind: "reload", generation: reload.generation, succeeded: false, reason: failure, since: reload.started)
            logger.error("reload to generation \(reload.generation) failed; generation \(state.currentGeneration) serves on: \(failure)")
            tellServiceManager("READY=1\nSTATUS=reload failed: \(failure)")
            reply(requester, ok: false, reason: failure, generation: reload.generation)
            armTimer()
            return
        }
        guard let (reload, retiring) = state.completeReload(now: now, drainTimeout: configuration.drainTimeout) else { return }
        if let dispatcher {
            // New connections go to the new generation only; the old is told to finish and exit.
            dispatcher.promote(generation: reload.generation)
        } else {
            // Socket-activated servers stop accepting and finish their connections on SIGTERM.
            for pid in retiring { _ = Glibc.kill(pid, SIGTERM) }
        }
        let reason = "generation \(reload.generation) serves; \(retiring.count) old workers drain (deadline \(configuration.drainTimeout))"
        record(kind: "reload", generation: reload.generation, succeeded: true, reason: reason, since: reload.started)
        logger.notice("reload done: \(reason)")
        tellServiceManager("READY=1\nSTATUS=serving generation \(reload.generation)")
        reply(requester, ok: true, reason: reason, generation: reload.generation)
        armTimer()
    }

    /// Keeps how the latest reload or upgrade ended, for ``status()``.
    func record(kind: String, generation: Int, succeeded: Bool, reason: String, since started: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - started
        lastReload = ServeStatus.ReloadOutcome(
            kind: kind, generation: generation, succeeded: succeeded, reason: reason,
            finishedAt: ShareTime.iso8601(milliseconds: ShareTime.nowMilliseconds),
            milliseconds: Int(elapsed / .milliseconds(1)))
    }

    /// Answers a `reload` or `upgrade` request: `{"ok":true|false,"generation":N,"reason":"…"}`.
    func reply(_ requester: DescriptorChannel?, ok: Bool, reason: String, generation: Int?) {
        guard let requester else { return }
        let answer = ControlAnswer(ok: ok, reason: reason, generation: generation)
        try? requester.send(answer.json, deadline: .now + .seconds(1))
    }

    var monotonicMicroseconds: Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return now.tv_sec * 1_000_000 + now.tv_nsec / 1000
    }
}
