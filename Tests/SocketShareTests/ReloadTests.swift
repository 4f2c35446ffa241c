import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// Reload and upgrade of `sockshare serve`: zero lost connections, readiness from the new workers
/// themselves, rollback, bounded drains, and the systemd notifications serve sends.
extension SocketShareTests {
    @Suite struct ReloadTests {
        init() { TestEnvironment.prepare() }

        static let helloWorker = Paths.helloWorker

        static func reload(_ serve: ServeProcess, deadline: Double = 20) throws -> ProgramRun {
            try ProgramRun.run(Paths.sockshare, ["reload", "--control", serve.controlPath, "--deadline", "\(deadline)"])
        }

        @Test(arguments: ["handoff", "shared"])
        func reloadsUnderLoadLoseNothing(_ mode: String) throws {
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", mode, "--drain-timeout", "10"], command: [Self.helloWorker], workers: 2)
            let address = try serve.address()
            let first = Set(try serve.status().workers.map(\.pid))
            var outcomes: [ChildProcess.Termination] = []
            let result = try LoadClient(address: address, count: 2000, threads: 4).run {
                for _ in 0..<5 {
                    outcomes.append(try Self.reload(serve).status)
                    usleep(100_000)
                }
            }
            #expect(outcomes == Array(repeating: .exited(0), count: 5))
            #expect(result.answered == result.opened && result.opened == 2000, "\(result)")
            let status = try serve.status()
            #expect(status.generation == 6)
            #expect(status.lastReload?.succeeded == true)
            #expect(eventually(timeout: .seconds(20)) {
                (try? serve.status().workers.allSatisfy { $0.generation == 6 && !$0.draining }) == true
            }, "old generations drained and exited")
            #expect(Set(try serve.status().workers.map(\.pid)).isDisjoint(with: first))
            // Every old worker finished and exited by itself: none needed a signal at a deadline.
            #expect(!serve.log.contains("SIGKILL") && !serve.log.contains("drain deadline"), "\(serve.log)")
            #expect(try serve.stop() == .exited(0))
            #expect(!serve.log.contains("killed by signal"))
        }

        /// Reloads under keep-alive load, as wrk loads a server (8 connections, each sending its next
        /// request as soon as the answer is in): apps with no drain logic of their own — the docs'
        /// sample, Hummingbird and Vapor through their own pipelines — fail no request. An idle
        /// keep-alive connection is answered once more, with `Connection: close`, rather than closed
        /// under a client that is sending.
        static func reloadUnderKeepAliveLoad(_ app: String, mode: String, reloads: Int = 3) throws {
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", mode, "--drain-timeout", "10"], command: [app], workers: 2)
            let started = ContinuousClock.now
            let load = try KeepAliveLoad(address: try serve.address(), connections: 8)
            #expect(eventually(timeout: .seconds(10)) { load.result.answered > 200 }, "\(load.result)")
            for _ in 0..<reloads {
                let before = load.result.answered
                #expect(try Self.reload(serve).status == .exited(0))
                #expect(eventually(timeout: .seconds(10)) { load.result.answered > before + 200 }, "\(load.result)")
            }
            #expect(eventually(timeout: .seconds(20)) {
                (try? serve.status().workers.allSatisfy { $0.generation == reloads + 1 }) == true
            }, "every old worker drained and exited")
            let result = load.stop()
            print("keep-alive reloads, \(app.split(separator: "/").last ?? ""), \(mode): \(reloads) reloads in \(ContinuousClock.now - started), \(result)")
            #expect(result.failed == 0 && result.timedOut == 0 && result.refused == 0, "\(result)")
            #expect(result.closedCleanly >= 8, "each connection was told to close in an answer: \(result)")
            #expect(!serve.log.contains("drain deadline"), "no connection waited for the drain deadline")
            #expect(try serve.stop() == .exited(0))
        }

        @Test(arguments: ["handoff", "shared"])
        func keepAliveReloadsOfHelloWorkerFailNothing(_ mode: String) throws {
            try Self.reloadUnderKeepAliveLoad(Self.helloWorker, mode: mode)
        }

        /// The worker of docs/WORKERS.md, as the dependent package builds it
        /// (`swift build --package-path examples/dependent-package`).
        static let docsWorker = Paths.sourceRoot + "/examples/dependent-package/.build/debug/worker"

        @Test(.enabled(if: access(docsWorker, X_OK) == 0, "examples/dependent-package is not built"), arguments: ["handoff", "shared"])
        func keepAliveReloadsOfTheDocsWorkerFailNothing(_ mode: String) throws {
            try Self.reloadUnderKeepAliveLoad(Self.docsWorker, mode: mode)
        }

        @Test(.enabled(if: access(CookbookTests.hummingbirdApp, X_OK) == 0, "examples/hummingbird-app is not built"),
              arguments: ["handoff", "shared"])
        func keepAliveReloadsOfTheHummingbirdAppFailNothing(_ mode: String) throws {
            try Self.reloadUnderKeepAliveLoad(CookbookTests.hummingbirdApp, mode: mode)
        }

        @Test(.enabled(if: access(CookbookTests.vaporApp, X_OK) == 0, "examples/vapor-app is not built"), arguments: ["handoff", "shared"])
        func keepAliveReloadsOfTheVaporAppFailNothing(_ mode: String) throws {
            try Self.reloadUnderKeepAliveLoad(CookbookTests.vaporApp, mode: mode)
        }

        /// The privilege-separation pattern: serve as root, workers dropped to nobody by `setpriv`.
        /// In shared mode readiness travels over `$NOTIFY_SOCKET`, which nobody must be able to reach.
        @Test(.enabled(if: geteuid() == 0, "needs root to run workers as nobody"), arguments: ["handoff", "shared"])
        func workersDroppedToNobodyReloadUnderLoadLosingNothing(_ mode: String) throws {
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", mode, "--drain-timeout", "10"],
                command: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", Self.helloWorker], workers: 2)
            let workers = try serve.status().workers.map(\.pid)
            for pid in workers {
                // In shared mode a shell sets LISTEN_PID first, then setpriv drops: wait for the exec.
                #expect(eventually {
                    String(decoding: (try? Kernel.readFile("/proc/\(pid)/status")) ?? [], as: UTF8.self).contains("\nUid:\t65534\t")
                }, "worker \(pid) runs as nobody")
            }
            let environment = String(decoding: try Kernel.readFile("/proc/\(workers[0])/environ"), as: UTF8.self)
            let notify = try #require(environment.split(separator: "\0").first { $0.hasPrefix("NOTIFY_SOCKET=") }.map { String($0.dropFirst(14)) })
            let directory = String(notify[..<notify.lastIndex(of: "/")!])
            #expect(try Kernel.linkStatus(directory).map { $0.st_mode & 0o777 } == 0o711, "others may pass through, not list")
            #expect(try Kernel.linkStatus(notify).map { $0.st_mode & 0o777 } == 0o666, "anyone may write; only workers' pids count")
            var outcomes: [ChildProcess.Termination] = []
            let result = try LoadClient(address: try serve.address(), count: 1500, threads: 4).run {
                for _ in 0..<3 {
                    outcomes.append(try Self.reload(serve).status)
                    usleep(100_000)
                }
            }
            #expect(outcomes == Array(repeating: .exited(0), count: 3), "\(serve.log.suffix(2000))")
            #expect(result.answered == result.opened && result.opened == 1500, "\(result)")
            #expect(try serve.status().generation == 4)
            #expect(try serve.stop() == .exited(0))
            #expect(try Kernel.linkStatus(directory) == nil, "the notify directory is removed on stop")
        }

        /// A serve killed with SIGKILL leaves its notify directory behind; the next serve removes it
        /// (nobody serves its socket), and leaves a live serve's alone.
        @Test(.enabled(if: geteuid() == 0, "the open notify socket is made when serve runs as root"))
        func staleNotifyDirectoriesAreRemovedAndLiveOnesKept() throws {
            let live = try ServeProcess(["--listen", "tcp://127.0.0.1:0", "--mode", "handoff"], command: [Self.helloWorker], workers: 1)
            let killed = try ServeProcess(["--listen", "tcp://127.0.0.1:0", "--mode", "handoff"], command: [Self.helloWorker], workers: 1)
            func notifyDirectory(of serve: ServeProcess) throws -> String {
                let worker = try #require(try serve.status().workers.first?.pid)
                let environment = String(decoding: try Kernel.readFile("/proc/\(worker)/environ"), as: UTF8.self)
                let path = try #require(environment.split(separator: "\0").first { $0.hasPrefix("NOTIFY_SOCKET=") }.map { String($0.dropFirst(14)) })
                return String(path[..<path.lastIndex(of: "/")!])
            }
            let liveDirectory = try notifyDirectory(of: live)
            let staleDirectory = try notifyDirectory(of: killed)
            let orphan = try #require(try killed.status().workers.first?.pid)
            try killed.process.signal(SIGKILL)
            _ = try killed.process.wait()
            _ = Glibc.kill(orphan, SIGKILL)
            #expect(try Kernel.linkStatus(staleDirectory) != nil, "SIGKILL leaves it behind")
            let next = try ServeProcess(["--listen", "tcp://127.0.0.1:0", "--mode", "handoff"], command: [Self.helloWorker], workers: 1)
            #expect(try Kernel.linkStatus(staleDirectory) == nil, "the next serve removed the stale one")
            #expect(try Kernel.linkStatus(liveDirectory) != nil, "and kept the live one")
            try next.stop()
            try live.stop()
        }

        /// A process that is not a worker writes READY=1 to the notify socket: it is not heeded.
        @Test(.enabled(
            if: geteuid() == 0 && access("/usr/bin/python3", X_OK) == 0,
            "the open notify socket is made when serve runs as root; the stranger is /usr/bin/python3 as nobody"))
        func readinessFromAStrangerIsIgnored() throws {
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "shared"],
                command: ["python3", CommandLineTests.scripts + "/listen_fds_server.py"], workers: 1)
            let worker = try #require(try serve.status().workers.first?.pid)
            // The worker execs a shell, a launcher and python in turn; its environment reads empty mid-exec.
            var notify: String?
            _ = eventually {
                let environment = String(decoding: (try? Kernel.readFile("/proc/\(worker)/environ")) ?? [], as: UTF8.self)
                notify = environment.split(separator: "\0").first { $0.hasPrefix("NOTIFY_SOCKET=") }.map { String($0.dropFirst(14)) }
                return notify != nil
            }
            let notifyPath = try #require(notify)
            // The reload's new worker never says READY=1; a stranger (as nobody) says it throughout, in vain.
            let control = serve.controlPath
            let script = "import socket,sys,time\ns=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                + "for _ in range(15):\n s.sendto(b'READY=1', sys.argv[1]); time.sleep(0.1)\nprint('sent')"
            let reload: @Sendable () -> String = {
                (try? ProgramRun.run(Paths.sockshare, ["reload", "--control", control, "--deadline", "1.5"]))
                    .map { "\($0.status)" } ?? "did not run"
            }
            let stranger: @Sendable () -> String = {
                (try? ProgramRun.run("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script, notifyPath]))
                    .map { $0.standardOutput + $0.standardError } ?? "did not run"
            }
            let outcomes = onThreads([reload, stranger])
            #expect(outcomes[1] == "sent\n", "the stranger could write to the notify socket")
            #expect(outcomes[0] == "\(ChildProcess.Termination.exited(1))", "a stranger's READY=1 does not make a generation ready")
            #expect(try serve.status().generation == 1)
            try serve.stop()
        }

        @Test func aNewGenerationThatNeverSaysReadyIsRolledBack() throws {
            // A socket-activated server that never calls sd_notify: its generation never becomes ready.
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "shared"],
                command: ["python3", CommandLineTests.scripts + "/listen_fds_server.py"], workers: 2)
            let before = try serve.status().workers.map(\.pid)
            let run = try Self.reload(serve, deadline: 1)
            #expect(run.status == .exited(1))
            #expect(run.standardError.hasPrefix("sockshare: reload failed: the new generation was not ready by the deadline"), "\(run.standardError)")
            let status = try serve.status()
            #expect(status.generation == 1, "the old generation serves on")
            #expect(status.lastReload?.succeeded == false)
            #expect(eventually { (try? serve.status().workers.map(\.pid)) == before }, "the new generation is gone, the old untouched")
            #expect(LoadClient(address: try serve.address(), count: 20).run().answered == 20)
            try serve.stop()
        }

        /// The new generation dies right after it starts while the old one still answers everything:
        /// readiness comes from the new workers, so the reload fails (ray-project/ray#64063).
        @Test func aNewGenerationThatCrashesIsRolledBackAndTheOldGenerationCannotFakeReadiness() throws {
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff"],
                command: ["/bin/sh", "-c", "[ \"$SOCKSHARE_GENERATION\" = 2 ] && exit 3; exec \"$0\"", Self.helloWorker], workers: 2)
            let before = try serve.status().workers.map(\.pid)
            let result = try LoadClient(address: try serve.address(), count: 300, threads: 2).run {
                let run = try Self.reload(serve)
                #expect(run.status == .exited(1))
                #expect(run.standardError.contains("of generation 2 ended (exit status 3) before it was ready"), "\(run.standardError)")
            }
            #expect(result.answered == 300, "\(result)")
            #expect(try serve.status().workers.map(\.pid) == before)
            // A failed reload leaves the supervisor ready for the next one (generation 3 starts fine).
            #expect(try Self.reload(serve).status == .exited(0))
            #expect(try serve.status().generation == 3)
            try serve.stop()
        }

        @Test func aSecondReloadWhileOneRunsIsRefused() throws {
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "shared"],
                command: ["python3", CommandLineTests.scripts + "/listen_fds_server.py"], workers: 1)
            let first = try ProcessSpawner.spawn(
                Paths.sockshare, arguments: ["reload", "--control", serve.controlPath, "--deadline", "3"],
                descriptors: [2: try Kernel.open("/dev/null", O_WRONLY)])
            #expect(eventually { (try? serve.status().reloading) == true })
            let second = try Self.reload(serve)
            #expect(second.status == .exited(1))
            #expect(second.standardError.contains("a reload is already in progress (generation 2)"), "\(second.standardError)")
            #expect(try first.wait(deadline: .now + .seconds(20)) == .exited(1))
            try serve.stop()
        }

        @Test func oldWorkersThatIgnoreTheirStopAreKilledAtTheDeadline() throws {
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--drain-timeout", "1"],
                command: [Paths.helper, "--worker", "stubborn"], workers: 1)
            let old = try serve.status().workers[0].pid
            #expect(try Self.reload(serve).status == .exited(0))
            #expect(try serve.status().workers.contains { $0.pid == old && $0.draining })
            // 1 s drain, then SIGTERM (ignored), then SIGKILL 2 s later.
            #expect(eventually(timeout: .seconds(10)) { !Kernel.processExists(old) || Self.isZombie(old) })
            #expect(serve.log.contains("old worker ignored SIGTERM: SIGKILL"))
            #expect(LoadClient(address: try serve.address(), count: 20).run().answered == 20)
            try serve.stop()
        }

        /// A never-closing old generation does not block reloads, and does not pile up: the fourth
        /// reload kills what is left of the first generation (tableflip#52, HAProxy mworker-max-reloads).
        @Test func generationsAreCapped() throws {
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--drain-timeout", "120"],
                command: [Paths.helper, "--worker", "stubborn"], workers: 1)
            var generations: [Int: pid_t] = [1: try serve.status().workers[0].pid]
            for generation in 2...5 {
                #expect(try Self.reload(serve).status == .exited(0))
                generations[generation] = try serve.status().workers.first { $0.generation == generation }?.pid
            }
            #expect(eventually { !Kernel.processExists(generations[1]!) || Self.isZombie(generations[1]!) }, "generation 1 is killed")
            let alive = try serve.status().workers.map(\.generation).sorted()
            #expect(alive == [2, 3, 4, 5], "at most four generations: \(alive)")
            #expect(serve.log.contains("an older generation is still draining at the next reload: SIGKILL"))
            try serve.process.signal(SIGKILL)
            for pid in generations.values { _ = Glibc.kill(pid, SIGKILL) }
        }

        @Test func threeGenerationsKeepTheirAddressesAcrossFamilies() throws {
            let path = BrokerProcess.freshDirectory() + "/web.sock"
            let serve = try ServeProcess(
                ["--listen", "v4=tcp://127.0.0.1:0", "--listen", "v6=tcp://[::1]:0", "--listen", "local=unix://\(path)", "--mode", "handoff"],
                command: [Self.helloWorker], workers: 1)
            let addresses = try serve.status().listeners
            var previous = try serve.status().workers.map(\.pid)
            for generation in 2...4 {
                #expect(try Self.reload(serve).status == .exited(0))
                let status = try serve.status()
                #expect(status.generation == generation)
                #expect(status.listeners == addresses)
                // Generation N−1 is gone (or going) once N+1 serves.
                #expect(eventually { !(try? serve.status().workers.map(\.pid))!.contains(where: previous.contains) })
                previous = status.workers.filter { $0.generation == generation }.map(\.pid)
                for listener in addresses {
                    let address = try SocketEndpoint(parsing: listener.address).address
                    #expect(LoadClient.request(address, timeout: .seconds(10)).answer?.hasPrefix("hello from") == true, "\(listener)")
                }
            }
            #expect(try Kernel.linkStatus(path) != nil, "the unix path survives every generation")
            try serve.stop()
            #expect(try Kernel.linkStatus(path) == nil, "and is removed when serve stops")
        }

        @Test func aFailedReloadKeepsAUnixListenersPath() throws {
            let path = BrokerProcess.freshDirectory() + "/app.sock"
            let serve = try ServeProcess(
                ["--listen", "unix://\(path)", "--mode", "handoff"],
                command: ["/bin/sh", "-c", "[ \"$SOCKSHARE_GENERATION\" = 2 ] && exit 1; exec \"$0\"", Self.helloWorker], workers: 1)
            #expect(try Self.reload(serve).status == .exited(1))
            #expect(try Kernel.linkStatus(path) != nil)
            #expect(LoadClient.request(.unix(path: path), timeout: .seconds(10)).answer?.hasPrefix("hello from") == true)
            try serve.stop()
        }

        @Test(arguments: ["handoff", "shared"])
        func anUpgradeHandsEverythingToANewSupervisorWhileWorkersKeepServing(_ mode: String) throws {
            let serve = try ServeProcess(["--listen", "tcp://127.0.0.1:0", "--mode", mode], command: [Self.helloWorker], workers: 2)
            let workers = Set(try serve.status().workers.map(\.pid))
            var answer = ""
            let result = try LoadClient(address: try serve.address(), count: 1500, threads: 4).run {
                let run = try ProgramRun.run(Paths.sockshare, ["upgrade", "--control", serve.controlPath])
                answer = run.standardOutput + run.standardError
                #expect(run.status == .exited(0), "\(answer)")
            }
            #expect(result.answered == 1500, "\(result)")
            let status = try serve.status()
            #expect(status.pid != serve.process.pid, "a new supervisor: \(answer)")
            #expect(Set(status.workers.map(\.pid)) == workers, "the workers kept running")
            #expect(try serve.process.wait(deadline: .now + .seconds(10)) == .exited(0), "the old supervisor exited")
            // The new supervisor reloads, and stops cleanly.
            #expect(try Self.reload(serve).status == .exited(0))
            try Kernel.signal(status.pid, SIGTERM)
            #expect(eventually(timeout: .seconds(20)) { !Kernel.processExists(status.pid) })
        }

        @Test func aFailedUpgradeLeavesTheOldSupervisorServing() throws {
            let serve = try ServeProcess(["--listen", "tcp://127.0.0.1:0", "--mode", "handoff"], command: [Self.helloWorker], workers: 1)
            let run = try ProgramRun.run(Paths.sockshare, ["upgrade", "--control", serve.controlPath, "--binary", "/bin/false"])
            #expect(run.status == .exited(1))
            #expect(run.standardError.contains("ended (exit status 1) before it was ready"), "\(run.standardError)")
            #expect(try serve.status().pid == serve.process.pid)
            #expect(LoadClient(address: try serve.address(), count: 50).run().answered == 50)
            #expect(try serve.stop() == .exited(0))
        }

        /// A stand-in for systemd's `$NOTIFY_SOCKET`: serve says READY=1 when its workers are ready,
        /// RELOADING=1 then READY=1 around a reload, MAINPID= after an upgrade, STOPPING=1 at the end.
        @Test func serveTellsItsServiceManagerWhatHappens() throws {
            let directory = BrokerProcess.freshDirectory()
            let manager = try NotifyListener(path: directory + "/systemd.notify")
            defer { manager.close() }
            var environment = ProcessSpawner.environment
            environment["NOTIFY_SOCKET"] = manager.path
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff"], command: [Self.helloWorker], workers: 1,
                environment: environment)
            var messages: [(pid_t, [String: String])] = []
            func collect(until key: String) -> Bool {
                eventually(timeout: .seconds(20)) {
                    messages += manager.drain()
                    return messages.contains { $0.1[key] != nil }
                }
            }
            #expect(collect(until: "READY"))
            #expect(try Self.reload(serve).status == .exited(0))
            #expect(collect(until: "RELOADING"))
            _ = try ProgramRun.run(Paths.sockshare, ["upgrade", "--control", serve.controlPath])
            #expect(collect(until: "MAINPID"))
            let successor = try serve.status().pid
            try Kernel.signal(successor, SIGTERM)
            #expect(collect(until: "STOPPING"))
            let keys = messages.map { message in Set(["READY", "RELOADING", "MAINPID", "STOPPING"].filter { message.1[$0] != nil }) }
            #expect(keys == [["READY"], ["RELOADING"], ["READY"], ["RELOADING"], ["MAINPID", "READY"], ["STOPPING"]], "\(messages)")
            #expect(messages.first { $0.1["MAINPID"] != nil }?.1["MAINPID"] == "\(successor)")
            #expect(messages.first { $0.1["MAINPID"] != nil }?.0 == successor, "sent by the new supervisor itself")
            #expect(messages.allSatisfy { $0.1["STATUS"] != nil })
            #expect(eventually(timeout: .seconds(20)) { !Kernel.processExists(successor) })
        }

        static func isZombie(_ pid: pid_t) -> Bool {
            let stat = String(decoding: (try? Kernel.readFile("/proc/\(pid)/stat")) ?? [], as: UTF8.self)
            guard let close = stat.lastIndex(of: ")") else { return true }
            return stat[stat.index(close, offsetBy: 2)] == "Z"
        }
    }
}
