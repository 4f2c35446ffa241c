import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// The broker daemon, as a real process: escrow that outlives the source, with the same rules.
extension SocketShareTests {
    @Suite struct BrokerTests {
        init() { TestEnvironment.prepare() }

        @Test func aShareOutlivesItsSourceAndItsTargetAdoptsIt() throws {
            let broker = try BrokerProcess()
            let source = try Helper()
            let target = try Helper()
            let listener = try source.call("listen", "tcp://127.0.0.1:0")
            let (slot, inode) = (listener[0], listener[1])
            let token = try source.call("deposit", slot, "\(target.pid)", broker.socketPath, "60000")[0]
            #expect(try ShareToken(text: token).mechanism == .broker)
            // The source closes its socket and exits: DuplicateAndClose, across processes.
            try source.call("close", slot)
            #expect(try source.finish() == .exited(0))
            let adopted = try target.call("adopt", token)
            #expect(adopted[1] == inode)
            #expect(eventually { (try? broker.client.list().isEmpty) == true }, "claimed shares are gone from the broker")
            _ = try target.finish()
            #expect(try broker.stop() == .exited(0))
        }

        @Test func sockshareShareViaAutoUsesTheBrokerAndExitsAtOnce() throws {
            let broker = try BrokerProcess()
            let target = try Helper()
            let socket = try SocketDescriptor.listening(on: .ipv6(host: "::1", port: 0))
            var environment = ProcessSpawner.environment
            environment["SOCKSHARE_BROKER"] = broker.socketPath
            let run = try ProgramRun.run(
                Paths.sockshare, ["share", "--fd", "3", "--to", "\(target.pid)"], descriptors: [3: socket.rawValue],
                environment: environment, timeout: .seconds(20))
            #expect(run.status == .exited(0), "\(run.standardError)")
            let token = try ShareToken(text: run.standardOutput)
            #expect(token.mechanism == .broker && token.endpoint == broker.socketPath)
            let inspect = try ProgramRun.run(Paths.sockshare, ["inspect", token.text])
            #expect(inspect.standardOutput.contains("mechanism:       broker"))
            #expect(try target.call("adopt", token.text)[1] == "\(try socket.socketDescription().identity.inode)")
            _ = try target.finish()
            try broker.stop()
        }

        @Test func sockshareShareFindsTheBrokerNamedByTheBrokerOption() throws {
            let broker = try BrokerProcess()
            let target = try Helper()
            let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            var environment = ProcessSpawner.environment
            environment["SOCKSHARE_BROKER"] = "/nonexistent/broker.sock"
            let run = try ProgramRun.run(
                Paths.sockshare, ["share", "--fd", "3", "--to", "\(target.pid)", "--via", "broker", "--broker", broker.socketPath],
                descriptors: [3: socket.rawValue], environment: environment, timeout: .seconds(20))
            #expect(run.status == .exited(0), "\(run.standardError)")
            #expect(try ShareToken(text: run.standardOutput).endpoint == broker.socketPath, "--broker wins over $SOCKSHARE_BROKER")
            // Without --broker, $SOCKSHARE_BROKER names one that is not there.
            let missing = try ProgramRun.run(
                Paths.sockshare, ["share", "--fd", "3", "--to", "\(target.pid)", "--via", "broker"],
                descriptors: [3: socket.rawValue], environment: environment, timeout: .seconds(20))
            #expect(missing.status == .exited(1) && missing.standardError.contains("no broker answers at /nonexistent/broker.sock"),
                    "\(missing.standardError)")
            _ = try target.finish()
            try broker.stop()
        }

        @Test func claimsAreRefusedForTheWrongProcessTwiceOrLate() async throws {
            let broker = try BrokerProcess()
            let target = try Helper()
            let intruder = try Helper()
            let socket = try SocketDescriptor.socket(.inet, .datagram)
            let token = try broker.client.deposit(socket.rawValue, for: ProcessIdentity(pid: target.pid, startTime: 0))
            #expect(token.target == (try ProcessIdentity(pid: target.pid)), "the broker fills in the start time")
            #expect {
                try intruder.call("adopt", token.text)
            } throws: { ($0 as! HelperError).code == "refused" }
            try target.call("adopt", token.text)
            #expect {
                try target.call("adopt", token.text)
            } throws: { ($0 as! HelperError).code == "alreadyClaimed" }

            let late = try broker.client.deposit(socket.rawValue, for: ProcessIdentity(pid: target.pid, startTime: 0), timeToLive: .milliseconds(200))
            #expect(eventually { (try? broker.client.list().isEmpty) == true }, "expiry closes the held duplicate")
            var edited = late
            edited.expiresAtMilliseconds += 3_600_000
            #expect {
                try target.call("adopt", edited.text)
            } throws: { ($0 as! HelperError).code == "expired" }

            let forged = ShareToken(
                mechanism: .broker, description: try socket.socketDescription(), source: .current, target: late.target,
                createdAtMilliseconds: late.createdAtMilliseconds, expiresAtMilliseconds: late.expiresAtMilliseconds + 3_600_000,
                endpoint: broker.socketPath, shareID: late.shareID, secret: .random())
            #expect {
                try target.call("adopt", forged.text)
            } throws: { ($0 as! HelperError).code == "notFound" }
            _ = try target.finish()
            _ = try intruder.finish()
            let metrics = try broker.client.metrics()
            #expect(metrics.contains("sockshare_refusals_total{reason=\"wrongProcess\"} 1"), "\(metrics)")
            #expect(metrics.contains("sockshare_claims_total 1"))
            #expect(metrics.contains("sockshare_expiries_total 1"))
            try broker.stop()
        }

        @Test(.enabled(if: geteuid() == 0, "needs root to choose the next pid"))
        func aRecycledPidCannotClaimFromTheBroker() throws {
            let broker = try BrokerProcess()
            let first = try Helper()
            let pid = first.pid
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let token = try broker.client.deposit(socket.rawValue, for: try ProcessIdentity(pid: pid))
            try first.process.signal(SIGKILL)
            _ = try first.process.wait()
            var impostor: Helper? = nil
            for _ in 0..<20 where impostor == nil {
                let file = try Kernel.open("/proc/sys/kernel/ns_last_pid", O_WRONLY)
                try Array("\(pid - 1)".utf8).withBytes { (bytes) throws(SocketShareError) in try Kernel.writeAll(file, bytes) }
                try Kernel.close(file)
                let candidate = try Helper()
                if candidate.pid == pid { impostor = candidate } else { _ = try candidate.finish() }
            }
            let recycled = try #require(impostor, "could not start a process with pid \(pid)")
            #expect {
                try recycled.call("adopt", token.text)
            } throws: { error in
                // Refused as another process, or — once the broker has noticed the exit — as revoked.
                let code = (error as! HelperError).code
                return code == "refused" || code == "revoked"
            }
            _ = try recycled.finish()
            try broker.stop()
        }

        @Test func quotasCapsAndTimeLimitsAreRefusedClearly() throws {
            let broker = try BrokerProcess(arguments: ["--max-shares", "5", "--per-uid", "3", "--max-ttl", "30"])
            let target = try Helper()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let me = ProcessIdentity(pid: target.pid, startTime: 0)
            for _ in 0..<3 { _ = try broker.client.deposit(socket.rawValue, for: me, timeToLive: .seconds(10)) }
            let quota = #expect(throws: SocketShareError.self) {
                try broker.client.deposit(socket.rawValue, for: me, timeToLive: .seconds(10))
            }
            #expect(quota?.code == .limitReached)
            #expect(quota?.detail.contains("uid \(getuid()) holds 3 shares, its limit") == true)
            let ttl = #expect(throws: SocketShareError.self) {
                try broker.client.deposit(socket.rawValue, for: me, timeToLive: .seconds(31))
            }
            #expect(ttl?.detail.contains("exceeds this broker's maximum of 30 s") == true)
            let gone = #expect(throws: SocketShareError.self) {
                try broker.client.deposit(socket.rawValue, for: ProcessIdentity(pid: 4_000_000, startTime: 0), timeToLive: .seconds(1))
            }
            #expect(gone?.code == .invalidArgument)
            #expect(gone?.detail.contains("no process with pid 4000000") == true)

            // The global cap: another uid's deposits count too (root deposits through a nobody helper is
            // covered by the cross-user test); here the per-uid limit is lifted by revoking.
            for share in try broker.client.list() { try broker.client.revoke(shareID: share.id) }
            #expect(try broker.client.list().isEmpty)
            _ = try target.finish()
            try broker.stop()
        }

        @Test func theGlobalCapIsARefusalNotADegradation() throws {
            let broker = try BrokerProcess(arguments: ["--max-shares", "50"])
            let target = try Helper()
            let socket = try SocketDescriptor.socket(.unix, .stream)
            let me = ProcessIdentity(pid: target.pid, startTime: 0)
            var tokens: [ShareToken] = []
            for _ in 0..<50 { tokens.append(try broker.client.deposit(socket.rawValue, for: me)) }
            let cap = #expect(throws: SocketShareError.self) { try broker.client.deposit(socket.rawValue, for: me) }
            #expect(cap?.code == .limitReached)
            #expect(cap?.detail.contains("50 shares are held; the limit is 50") == true)
            // Still serving claims at the cap, and a claim frees room.
            try target.call("adopt", tokens[0].text)
            _ = try broker.client.deposit(socket.rawValue, for: me)
            _ = try target.finish()
            try broker.stop()
        }

        @Test func sigtermClosesHeldSharesAndSaysSo() throws {
            let broker = try BrokerProcess()
            let target = try Helper()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let inode = try socket.socketDescription().identity.inode
            let token = try broker.client.deposit(socket.rawValue, for: ProcessIdentity(pid: target.pid, startTime: 0))
            let holders = { Kernel.directoryEntries("/proc/\(broker.process.pid)/fd").filter {
                Kernel.readLink("/proc/\(broker.process.pid)/fd/\($0)") == "socket:[\(inode)]"
            }.count }
            #expect(holders() == 1)
            #expect(try broker.stop() == .exited(0))
            #expect(broker.log.contains("closed 1 held shares"))
            #expect(try Kernel.linkStatus(broker.socketPath) == nil, "the socket path is removed")
            #expect {
                try target.call("adopt", token.text)
            } throws: { ($0 as! HelperError).code == "holderGone" }
            _ = try target.finish()
        }

        @Test func aSecondBrokerIsRefusedAndAStaleSocketReplaced() throws {
            let directory = BrokerProcess.freshDirectory()
            let first = try BrokerProcess(directory: directory)
            let second = try ProgramRun.run(Paths.sockshare, ["broker", "--socket", first.socketPath])
            #expect(second.status == .exited(1))
            #expect(second.standardError.contains("a broker already serves"))
            // Killed without cleaning up: the next broker removes the stale socket and serves.
            try first.process.signal(SIGKILL)
            _ = try first.waitForExit()
            #expect(try Kernel.linkStatus(first.socketPath) != nil)
            let third = try BrokerProcess(directory: directory)
            #expect(third.log.contains("stale socket"))
            try third.stop()
        }

        @Test func anUnsafeDirectoryIsRefused() throws {
            let directory = BrokerProcess.freshDirectory()
            chmod(directory, 0o777)
            let open = try ProgramRun.run(Paths.sockshare, ["broker", "--socket", directory + "/broker.sock"])
            #expect(open.status == .exited(1))
            #expect(open.standardError.contains("others may enter it; it must be 0700"), "\(open.standardError)")
            chmod(directory, 0o700)
            chown(directory, 65534, 65534)
            let foreign = try ProgramRun.run(Paths.sockshare, ["broker", "--socket", directory + "/broker.sock"])
            #expect(foreign.status == .exited(1))
            #expect(foreign.standardError.contains("owned by uid 65534, not by us"), "\(foreign.standardError)")
        }

        @Test func anotherVersionGetsAClearRefusal() throws {
            let broker = try BrokerProcess()
            for (bytes, expected) in [([UInt8]([2, 1]), "protocol version 2 is not supported; this holder speaks version 1"),
                                      ([1, 0x42], "field type: 66 is not a message type"),
                                      ([1, 0x81, 0, 0, 0, 0, 0, 0, 0, 1], "that message is a reply")] {
                let channel = try DescriptorChannel.connect(to: broker.socketPath)
                try channel.send(bytes)
                let reply = try #require(try channel.receive(deadline: .now + .seconds(5)))
                guard case .failure(_, let text) = try EscrowMessage(bytes: reply.bytes) else {
                    Issue.record("not a failure")
                    continue
                }
                #expect(text.contains(expected), "\(text)")
                #expect(try channel.receive(deadline: .now + .seconds(5)) == nil, "then the broker closes")
            }
            try broker.stop()
        }
    }
}

extension SocketShareTests {
    /// Sharing across users, through a broker opened to one group.
    @Suite struct BrokerCrossUserTests {
        init() { TestEnvironment.prepare() }

        static let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

        @Test(.enabled(if: geteuid() == 0, "needs root to run processes as nobody"))
        func rootSharesWithNobodyThroughAGroupBroker() throws {
            // Outside the private test directory, which nobody could not enter.
            var template = Array("/tmp/sockshare-group-XXXXXX".utf8CString)
            let parent = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            chmod(parent, 0o755)
            defer { _ = try? ProgramRun.run("rm", ["-rf", parent]) }
            let broker = try BrokerProcess(arguments: ["--group", "65534"], directory: parent + "/run")
            let info = try #require(try Kernel.linkStatus(parent + "/run"))
            #expect(info.st_mode & 0o777 == 0o710 && info.st_gid == 65534, "the group may enter, not list; others nothing")

            let worker = try Helper(wrapper: Self.nobody)
            let other = try Helper(wrapper: Self.nobody)
            #expect(try worker.call("pid")[2] == "65534")
            // Root binds what nobody could not, and hands it over.
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let token = try broker.client.deposit(listener.rawValue, for: try ProcessIdentity(pid: worker.pid))
            try listener.close()
            #expect(throws: HelperError.self) { try other.call("adopt", token.text) }
            let adopted = try worker.call("adopt", token.text)
            #expect(adopted[4] == "listening")

            // Each uid sees and revokes only its own shares.
            let unbound = try SocketDescriptor.socket(.inet, .stream)
            defer { try? unbound.close() }
            let rootShare = try broker.client.deposit(unbound.rawValue, for: try ProcessIdentity(pid: other.pid))
            let mine = try worker.call("listen", "udp://127.0.0.1:0")[0]
            _ = try worker.call("deposit", mine, "\(other.pid)", broker.socketPath, "10000")
            #expect(try worker.call("broker-list", broker.socketPath).count == 1)
            #expect(try broker.client.list().count == 2, "root sees every share")
            #expect {
                try worker.call("broker-revoke", broker.socketPath, "\(rootShare.shareID)")
            } throws: { error in
                let error = error as! HelperError
                // Another user's share is refused as if it did not exist: ids say nothing of others' shares.
                return error.code == "notFound" && error.text.contains("of yours")
            }
            _ = try worker.finish()
            _ = try other.finish()
            try broker.stop()
        }
    }
}

extension SocketShareTests {
    @Suite struct BrokerScaleTests {
        init() { TestEnvironment.prepare() }

        @Test func tenThousandSharesHeldAtOnce() throws {
            let broker = try BrokerProcess(logLevel: "notice")
            let target = try Helper()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let baseline = broker.settledDescriptorCount
            let identity = try ProcessIdentity(pid: target.pid)
            var tokens: [ShareToken] = []
            for _ in 0..<10_000 { tokens.append(try broker.client.deposit(socket.rawValue, for: identity)) }
            #expect(broker.settledDescriptorCount == baseline + 10_000, "one duplicate per share, nothing more")
            #expect(try broker.client.list().count == 10_000)
            #expect(try broker.client.metrics().contains("sockshare_held_shares 10000"))
            // Claims are served at full load, the first and the last alike.
            try target.call("close", try target.call("adopt", tokens[0].text)[0])
            try target.call("close", try target.call("adopt", tokens[9_999].text)[0])
            #expect(eventually { (try? broker.client.list().count) == 9_998 })
            #expect(try broker.stop() == .exited(0))
            #expect(broker.log.contains("closed 9998 held shares"))
            _ = try target.finish()
        }
    }
}
