import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer
import SocketShareNIO

/// `sockshare serve --worker-socket`: workers serve did not start connect by themselves (from other
/// pid namespaces, under other uids) and get the spawned workers' guarantees: acknowledgement,
/// re-dispatch when one dies, readiness, drain, and a uid/gid check by the kernel's word.
extension SocketShareTests {
    @Suite struct ExternalWorkerTests {
        init() { TestEnvironment.prepare() }

        static let helloWorker = Paths.helloWorker
        static let container = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
        static let hasPidNamespaces = NamedShareTests.hasPidNamespaces

        /// An external hello-worker connecting at `socket`, under `wrapper`.
        static func startWorker(_ socket: String, wrapper: [String] = []) throws -> ChildProcess {
            var environment = ProcessSpawner.environment
            environment[ConnectionSource.workerSocketVariable] = socket
            let words = wrapper + [helloWorker]
            return try ProcessSpawner.spawn(words[0], arguments: Array(words.dropFirst()), environment: environment, descriptors: [2: 2])
        }

        /// Waits until `count` external workers are connected and ready.
        static func externalReady(_ serve: ServeProcess, _ count: Int) -> Bool {
            eventually(timeout: .seconds(20)) {
                let external = (try? serve.status().externalWorkers) ?? nil
                return external?.count == count && external?.allSatisfy(\.ready) == true
            }
        }

        @Test func externalWorkersServeAndOneKilledUnderLoadLosesNothing() throws {
            let directory = BrokerProcess.freshDirectory()
            let socket = directory + "/workers/workers.sock"
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--worker-socket", socket], command: [], workers: 0)
            usleep(300_000)
            let descriptorsBefore = ServeProcess.descriptorCount(serve.process.pid)
            let first = try Self.startWorker(socket)
            let second = try Self.startWorker(socket)
            #expect(Self.externalReady(serve, 2))
            var unfinishedAtKill = 0
            let result = try LoadClient(address: try serve.address(), count: 2000, threads: 4).run {
                usleep(300_000)
                let seen = try serve.status().externalWorkers?.first { $0.pid == first.pid }
                unfinishedAtKill = (seen?.inFlight ?? 0) - (seen?.unacknowledged ?? 0)
                try first.signal(SIGKILL)
            }
            #expect(result.opened == 2000 && result.refused == 0 && result.timedOut == 0, "\(result)")
            // As with spawned workers: only a connection the dead worker had acknowledged and was
            // serving may be lost; everything it had not acknowledged went to the other (+1: the
            // status is read a moment before the kill, and one more may have been taken meanwhile).
            #expect(result.failed <= max(unfinishedAtKill, 0) + 1, "\(result); unfinished at kill: \(unfinishedAtKill)")
            #expect(result.answered + result.failed == 2000)
            _ = try first.wait()
            #expect(Self.externalReady(serve, 1), "the killed worker is gone from the status")
            let status = try serve.status()
            #expect(status.workers.isEmpty && status.externalWorkers?.first?.pid == second.pid)
            #expect((status.externalWorkers?.first?.handled ?? 0) > 0)
            try second.signal(SIGTERM)
            #expect(try second.wait(deadline: .now + .seconds(20)) == .exited(0), "a worker drains and exits 0 on SIGTERM")
            #expect(eventually { ServeProcess.descriptorCount(serve.process.pid) == descriptorsBefore },
                    "serve closed the workers' channels: \(ServeProcess.descriptorCount(serve.process.pid)) vs \(descriptorsBefore)")
            #expect(try serve.stop() == .exited(0))
            #expect(try Kernel.linkStatus(socket) == nil, "the worker socket is removed on stop")
        }

        @Test(.enabled(if: hasPidNamespaces, "needs root and unshare(1) for pid namespaces"))
        func blueGreenReplacementOfWorkerContainersLosesNothing() throws {
            let directory = BrokerProcess.freshDirectory()
            let socket = directory + "/workers/workers.sock"
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--worker-socket", socket], command: [], workers: 0)
            var live = [try Self.startWorker(socket, wrapper: Self.container), try Self.startWorker(socket, wrapper: Self.container)]
            #expect(Self.externalReady(serve, 2))
            var exits: [ChildProcess.Termination?] = []
            let result = try LoadClient(address: try serve.address(), count: 3000, threads: 4).run {
                for _ in 0..<3 {
                    let green = [try Self.startWorker(socket, wrapper: Self.container), try Self.startWorker(socket, wrapper: Self.container)]
                    #expect(Self.externalReady(serve, 4))
                    // Blue drains: SIGTERM to what each container runs (unshare itself blocks it).
                    for blue in live {
                        if let inside = NamedShareTests.onlyChild(of: blue.pid) { _ = Glibc.kill(inside, SIGTERM) }
                    }
                    for blue in live { exits.append(try blue.wait(deadline: .now + .seconds(20))) }
                    live = green
                    #expect(Self.externalReady(serve, 2))
                }
            }
            #expect(result.answered == result.opened && result.opened == 3000, "\(result)")
            #expect(exits == Array(repeating: .exited(0), count: 6), "every blue worker drained and exited 0")
            for worker in live {
                if let inside = NamedShareTests.onlyChild(of: worker.pid) { _ = Glibc.kill(inside, SIGTERM) }
                _ = try worker.wait(deadline: .now + .seconds(20))
            }
            #expect(try serve.stop() == .exited(0))
        }

        @Test(.enabled(if: geteuid() == 0, "needs root to run workers as nobody"))
        func theWorkerSocketAdmitsOnlyItsUidAndGid() throws {
            // Outside the private test directory, which nobody could not enter.
            var template = Array("/tmp/sockshare-external-XXXXXX".utf8CString)
            let parent = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            chmod(parent, 0o755)
            defer { _ = try? ProgramRun.run("rm", ["-rf", parent]) }
            let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            for (admitted, uid) in [(false, "0"), (true, "65534")] {
                let socket = parent + "/workers-\(uid)/workers.sock"
                let serve = try ServeProcess(
                    ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--worker-socket", socket, "--worker-uid", uid,
                     "--worker-gid", "65534"],
                    command: [Self.helloWorker], workers: 1)
                let info = try #require(try Kernel.linkStatus(parent + "/workers-\(uid)"))
                #expect(info.st_mode & 0o777 == 0o710 && info.st_gid == 65534, "the group may enter, not list")
                let worker = try Self.startWorker(socket, wrapper: nobody)
                if admitted {
                    #expect(Self.externalReady(serve, 1))
                    let result = LoadClient(address: try serve.address(), count: 200, threads: 2).run()
                    #expect(result.answered == 200)
                    #expect((try serve.status().externalWorkers?.first?.handled ?? 0) > 0, "nobody's worker took connections")
                    #expect(try serve.status().externalWorkers?.first?.uid == 65534)
                    try worker.signal(SIGTERM)
                    #expect(try worker.wait(deadline: .now + .seconds(20)) == .exited(0))
                } else {
                    #expect(eventually { (try? serve.status().externalRefusals) == 1 }, "refused: runs as uid 65534, not 0")
                    #expect(try serve.status().externalWorkers?.isEmpty == true)
                    #expect(serve.log.contains("refused an external worker"))
                    // Refused at once, it ends as if serve had stopped; if it lingers, it is stopped.
                    if (try? worker.wait(deadline: .now + .seconds(5))) ?? nil == nil {
                        try? worker.signal(SIGKILL)
                        _ = try? worker.wait(deadline: .now + .seconds(5))
                    }
                }
                try serve.stop()
            }
        }

        @Test func aReloadLeavesExternalWorkersServing() throws {
            let directory = BrokerProcess.freshDirectory()
            let socket = directory + "/workers/workers.sock"
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--worker-socket", socket], command: [Self.helloWorker], workers: 1)
            let external = try Self.startWorker(socket)
            #expect(Self.externalReady(serve, 1))
            let result = try LoadClient(address: try serve.address(), count: 1000, threads: 2).run {
                let run = try ProgramRun.run(Paths.sockshare, ["reload", "--control", serve.controlPath])
                #expect(run.status == .exited(0), "\(run.standardError)")
            }
            #expect(result.answered == 1000, "\(result)")
            #expect(result.byPid[String(external.pid), default: 0] > 0, "the external worker answered during the reload: \(result)")
            #expect(try serve.status().externalWorkers?.map(\.pid) == [external.pid], "the external worker is still there")
            #expect(try serve.status().generation == 2)
            let upgrade = try ProgramRun.run(Paths.sockshare, ["upgrade", "--control", serve.controlPath])
            #expect(upgrade.status == .exited(1) && upgrade.standardError.contains("does not yet carry the worker socket"))
            try external.signal(SIGTERM)
            _ = try external.wait(deadline: .now + .seconds(20))
            try serve.stop()
        }

        @Test func aThousandWorkerConnectsAndDisconnectsLeaveNothingOpen() throws {
            let directory = BrokerProcess.freshDirectory()
            let socket = directory + "/workers/workers.sock"
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--worker-socket", socket], command: [], workers: 0)
            // Counted once the startup's status requests are closed on serve's side too.
            usleep(300_000)
            let before = ServeProcess.descriptorCount(serve.process.pid)
            let mine = Set(openDescriptors())
            for index in 0..<1000 {
                let channel = try DescriptorChannel.connect(to: socket)
                // Half say they are ready (they become eligible), half leave without a word.
                if index % 2 == 0 { try channel.send(WorkerMessage.ready.bytes, deadline: .now + .seconds(5)) }
                try channel.close()
            }
            #expect(eventually(timeout: .seconds(20)) { ServeProcess.descriptorCount(serve.process.pid) == before },
                    "serve: \(ServeProcess.descriptorCount(serve.process.pid)) descriptors after, \(before) before")
            #expect(eventually { (try? serve.status().externalWorkers?.isEmpty) == true })
            // None left open here (a descriptor another test left to close may close meanwhile).
            #expect(Set(openDescriptors()).subtracting(mine).isEmpty)
            // It still serves a worker that stays.
            let worker = try Self.startWorker(socket)
            #expect(Self.externalReady(serve, 1))
            #expect(LoadClient(address: try serve.address(), count: 50).run().answered == 50)
            try worker.signal(SIGTERM)
            _ = try worker.wait(deadline: .now + .seconds(20))
            try serve.stop()
        }

        @Test func badWorkerSocketArgumentsAreRefused() throws {
            for (arguments, expected) in [
                (["--mode", "shared", "--worker-socket", "/tmp/x/w.sock", "--", "true"], "use --mode handoff"),
                (["--workers", "0", "--", "true"], "--workers 0: expected 1 to 1024 (0 only with --worker-socket)"),
                (["--worker-uid", "0", "--", "true"], "--worker-uid: only with --worker-socket"),
                (["--worker-socket", "relative.sock", "--", "true"], "--worker-socket relative.sock: expected an absolute path"),
            ] {
                let run = try ProgramRun.run(Paths.sockshare, ["serve", "--listen", "tcp://127.0.0.1:0"] + arguments)
                #expect(run.status == .exited(64), "\(arguments)")
                #expect(run.standardError.contains(expected), "\(arguments): \(run.standardError)")
            }
            let directory = BrokerProcess.freshDirectory()
            let crossUser = try ProgramRun.run(
                Paths.sockshare,
                ["serve", "--listen", "tcp://127.0.0.1:0", "--worker-socket", directory + "/w/w.sock", "--worker-uid", "65534",
                 "--control", directory + "/c.sock", "--", "true"])
            #expect(crossUser.status == .exited(1) && crossUser.standardError.contains("give their group too"), "\(crossUser.standardError)")
        }
    }
}
