import Glibc
import Testing
@testable import SocketShareServer

/// The supervisor's decisions without a process: restarts and their backoff, readiness, reloads
/// that complete or roll back, drains that escalate, and upgrades that may or may not begin.
extension SocketShareTests {
    @Suite struct SupervisorStateTests {
        let start = ContinuousClock.now

        func worker(_ pid: pid_t, slot: Int, generation: Int = 1, ready: Bool = false) -> SupervisorState.Worker {
            var worker = SupervisorState.Worker(pid: pid, slot: slot, generation: generation, started: start, isChild: true)
            worker.isReady = ready
            return worker
        }

        /// Two workers of generation 1, both ready.
        func serving() -> SupervisorState {
            var state = SupervisorState(workerCount: 2)
            state.started(worker(101, slot: 0))
            state.started(worker(102, slot: 1))
            _ = state.ready(101)
            _ = state.ready(102)
            return state
        }

        @Test func theBackoffDoublesUpToItsCapAndStartsOverAfterAHealthyRun() {
            var backoff = RestartBackoff()
            let delays = (0..<9).map { _ in backoff.delay(forSlot: 0, uptime: .milliseconds(50)) }
            #expect(delays.prefix(4) == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800)])
            #expect(delays.last == .seconds(10))
            #expect(backoff.delay(forSlot: 0, uptime: .seconds(11)) == .milliseconds(100))
            #expect(backoff.delay(forSlot: 1, uptime: nil) == .milliseconds(100))
            #expect(backoff.restarts == [0: 10, 1: 1])
        }

        @Test func theServiceManagerHearsReadyOnceTheWholeFirstGenerationIs() {
            var state = SupervisorState(workerCount: 2)
            state.started(worker(101, slot: 0))
            state.started(worker(102, slot: 1))
            #expect(state.ready(101)?.startupComplete == false)
            #expect(state.ready(102)?.startupComplete == true)
            #expect(state.ready(102)?.startupComplete == false)
            #expect(state.ready(999) == nil)
        }

        @Test func aCrashedWorkerRestartsAfterItsBackoff() {
            var state = serving()
            #expect(state.exited(101, now: start + .seconds(1)) == .restart(slot: 0, at: start + .seconds(1) + .milliseconds(100)))
            #expect(state.nextDeadline == start + .seconds(1) + .milliseconds(100))
            #expect(state.due(at: start + .seconds(1)).restarts.isEmpty)
            #expect(state.due(at: start + .seconds(2)).restarts == [0])
            #expect(state.nextDeadline == nil)
            #expect(state.exited(101, now: start) == .nothing, "a pid already reaped")
        }

        @Test func aReloadCompletesWhenItsWorkersAreReadyAndTheOldGenerationDrains() throws {
            var state = serving()
            let begun = try state.beginReload(now: start, deadline: .seconds(30)).get()
            #expect(begun.generation == 2 && begun.stragglers.isEmpty)
            #expect(throws: SupervisorState.Refusal.self) { try state.beginReload(now: start, deadline: .seconds(30)).get() }
            #expect(state.beginUpgrade(binary: "/bin/x", now: start, deadline: .seconds(30)) == SupervisorState.Refusal("a reload is in progress"))
            state.started(worker(201, slot: 0, generation: 2))
            state.started(worker(202, slot: 1, generation: 2))
            let readyAtOnce = state.reloadStarted([201, 202])
            #expect(!readyAtOnce)
            #expect(state.ready(201)?.reloadComplete == false)
            #expect(state.ready(202)?.reloadComplete == true)
            let completed = state.completeReload(now: start + .seconds(1), drainTimeout: .seconds(10))
            let (reload, retiring) = try #require(completed)
            #expect(reload.generation == 2 && retiring == [101, 102] && state.currentGeneration == 2)
            // An old worker leaving is no reason to restart its slot.
            #expect(state.exited(101, now: start + .seconds(2)) == .nothing)
            // The other ignores its stop: SIGTERM at the drain deadline, SIGKILL 2 s later, once.
            #expect(state.due(at: start + .seconds(11)).terminate == [102])
            #expect(state.due(at: start + .seconds(12)).kill.isEmpty)
            #expect(state.due(at: start + .seconds(13)).kill == [102])
            #expect(state.due(at: start + .seconds(20)).kill.isEmpty)
        }

        @Test func aReloadWhoseWorkerDiesOrIsLateRollsBack() throws {
            var state = serving()
            _ = try state.beginReload(now: start, deadline: .seconds(5)).get()
            state.started(worker(201, slot: 0, generation: 2))
            state.started(worker(202, slot: 1, generation: 2))
            _ = state.reloadStarted([201, 202])
            #expect(state.exited(201, now: start + .seconds(1)) == .rollback)
            let rolledBack = state.failReload(now: start + .seconds(1))
            let (failed, doomed) = try #require(rolledBack)
            #expect(failed.generation == 2 && doomed == [202] && state.currentGeneration == 1)
            #expect(state.due(at: start + .seconds(1)).terminate.isEmpty, "SIGTERM was sent with the rollback")
            #expect(state.due(at: start + .seconds(3)).kill == [202])

            // The next reload is late: its deadline says so, with who never became ready.
            let next = try state.beginReload(now: start + .seconds(10), deadline: .seconds(5)).get()
            #expect(next.generation == 3)
            state.started(worker(301, slot: 0, generation: 3))
            _ = state.reloadStarted([301])
            #expect(state.due(at: start + .seconds(15)).reloadLate == [301])
        }

        @Test func oldGenerationsAreCapped() throws {
            var state = serving()
            for generation in 2...4 {
                _ = try state.beginReload(now: start, deadline: .seconds(30)).get()
                state.started(worker(pid_t(generation * 100), slot: 0, generation: generation, ready: true))
                _ = state.reloadStarted([pid_t(generation * 100)])
                _ = state.completeReload(now: start, drainTimeout: .seconds(600))
            }
            // Generation 1's workers still drain; a fifth generation would make five at once.
            let begun = try state.beginReload(now: start, deadline: .seconds(30)).get()
            #expect(begun.generation == 5 && begun.stragglers == [101, 102])
        }

        @Test func stoppingEndsRestartsAndRefusesReloadsAndUpgrades() {
            var state = serving()
            _ = state.exited(101, now: start)
            #expect(state.beginUpgrade(binary: "/bin/x", now: start, deadline: .seconds(5)) == nil)
            let pending = state.beginStopping()
            #expect(pending.reload == false && pending.upgrade == true)
            #expect(state.due(at: start + .seconds(60)).restarts.isEmpty)
            #expect(throws: SupervisorState.Refusal("the supervisor is stopping")) {
                try state.beginReload(now: start, deadline: .seconds(5)).get()
            }
            #expect(state.terminateAll(now: start + .seconds(10)) == [102])
            #expect(state.due(at: start + .seconds(12)).kill == [102])
        }

        @Test func anUpgradeHandsOverOnceAndNoSlotRestartsMeanwhile() {
            var state = serving()
            _ = state.exited(101, now: start)
            #expect(state.beginUpgrade(binary: "/bin/x", now: start, deadline: .seconds(5)) == nil)
            #expect(state.beginUpgrade(binary: "/bin/y", now: start, deadline: .seconds(5)) != nil)
            state.successorStarted(4242)
            #expect(state.isHandingOver)
            #expect(state.due(at: start + .seconds(1)).restarts.isEmpty, "the slots may be the successor's to fill")
            #expect(state.due(at: start + .seconds(5)).upgradeLate)
            #expect(state.finishUpgrade(succeeded: true)?.successor == 4242)
            #expect(state.isHandedOver)
            #expect(state.exited(102, now: start + .seconds(6)) == .nothing)
        }
    }
}
