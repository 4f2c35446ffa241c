import Glibc
import Testing
@testable import SocketShareServer

/// The dispatcher's decisions without a socket: connections are numbers, workers are pids.
extension SocketShareTests {
    @Suite struct WorkerPoolTests {
        typealias Pool = WorkerPool<Int>
        let now = ContinuousClock.now

        func pool(_ policy: Supervisor.Policy = .roundRobin, limit: Int = 2, workers: [pid_t] = [1, 2]) -> Pool {
            var pool = Pool(policy: policy, limit: limit)
            for pid in workers { pool.add(pid: pid, generation: 1, accepting: true) }
            return pool
        }

        /// Assigns and marks everything as sent; returns who got which connections.
        func dispatch(_ pool: inout Pool) -> [pid_t: [Int]] {
            var given: [pid_t: [Int]] = [:]
            for (pid, batch) in pool.assign() {
                pool.sent(batch, to: pid, at: now)
                given[pid, default: []] += batch.map(\.connection)
            }
            return given
        }

        @Test func roundRobinTakesTurnsAndStopsAtTheInFlightLimit() {
            var pool = pool()
            for connection in 1...5 { pool.enqueue(connection) }
            #expect(pool.room() == -1)
            #expect(dispatch(&pool) == [1: [1, 3], 2: [2, 4]])
            #expect(pool.waiting.map(\.connection) == [5])
            #expect(!pool.hasRoom() && !pool.isSettled)
            // An acknowledgement frees room; the waiting one goes where there is room.
            let ids = pool.member(1)!.unacknowledged.keys.sorted()
            #expect(pool.acknowledge([ids[0]], by: 1, active: 0) == [1])
            #expect(dispatch(&pool) == [1: [5]])
        }

        @Test func connectionsAWorkerServesStillCountAgainstItsLimit() {
            var pool = pool(limit: 2, workers: [1])
            pool.enqueue(10)
            _ = dispatch(&pool)
            let id = pool.member(1)!.unacknowledged.keys.first!
            _ = pool.acknowledge([id], by: 1, active: 2)
            #expect(pool.member(1)?.inFlight == 2 && !pool.hasRoom())
            pool.report(0, by: 1)
            #expect(pool.hasRoom() && pool.member(1)?.handled == 1)
        }

        @Test func leastLoadedPicksTheWorkerWithTheFewest() {
            var pool = pool(.leastLoaded, limit: 10, workers: [1, 2])
            pool.report(3, by: 1)
            for connection in 1...4 { pool.enqueue(connection) }
            #expect(dispatch(&pool) == [2: [1, 2, 3], 1: [4]])
        }

        @Test func whatAWorkerRefusesOrLeavesBehindGoesToTheOthersFirst() {
            var pool = pool(limit: 4)
            for connection in 1...4 { pool.enqueue(connection) }
            _ = dispatch(&pool)
            pool.enqueue(5)
            let ids = pool.member(1)!.unacknowledged.keys.sorted()
            #expect(pool.refuse(ids, by: 1) == 2)
            #expect(pool.waiting.map(\.connection) == [1, 3, 5])
            let retired = pool.retire(1)
            let retiredAgain = pool.retire(1)
            #expect(retired && !retiredAgain)
            #expect(dispatch(&pool) == [2: [1, 3]])
            // Worker 2 dies: all four it had go back, ahead of the one still waiting, oldest first.
            #expect(pool.remove(2) == 4)
            #expect(pool.waiting.map(\.connection) == [1, 2, 3, 4, 5], "in the order they were accepted")
            #expect(pool.redispatched == 6 && pool.accepted == 5)
            #expect(pool.assign().isEmpty, "nobody eligible is left")
        }

        @Test func aReloadPromotesTheNewGenerationAndRetiresTheRest() {
            var pool = pool(workers: [1])
            pool.add(pid: 2, generation: 2, accepting: false)
            pool.enqueue(1)
            #expect(dispatch(&pool) == [1: [1]])
            #expect(pool.promote(generation: 2) == [1])
            pool.enqueue(2)
            #expect(dispatch(&pool) == [2: [2]])
            #expect(pool.member(1)?.isEligible == false && pool.member(2)?.isAccepting == true)
        }

        @Test func aStalledWorkerTakesNoMoreAndTheOldestSendIsKnown() {
            var pool = pool(limit: 4, workers: [1])
            pool.enqueue(1)
            for (pid, batch) in pool.assign() { pool.sent(batch, to: pid, at: now) }
            pool.enqueue(2)
            for (pid, batch) in pool.assign() { pool.sent(batch, to: pid, at: now + .seconds(1)) }
            #expect(pool.oldestSent(1) == now)
            let first = pool.member(1)!.unacknowledged.first { $0.value == 1 }!.key
            _ = pool.acknowledge([first], by: 1, active: 0)
            #expect(pool.oldestSent(1) == now + .seconds(1))
            pool.stall(1)
            pool.enqueue(3)
            #expect(pool.assign().isEmpty && !pool.hasRoom())
        }

        @Test func anUnsentBatchWaitsAgainAndSettlingNeedsEveryAcknowledgement() {
            var pool = pool(workers: [1])
            pool.enqueue(1)
            let batches = pool.assign()
            #expect(pool.waiting.isEmpty)
            pool.unsent(batches[0].batch)
            #expect(pool.waiting.map(\.connection) == [1])
            _ = dispatch(&pool)
            #expect(!pool.isSettled)
            _ = pool.acknowledge(Array(pool.member(1)!.unacknowledged.keys), by: 1, active: 1)
            #expect(pool.isSettled)
        }

        @Test func unprovenWorkersArePutOnProbationOneAtATimePerGroup() {
            var pool = Pool(policy: .roundRobin, limit: 8)
            pool.add(pid: 1, generation: 0, accepting: true, probationGroup: 500)
            pool.ready(1)
            for pid in pid_t(-2)...pid_t(-1) {
                pool.add(pid: pid, generation: 0, accepting: true, probationGroup: 500)
                pool.ready(pid)
            }
            pool.enqueue(100)
            // The first worker of the group gets one connection; nobody else of its group meanwhile.
            #expect(dispatch(&pool) == [1: [100]])
            for connection in 101...103 { pool.enqueue(connection) }
            #expect(dispatch(&pool).isEmpty, "no other unproven worker of that group while one is on probation")
            let first = pool.member(1)!.unacknowledged.keys.sorted()
            _ = pool.acknowledge(first, by: 1, active: 1)
            #expect(pool.member(1)?.isProven == true)
            // Proven, it takes its share; one more of the group is probed.
            let given = dispatch(&pool)
            #expect(given.values.map(\.count).reduce(0, +) == 3)
            #expect(given.keys.filter { $0 < 0 }.count == 1 && given[1] != nil, "\(given)")
        }

        @Test func whatAStalledProbeLeftGoesToAProvenWorkerAndNotToTheNextProbe() {
            var pool = Pool(policy: .roundRobin, limit: 8)
            pool.add(pid: 1, generation: 0, accepting: true)
            pool.ready(1)
            pool.add(pid: -2, generation: 0, accepting: true, probationGroup: 0)
            pool.ready(-2)
            pool.add(pid: -3, generation: 0, accepting: true, probationGroup: 0)
            pool.ready(-3)
            for connection in 1...3 { pool.enqueue(connection) }
            let first = dispatch(&pool)
            #expect(first.keys.filter { $0 < 0 }.count == 1, "one probe: \(first)")
            let probe = first.keys.first { $0 < 0 }!
            pool.stall(probe)
            #expect(pool.remove(probe) == 1)
            #expect(dispatch(&pool) == [1: first[probe]!], "the orphan went to the proven worker")
        }

        @Test func aWorkerThatLeavesAConnectionUnacknowledgedIsSentNoMoreUntilItAcknowledges() {
            var pool = Pool(policy: .roundRobin, limit: 8, suspectAfter: .milliseconds(500))
            pool.add(pid: 1, generation: 1, accepting: true)
            pool.add(pid: 2, generation: 1, accepting: true)
            pool.enqueue(1)
            for (pid, batch) in pool.assign(at: now) { pool.sent(batch, to: pid, at: now) }
            for connection in 2...5 { pool.enqueue(connection) }
            let later = now + .seconds(1)
            var given: [pid_t: [Int]] = [:]
            for (pid, batch) in pool.assign(at: later) {
                pool.sent(batch, to: pid, at: later)
                given[pid, default: []] += batch.map(\.connection)
            }
            #expect(given == [2: [2, 3, 4, 5]], "worker 1 sat on its connection for a second: \(given)")
            #expect(!pool.hasRoom(at: later + .seconds(1)), "both sat on theirs: no room, the listeners wait")
            _ = pool.acknowledge(Array(pool.member(1)!.unacknowledged.keys), by: 1, active: 1)
            #expect(pool.hasRoom(at: later + .seconds(1)))
        }
    }
}
