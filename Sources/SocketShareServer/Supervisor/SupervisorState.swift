import Glibc

/// The supervisor's decisions, apart from its I/O: which workers run in which generation, when a
/// crashed slot restarts, when a reload completes or is rolled back, when draining workers are
/// sent `SIGTERM` and then `SIGKILL`, and whether an upgrade may begin.
///
/// A pure value: time comes in as arguments and every method returns what the supervisor must do
/// (start, signal, promote, answer), which it then does. Unit-tested without a process.
package struct SupervisorState: Sendable {
    /// A running worker process, as the decisions see it.
    package struct Worker: Sendable, Equatable {
        package var pid: pid_t
        package var slot: Int
        package var generation: Int
        package var started: ContinuousClock.Instant
        /// False for workers inherited from a predecessor supervisor: they are not our children.
        package var isChild: Bool
        package var isReady = false
        /// Set when the worker's generation was replaced: it must be gone by then.
        package var drainDeadline: ContinuousClock.Instant? = nil
        /// When `SIGKILL` follows the `SIGTERM` it was sent.
        package var killAt: ContinuousClock.Instant? = nil
        /// Whether it was sent `SIGKILL`.
        package var isKilled = false

        package init(pid: pid_t, slot: Int, generation: Int, started: ContinuousClock.Instant, isChild: Bool) {
            self.pid = pid
            self.slot = slot
            self.generation = generation
            self.started = started
            self.isChild = isChild
        }
    }

    /// A reload under way: the new generation, and its workers not ready yet.
    package struct Reload: Sendable, Equatable {
        package var generation: Int
        package var started: ContinuousClock.Instant
        package var deadline: ContinuousClock.Instant
        package var waiting: Set<pid_t> = []
    }

    /// A supervisor upgrade under way.
    package struct Upgrade: Sendable, Equatable {
        package var binary: String
        package var started: ContinuousClock.Instant
        package var deadline: ContinuousClock.Instant
        /// Set once the successor runs.
        package var successor: pid_t?
    }

    /// What a worker's exit leads to.
    package enum Exit: Equatable {
        /// Nothing: it was draining, or the supervisor is stopping, or it was not known.
        case nothing
        /// Its slot starts again at this time.
        case restart(slot: Int, at: ContinuousClock.Instant)
        /// It belonged to a reload's new generation that was not ready: the reload fails.
        case rollback
    }

    /// What is due at a given time.
    package struct Due: Equatable {
        /// Slots to start again now, in the current generation.
        package var restarts: [Int] = []
        /// Draining workers past their deadline: `SIGTERM`.
        package var terminate: [pid_t] = []
        /// Workers that ignored `SIGTERM` for the grace period: `SIGKILL`.
        package var kill: [pid_t] = []
        /// The reload's deadline passed with these workers not ready.
        package var reloadLate: [pid_t]? = nil
        /// The upgrade's deadline passed.
        package var upgradeLate = false
    }

    /// How many generations may run at once: the one starting, the current one, and two draining.
    /// A reload kills the workers of older generations still draining.
    package static let generationCap = 4
    /// How long a worker has between `SIGTERM` and `SIGKILL`.
    package static let killGrace: Duration = .seconds(2)

    /// How many workers the current generation has.
    package let workerCount: Int
    package private(set) var workers: [Worker] = []
    package private(set) var backoff: RestartBackoff
    private var pendingRestarts: [(slot: Int, at: ContinuousClock.Instant)] = []
    /// The latest generation started.
    package private(set) var generation: Int
    /// The generation new connections go to.
    package private(set) var currentGeneration: Int
    package private(set) var reload: Reload?
    package private(set) var upgrade: Upgrade?
    package private(set) var isStopping = false
    /// Set once a successor supervisor has everything.
    package private(set) var isHandedOver = false
    /// Whether `READY=1` went to our own service manager.
    package var toldServiceManagerReady = false

    /// A first supervisor's state, or a successor's continuing its predecessor's generations.
    package init(workerCount: Int, generation: Int = 1, currentGeneration: Int = 1, restarts: [Int: Int] = [:]) {
        self.workerCount = workerCount
        self.generation = generation
        self.currentGeneration = currentGeneration
        backoff = RestartBackoff(restarts: restarts)
    }

    /// Whether a successor runs, and the workers and control socket are about to be its own.
    package var isHandingOver: Bool { upgrade?.successor != nil }

    /// The worker with `pid`.
    package func worker(_ pid: pid_t) -> Worker? { workers.first { $0.pid == pid } }

    // MARK: Workers

    /// A worker started (or was inherited).
    package mutating func started(_ worker: Worker) {
        workers.append(worker)
    }

    /// A worker could not be started: its slot is tried again later (only in the current generation).
    package mutating func failedToStart(slot: Int, generation: Int, now: ContinuousClock.Instant) {
        guard generation == currentGeneration else { return }
        pendingRestarts.append((slot, now + backoff.delay(forSlot: slot, uptime: nil)))
    }

    /// A worker said it is ready. Returns whether that completes the reload under way, and whether
    /// the first generation is now complete and ready (time to tell the service manager, once).
    package mutating func ready(_ pid: pid_t) -> (reloadComplete: Bool, startupComplete: Bool)? {
        guard let index = workers.firstIndex(where: { $0.pid == pid }) else { return nil }
        workers[index].isReady = true
        var reloadComplete = false
        if reload != nil {
            reload!.waiting.remove(pid)
            reloadComplete = reload!.waiting.isEmpty
        }
        let current = workers.filter { $0.generation == currentGeneration && $0.drainDeadline == nil }
        let startupComplete = !toldServiceManagerReady && reload == nil && current.count == workerCount
            && current.allSatisfy(\.isReady)
        if startupComplete { toldServiceManagerReady = true }
        return (reloadComplete, startupComplete)
    }

    /// A worker ended. It is forgotten; what follows is returned.
    package mutating func exited(_ pid: pid_t, now: ContinuousClock.Instant) -> Exit {
        guard let index = workers.firstIndex(where: { $0.pid == pid }) else { return .nothing }
        let ended = workers.remove(at: index)
        if isStopping || isHandedOver || ended.drainDeadline != nil { return .nothing }
        if let reload, reload.generation == ended.generation { return .rollback }
        guard ended.generation == currentGeneration else { return .nothing }
        let at = now + backoff.delay(forSlot: ended.slot, uptime: now - ended.started)
        pendingRestarts.append((ended.slot, at))
        return .restart(slot: ended.slot, at: at)
    }

    /// What is due at `now`: restarts, `SIGTERM`s and `SIGKILL`s for draining workers, late
    /// reloads and upgrades. Signals are recorded as sent.
    package mutating func due(at now: ContinuousClock.Instant) -> Due {
        var due = Due()
        // No restarts while a successor takes over: the slots may be its to fill.
        if !isHandingOver && !isStopping {
            due.restarts = pendingRestarts.filter { $0.at <= now }.map(\.slot)
            pendingRestarts.removeAll { $0.at <= now }
        }
        for index in workers.indices {
            if let killAt = workers[index].killAt {
                if killAt <= now && !workers[index].isKilled {
                    due.kill.append(workers[index].pid)
                    workers[index].isKilled = true
                }
            } else if let deadline = workers[index].drainDeadline, deadline <= now {
                due.terminate.append(workers[index].pid)
                workers[index].killAt = now + Self.killGrace
            }
        }
        if let reload, reload.deadline <= now { due.reloadLate = reload.waiting.sorted() }
        if let upgrade, upgrade.deadline <= now { due.upgradeLate = true }
        return due
    }

    /// When ``due(at:)`` next has something to say.
    package var nextDeadline: ContinuousClock.Instant? {
        var next: ContinuousClock.Instant? = nil
        func consider(_ instant: ContinuousClock.Instant?) {
            guard let instant else { return }
            next = min(next ?? instant, instant)
        }
        if !isHandingOver && !isStopping { for restart in pendingRestarts { consider(restart.at) } }
        for worker in workers where !worker.isKilled { consider(worker.killAt ?? worker.drainDeadline) }
        consider(reload?.deadline)
        consider(upgrade?.deadline)
        return next
    }

    // MARK: Reload

    /// Begins a reload: a new generation. Returns its number and the workers of generations too old
    /// to keep (still draining from earlier reloads; `SIGKILL` them), or why it cannot begin.
    package mutating func beginReload(
        now: ContinuousClock.Instant, deadline: Duration
    ) -> Result<(generation: Int, stragglers: [pid_t]), Refusal> {
        if isStopping { return .failure(Refusal("the supervisor is stopping")) }
        if let reload { return .failure(Refusal("a reload is already in progress (generation \(reload.generation))")) }
        if upgrade != nil { return .failure(Refusal("an upgrade is in progress")) }
        let stragglers = workers.filter { $0.generation <= generation + 1 - Self.generationCap && $0.drainDeadline != nil }.map(\.pid)
        generation += 1
        reload = Reload(generation: generation, started: now, deadline: now + deadline)
        return .success((generation, stragglers))
    }

    /// The reload's workers were started: it waits for those not ready yet. Returns whether none is
    /// left to wait for (they were ready at once).
    package mutating func reloadStarted(_ pids: [pid_t]) -> Bool {
        guard reload != nil else { return false }
        let ready = Set(workers.filter(\.isReady).map(\.pid))
        reload!.waiting = Set(pids).subtracting(ready)
        return reload!.waiting.isEmpty
    }

    /// The reload succeeded: its generation becomes current; every older worker drains by
    /// `now + drainTimeout`. Returns the reload and the workers now draining (nil when no reload
    /// was under way).
    package mutating func completeReload(now: ContinuousClock.Instant, drainTimeout: Duration) -> (Reload, retiring: [pid_t])? {
        guard let done = reload else { return nil }
        reload = nil
        currentGeneration = done.generation
        pendingRestarts.removeAll()
        for index in workers.indices where workers[index].generation != done.generation && workers[index].drainDeadline == nil {
            workers[index].drainDeadline = now + drainTimeout
        }
        return (done, workers.filter { $0.generation != done.generation }.map(\.pid))
    }

    /// The reload failed: its new workers are sent `SIGTERM` now and `SIGKILL` after the grace
    /// period; the current generation serves on. Returns the reload and the doomed workers.
    package mutating func failReload(now: ContinuousClock.Instant) -> (Reload, doomed: [pid_t])? {
        guard let failed = reload else { return nil }
        reload = nil
        for index in workers.indices where workers[index].generation == failed.generation {
            workers[index].drainDeadline = now
            workers[index].killAt = now + Self.killGrace
        }
        return (failed, workers.filter { $0.generation == failed.generation }.map(\.pid))
    }

    // MARK: Upgrade

    /// Begins an upgrade to `binary`, or says why not.
    package mutating func beginUpgrade(binary: String, now: ContinuousClock.Instant, deadline: Duration) -> Refusal? {
        if isStopping { return Refusal("the supervisor is stopping") }
        if reload != nil { return Refusal("a reload is in progress") }
        if upgrade != nil { return Refusal("an upgrade is already in progress") }
        upgrade = Upgrade(binary: binary, started: now, deadline: now + deadline)
        return nil
    }

    /// The successor runs (and has been sent everything).
    package mutating func successorStarted(_ pid: pid_t) {
        upgrade?.successor = pid
    }

    /// The successor's process is gone before it took over (it is no successor any more).
    package mutating func successorLost() {
        upgrade?.successor = nil
    }

    /// Ends the upgrade; with `succeeded`, this supervisor has handed everything over. Returns the
    /// upgrade that ended, if one was under way.
    package mutating func finishUpgrade(succeeded: Bool) -> Upgrade? {
        guard let ended = upgrade else { return nil }
        upgrade = nil
        if succeeded { isHandedOver = true }
        return ended
    }

    // MARK: Stopping

    /// Stopping: no restarts any more. Returns whether a reload and an upgrade were under way (they
    /// are to be failed).
    package mutating func beginStopping() -> (reload: Bool, upgrade: Bool) {
        isStopping = true
        pendingRestarts.removeAll()
        return (reload != nil, upgrade != nil)
    }

    /// Every worker still running gets `SIGTERM` now and `SIGKILL` after `grace` (the drain
    /// timeout passed). Returns them.
    package mutating func terminateAll(now: ContinuousClock.Instant, grace: Duration = Self.killGrace) -> [pid_t] {
        for index in workers.indices {
            workers[index].drainDeadline = now
            workers[index].killAt = now + grace
        }
        return workers.map(\.pid)
    }

    /// Why a reload or an upgrade cannot begin.
    package struct Refusal: Error, Equatable, CustomStringConvertible {
        package var description: String

        package init(_ description: String) { self.description = description }
    }
}
