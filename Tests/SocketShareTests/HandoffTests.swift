import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// `sockshare serve --mode handoff`: connections handed to workers, none lost when workers die,
/// stall or refuse; backpressure when all are full; nothing leaks.
extension SocketShareTests {
    @Suite struct HandoffTests {
        init() { TestEnvironment.prepare() }

        static let listen = ["--listen", "web=tcp://127.0.0.1:0", "--mode", "handoff"]

        @Test func aWorkerStoppedThenKilledUnderLoadLosesNoQueuedConnection() throws {
            let serve = try ServeProcess(Self.listen + ["--stall-timeout", "60"], command: [Paths.helper, "--worker", "serve"], workers: 3)
            let address = try serve.address()
            let victim = try serve.status().workers[0]
            var unfinishedAtKill = 0
            let result = try LoadClient(address: address, count: 3000, threads: 16).run {
                // Let the load run, stop one worker so that connections queue for it, then kill it.
                _ = eventually(timeout: .seconds(20)) { ((try? serve.status().accepted) ?? 0) > 300 }
                kill(victim.pid, SIGSTOP)
                // Wait until most client threads are stuck on connections queued for it.
                _ = eventually(timeout: .seconds(10)) {
                    ((try? serve.status().workers.first { $0.pid == victim.pid }?.unacknowledged) ?? 0) >= 8
                }
                let seen = try serve.status().workers.first { $0.pid == victim.pid }
                unfinishedAtKill = (seen?.inFlight ?? 0) - (seen?.unacknowledged ?? 0)
                kill(victim.pid, SIGKILL)
            }
            let status = try serve.status()
            print("kill test: \(result); unfinished at kill \(unfinishedAtKill); redispatched \(status.redispatched ?? -1)")
            #expect(result.opened == 3000)
            #expect(result.refused == 0 && result.timedOut == 0, "\(result)")
            // Only a connection the dead worker had taken and was serving may be lost.
            #expect(result.failed <= max(unfinishedAtKill, 0), "\(result); unfinished at kill: \(unfinishedAtKill)")
            #expect(result.answered + result.failed == 3000)
            #expect((status.redispatched ?? 0) >= 8, "the queued connections went to the others")
            #expect(result.byPid.keys.count >= 2)
            #expect(eventually { (try? serve.status().workers.count) == 3 }, "the dead worker is replaced")
            #expect(try serve.status().workers.contains { $0.slot == 0 && $0.restarts == 1 && $0.pid != victim.pid })
            #expect(try serve.stop() == .exited(0))
        }

        @Test func aStalledWorkerIsKilledAndItsConnectionsGoElsewhere() throws {
            let serve = try ServeProcess(Self.listen + ["--stall-timeout", "1"], command: [Paths.helper, "--worker", "serve"], workers: 2)
            let address = try serve.address()
            let victim = try serve.status().workers[1]
            kill(victim.pid, SIGSTOP)
            let result = LoadClient(address: address, count: 200, threads: 4).run()
            #expect(result.answered == 200, "\(result)")
            #expect(result.byPid[String(victim.pid)] == nil)
            #expect(serve.log.contains("killing stalled worker \(victim.pid)"))
            #expect(eventually { (try? serve.status().workers.contains { $0.slot == 1 && $0.pid != victim.pid }) == true })
            try serve.stop()
        }

        @Test func aRefusingWorkersConnectionsAreServedByAnother() throws {
            // Slot 0 refuses everything; slot 1 serves. (The helper picks its mode from its slot.)
            let serve = try ServeProcess(
                Self.listen, command: ["/bin/sh", "-c", "if [ \"$SOCKSHARE_WORKER_INDEX\" = 0 ]; then exec \"$0\" --worker refuse; else exec \"$0\" --worker serve; fi", Paths.helper],
                workers: 2)
            let result = LoadClient(address: try serve.address(), count: 300, threads: 2).run()
            #expect(result.answered == 300, "\(result)")
            #expect(result.byPid.count == 1)
            #expect((try serve.status().redispatched ?? 0) > 0)
            try serve.stop()
        }

        @Test func whenEveryWorkerIsFullConnectionsWaitInTheKernelNotInMemory() throws {
            let serve = try ServeProcess(
                Self.listen + ["--max-in-flight", "2"], command: [Paths.helper, "--worker", "slow", "100"], workers: 2)
            let address = try serve.address()
            var worst = 0
            let result = try LoadClient(address: address, count: 30, threads: 12).run {
                for _ in 0..<40 {
                    let status = try serve.status()
                    let handled = status.workers.reduce(0) { $0 + ($1.handled ?? 0) }
                    worst = max(worst, (status.accepted ?? 0) - handled + (status.workers.reduce(0) { $0 + ($1.inFlight ?? 0) }))
                    usleep(50_000)
                }
            }
            #expect(result.answered == 30, "\(result)")
            // Accepted but not yet in a worker's hands, plus in flight, never beyond 2 per worker (x2 for the sum).
            #expect(worst <= 2 * 2 * 2, "at worst \(worst) connections held by sockshare")
            try serve.stop()
        }

        @Test func aPythonWorkerTakesConnections() throws {
            let serve = try ServeProcess(Self.listen, command: ["python3", CommandLineTests.scripts + "/worker.py"], workers: 2)
            let result = LoadClient(address: try serve.address(), count: 100, threads: 2).run()
            #expect(result.answered == 100, "\(result)")
            let answer = LoadClient.request(try serve.address(), timeout: .seconds(10)).answer ?? ""
            #expect(answer.hasPrefix("hello from python") && answer.hasSuffix("on web"), "\(answer)")
            try serve.stop()
        }

        @Test func descriptorCountsReturnToBaselineAfterTenThousandConnections() throws {
            let serve = try ServeProcess(Self.listen, command: [Paths.helper, "--worker", "serve"], workers: 2)
            let address = try serve.address()
            _ = LoadClient(address: address, count: 100, threads: 2).run()
            let workers = try serve.status().workers.map(\.pid)
            let settle: (pid_t) -> Int = { pid in
                var previous = ServeProcess.descriptorCount(pid)
                while true {
                    usleep(100_000)
                    let now = ServeProcess.descriptorCount(pid)
                    if now == previous { return now }
                    previous = now
                }
            }
            let supervisorBaseline = settle(serve.process.pid)
            let workerBaselines = workers.map(settle)
            let result = LoadClient(address: address, count: 10_000, threads: 4).run()
            #expect(result.answered == 10_000, "\(result)")
            #expect(try serve.status().workers.map(\.pid) == workers, "no worker was restarted")
            #expect(eventually { settle(serve.process.pid) == supervisorBaseline })
            #expect(workers.map(settle) == workerBaselines)
            try serve.stop()
        }

        @Test func sigtermDrainsAndExitsZero() throws {
            let serve = try ServeProcess(Self.listen, command: [Paths.helper, "--worker", "slow", "300"], workers: 1)
            let address = try serve.address()
            // Three connections in progress when SIGTERM arrives: all are answered before exit.
            let result = try LoadClient(address: address, count: 3, threads: 3).run {
                _ = eventually { ((try? serve.status().accepted) ?? 0) == 3 }
                try serve.process.signal(SIGTERM)
            }
            #expect(result.answered == 3, "\(result)")
            #expect(try serve.process.wait(deadline: .now + .seconds(30)) == .exited(0))
            #expect(serve.log.contains("stopped"))
        }
    }
}
