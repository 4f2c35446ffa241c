import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// Each trust boundary (docs/SECURITY.md) tried as a hostile local user would: another uid
/// (`setpriv`), root of a user namespace of its own, a racing process, a flood. Each test is one
/// finding of the security review; each fails against the code before it was fixed.
///
/// The strangers are uids 41000 (the victim) and 41001 (the attacker), in group 41100 where a broker
/// is opened to a group; they need no entry in /etc/passwd. What they run lives in directories
/// every user may enter (`Paths.binaries`, `openDirectory()`), so the suite passes from a checkout
/// only root may enter.
extension SocketShareTests {
    @Suite(.enabled(if: geteuid() == 0, "plays other users with setpriv: needs root"))
    struct SecurityTests {
        init() { TestEnvironment.prepare() }

        static let victim: uid_t = 41000
        static let attacker: uid_t = 41001
        static let group: gid_t = 41100
        static let python = "/usr/bin/python3"

        /// `setpriv` to run as `uid` with primary group `gid` and no other group.
        static func runAs(_ uid: uid_t, _ gid: gid_t? = nil) -> [String] {
            ["setpriv", "--reuid=\(uid)", "--regid=\(gid ?? uid)", "--clear-groups"]
        }

        /// A fresh directory under /tmp that every user may enter and list (0755), removed by `cleanUp`.
        static func openDirectory() -> String {
            var template = Array("/tmp/sockshare-security-XXXXXX".utf8CString)
            let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            chmod(path, 0o755)
            return path
        }

        static func cleanUp(_ path: String) { _ = try? ProgramRun.run("rm", ["-rf", path]) }

        /// The environment a stranger's program gets: this one's, without anything that names a
        /// runtime directory or a broker, so that the defaults apply.
        static func strangerEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
            var environment = ProcessSpawner.environment
            for name in ["SOCKSHARE_RUNTIME_DIR", "XDG_RUNTIME_DIR", "SOCKSHARE_BROKER", "LISTEN_FDS", "LISTEN_PID"] {
                environment.removeValue(forKey: name)
            }
            environment["PATH"] = "/usr/local/bin:/usr/bin:/bin"
            return environment.merging(extra) { _, new in new }
        }

        /// A broker of root's in `parent/run`, opened to group 41100 (0710), as sharing across users is set up.
        static func groupBroker(in parent: String, _ arguments: [String] = [], wrapper: [String] = []) throws -> BrokerProcess {
            try BrokerProcess(arguments: ["--group", "\(group)"] + arguments, directory: parent + "/run", wrapper: wrapper)
        }

        // MARK: 1. The client side of rendezvous paths

        /// Finding 1: uid 41001 makes /tmp/sockshare-41000 before uid 41000 does and runs a broker
        /// in it. 41000's `share --via broker` and `adopt --name` must refuse it, saying why, and the
        /// fake broker must get nothing.
        @Test func aClientRefusesABrokerInASquattedRuntimeDirectory() throws {
            let squatted = "/tmp/sockshare-\(Self.victim)"
            Self.cleanUp(squatted)
            defer { Self.cleanUp(squatted) }
            let fake = try BrokerProcess(
                directory: squatted, wrapper: Self.runAs(Self.attacker), environment: Self.strangerEnvironment())
            let info = try #require(try Kernel.linkStatus(squatted))
            #expect(info.st_uid == Self.attacker, "the attacker made the directory the victim's client would use")
            let before = fake.settledDescriptorCount

            let share = try ProgramRun.run(
                "setpriv", Array(Self.runAs(Self.victim).dropFirst()) + [
                    Paths.sockshare, "bind", "tcp://127.0.0.1:0", "--", Paths.sockshare, "share", "--fd", "3", "--to", "1",
                    "--via", "broker",
                ], environment: Self.strangerEnvironment())
            #expect(share.status != .exited(0), "\(share.standardOutput)")
            #expect(share.standardError.contains("owned by uid \(Self.attacker)") && share.standardError.contains("refusing"),
                    "\(share.standardError)")
            let adopt = try ProgramRun.run(
                "setpriv", Array(Self.runAs(Self.victim).dropFirst()) + [Paths.sockshare, "adopt", "--name", "web", "--", "true"],
                environment: Self.strangerEnvironment())
            #expect(adopt.status == .exited(1) && adopt.standardError.contains("owned by uid \(Self.attacker)"), "\(adopt.standardError)")
            #expect(!fake.log.contains("deposit"), "the fake broker was never given a socket: \(fake.log)")
            #expect(fake.settledDescriptorCount == before)
            try fake.stop()
        }

        /// Finding 1, as root: after `su` or `sudo -E`, XDG_RUNTIME_DIR names a directory a user owns.
        @Test func rootRefusesABrokerInAUsersRuntimeDirectory() throws {
            let parent = Self.openDirectory()
            defer { Self.cleanUp(parent) }
            let runtime = parent + "/xdg"
            mkdir(runtime, 0o700)
            chown(runtime, Self.attacker, Self.attacker)
            let fake = try BrokerProcess(
                directory: runtime + "/sockshare", wrapper: Self.runAs(Self.attacker), environment: Self.strangerEnvironment())
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            defer { try? listener.close() }
            let share = try ProgramRun.run(
                Paths.sockshare, ["share", "--fd", "3", "--to", "1", "--via", "broker"], descriptors: [3: listener.rawValue],
                environment: Self.strangerEnvironment(["XDG_RUNTIME_DIR": runtime]))
            #expect(share.status != .exited(0))
            #expect(share.standardError.contains("owned by uid \(Self.attacker)") && share.standardError.contains("unset XDG_RUNTIME_DIR"),
                    "\(share.standardError)")
            #expect(!fake.log.contains("deposit"))
            try fake.stop()
        }

        /// The peer check on its own: a directory the victim owns, in which a socket of another uid
        /// listens (root put it there), is refused — the server must be the directory's owner or root.
        @Test func aSocketServedByAnotherUidThanItsDirectorysOwnerIsRefused() throws {
            let parent = Self.openDirectory()
            defer { Self.cleanUp(parent) }
            let directory = parent + "/run"
            mkdir(directory, 0o700)
            chown(directory, Self.attacker, Self.attacker)
            let fake = try BrokerProcess(directory: directory, wrapper: Self.runAs(Self.attacker), environment: Self.strangerEnvironment())
            chown(directory, Self.victim, Self.victim)
            let client = BrokerClient(socketPath: directory + "/broker.sock")
            let refused = #expect(throws: SocketShareError.self) { _ = try client.list() }
            #expect(refused?.cause == .untrustedRendezvous && refused?.detail.contains("served by uid \(Self.attacker)") == true,
                    "\(String(describing: refused))")
            try fake.stop()
        }

        // MARK: 2. The control socket

        /// Finding 2: serve run by root under `umask 000`, its control socket opened to everyone:
        /// nobody may not ask for anything, least of all an upgrade to a binary of its own.
        @Test func theControlSocketAdmitsServesOwnUserAndRootOnly() throws {
            let parent = Self.openDirectory()
            defer { Self.cleanUp(parent) }
            let control = parent + "/serve.sock"
            let marker = parent + "/ran-as-root"
            let evil = parent + "/evil.sh"
            try writeFile(evil, "#!/bin/sh\ntouch \(marker)\n")
            chmod(evil, 0o755)
            let serve = try ProgramRun.Background.start(
                "sh", ["-c", "umask 000; exec \"$0\" \"$@\"", Paths.sockshare, "serve", "--listen", "tcp://127.0.0.1:0", "--workers", "1",
                       "--mode", "handoff", "--control", control, "--", Paths.helloWorker])
            defer { serve.kill() }
            #expect(eventually(timeout: .seconds(20)) { (try? SupervisorClient(controlPath: control).status()) != nil })
            let mode = try #require(try Kernel.linkStatus(control)).st_mode & 0o777
            #expect(mode == 0o600, "the socket is serve's alone, whatever the umask (mode \(String(mode, radix: 8)))")
            chmod(control, 0o666)  // as if it were reachable anyway: the check must not rest on the mode
            for words in [["status"], ["reload"], ["upgrade", "--binary", evil]] {
                let run = try ProgramRun.run(
                    "setpriv", Array(Self.runAs(65534).dropFirst()) + [Paths.sockshare] + words + ["--control", control])
                #expect(run.status == .exited(1) && run.standardError.contains("not allowed"), "\(words): \(run.standardError)")
            }
            #expect(access(marker, F_OK) != 0, "the stranger's binary never ran")
            #expect(try SupervisorClient(controlPath: control).status().generation == 1, "nothing was reloaded")
            serve.terminate()
        }

        /// Finding 2, the grant: `--control-user` lets a user ask for status and reload, never for a
        /// binary of its choosing; and root of a user namespace of its own is nobody to the socket.
        @Test func aGrantedUserMayReloadButNeverNameABinary() throws {
            let parent = Self.openDirectory()
            defer { Self.cleanUp(parent) }
            let control = parent + "/serve.sock"
            let evil = parent + "/evil.sh"
            try writeFile(evil, "#!/bin/sh\nexit 0\n")
            chmod(evil, 0o755)
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--control-user", "\(Self.victim)"],
                command: [Paths.helloWorker], workers: 1, controlPath: control)
            let asVictim = Array(Self.runAs(Self.victim).dropFirst())
            let status = try ProgramRun.run("setpriv", asVictim + [Paths.sockshare, "status", "--control", control, "--json"])
            #expect(status.status == .exited(0) && status.standardOutput.contains("\"generation\""), "\(status.standardError)")
            let reload = try ProgramRun.run("setpriv", asVictim + [Paths.sockshare, "reload", "--control", control])
            #expect(reload.status == .exited(0), "\(reload.standardError)")
            let upgrade = try ProgramRun.run("setpriv", asVictim + [Paths.sockshare, "upgrade", "--control", control, "--binary", evil])
            #expect(upgrade.status == .exited(1) && upgrade.standardError.contains("only serve's own user or root may name a binary"),
                    "\(upgrade.standardError)")
            let stranger = try ProgramRun.run(
                "setpriv", Array(Self.runAs(Self.attacker).dropFirst()) + [Paths.sockshare, "status", "--control", control])
            #expect(stranger.status == .exited(1) && stranger.standardError.contains("not allowed"))
            if SecurityTests.hasUserNamespaces {
                let fakeRoot = try ProgramRun.run(
                    "setpriv", Array(Self.runAs(Self.attacker).dropFirst())
                        + ["unshare", "--user", "--map-root-user", Paths.sockshare, "status", "--control", control])
                #expect(fakeRoot.status == .exited(1) && fakeRoot.standardError.contains("not allowed"), "\(fakeRoot.standardError)")
            }
            try serve.stop()
        }

        static let hasUserNamespaces: Bool =
            (try? ProgramRun.run("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "unshare", "--user", "--map-root-user", "true"]).status)
            == .exited(0)

        /// Finding 8: a deadline of 1e300 (or nan, or -1) on the control socket is refused; serve lives on.
        @Test func outOfRangeNumbersOnTheControlSocketAreRefused() throws {
            let parent = Self.openDirectory()
            defer { Self.cleanUp(parent) }
            let control = parent + "/serve.sock"
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff"], command: [Paths.helloWorker], workers: 1, controlPath: control)
            let client = SupervisorClient(controlPath: control)
            for text in ["reload 1e300", "reload nan", "reload -1", "reload inf", "upgrade 99999999999 /bin/true", "status now", "\u{7f}"] {
                let answer = try ControlAnswer(json: try client.request(Array(text.utf8), for: "test"))
                #expect(!answer.ok, "\(text): \(answer.reason)")
            }
            #expect(try client.status().pid == serve.process.pid, "serve is alive")
            try serve.stop()
        }

        /// A control socket named in a directory others may write to is refused at start: they
        /// could replace it, and clients would refuse it anyway.
        @Test func serveRefusesAControlSocketInADirectoryOthersMayWrite() throws {
            let run = try ProgramRun.run(Paths.sockshare, [
                "serve", "--listen", "tcp://127.0.0.1:0", "--workers", "1", "--control", "/tmp/sockshare-control-test.sock", "--",
                Paths.helloWorker,
            ])
            #expect(run.status == .exited(1) && run.standardError.contains("others could replace the socket"), "\(run.standardError)")
            #expect(access("/tmp/sockshare-control-test.sock", F_OK) != 0, "and nothing is left behind")
        }

        // MARK: 3. Runtime directories made through descriptors

        /// Finding 3: root prepares `$XDG_RUNTIME_DIR/sockshare` in a directory uid 41001 owns, while
        /// 41001 swaps it for a symbolic link to a root-owned directory and to a root-owned file, as
        /// fast as it can. Neither may change, in 120 tries (the old code lost 7 in 40).
        @Test func aSwappedSymbolicLinkNeverRedirectsRootsChmodOrChown() throws {
            let parent = Self.openDirectory()
            defer { Self.cleanUp(parent) }
            let runtime = parent + "/xdg"
            mkdir(runtime, 0o755)
            chown(runtime, Self.attacker, Self.attacker)
            let victimDirectory = parent + "/root-dir"
            let victimFile = parent + "/root-file"
            mkdir(victimDirectory, 0o755)
            try writeFile(victimFile, "root's\n")
            chmod(victimFile, 0o644)
            let racer = try ProgramRun.Background.start("setpriv", Array(Self.runAs(Self.attacker).dropFirst()) + [
                "sh", "-c", "cd \(runtime) && while :; do rm -rf sockshare; ln -s \(victimDirectory) sockshare; rm -f sockshare; "
                    + "ln -s \(victimFile) sockshare; rm -f sockshare; done",
            ])
            defer { racer.kill() }
            var outcomes: [String: Int] = [:]
            for attempt in 0..<120 {
                let arguments = attempt % 2 == 0
                    ? ["broker", "--socket", runtime + "/sockshare/broker.sock", "--group", "\(Self.group)"]
                    : ["broker", "--socket", runtime + "/sockshare/broker.sock"]
                let broker = try ProgramRun.Background.start(Paths.sockshare, arguments, environment: Self.strangerEnvironment())
                // A broker that won the race serves; one that lost refuses at once. Either way, stop it.
                usleep(20_000)
                broker.terminate()
                outcomes[broker.exitedAtOnce ? "refused" : "served", default: 0] += 1
            }
            racer.kill()
            let directory = try #require(try Kernel.linkStatus(victimDirectory))
            let file = try #require(try Kernel.linkStatus(victimFile))
            #expect(directory.st_mode & 0o7777 == 0o755 && directory.st_uid == 0 && directory.st_gid == 0, "the root directory is untouched")
            #expect(file.st_mode & 0o7777 == 0o644 && file.st_uid == 0 && file.st_gid == 0, "the root file is untouched")
            print("symlink race: 120 broker starts against a racing swap: \(outcomes); root's directory and file unchanged")
        }

        // MARK: 4–6. Broker fairness

        /// Findings 4 and 6: one member of the broker's group floods it — 2,000 connections, half of
        /// them parking named claims for the longest wait, half silent, and 700 kept named shares —
        /// while another member deposits and claims. All 100 of the other's rounds succeed, within 10×
        /// the quiet latency at p99, and the broker's descriptors come back to where they were.
        @Test func oneUsersFloodNeverStopsAnotherUsersDepositsAndClaims() throws {
            let parent = Self.openDirectory()
            defer { Self.cleanUp(parent) }
            let broker = try Self.groupBroker(in: parent)
            let script = parent + "/flood_broker.py"
            _ = try ProgramRun.run("cp", [CommandLineTests.scripts + "/flood_broker.py", script])
            chmod(script, 0o644)
            let before = broker.settledDescriptorCount
            let victim = try Helper(wrapper: Self.runAs(Self.victim, Self.group))
            let slot = try victim.call("listen", "udp://127.0.0.1:0")[0]
            func rounds(_ count: Int) throws -> [Double] {
                try (0..<count).map { _ in
                    let took = try victim.call("broker-round", slot, broker.socketPath)
                    return (Double(took[0]) ?? 0) + (Double(took[1]) ?? 0)
                }
            }
            _ = try rounds(10)
            let quiet = try rounds(100).sorted()

            let attacker = try ProgramRun.Background.start(
                "setpriv", Array(Self.runAs(Self.attacker, Self.group).dropFirst()) + [Self.python, script, broker.socketPath, "2000", "700"],
                pipeInput: true)
            defer { attacker.kill() }
            let report = try #require(attacker.readLine(timeout: .seconds(60)), "the flood started")
            let flooded = try rounds(100).sorted()
            let quietP99 = quiet[98], floodedP99 = flooded[98]
            print("flood: \(report); another uid's deposit+claim rounds: 100/100 quiet (p50 \(Int(quiet[49])) µs, p99 \(Int(quietP99)) µs), "
                + "100/100 under the flood (p50 \(Int(flooded[49])) µs, p99 \(Int(floodedP99)) µs), p99 ratio "
                + "\(Double(Int(floodedP99 / quietP99 * 100)) / 100)")
            #expect(flooded.count == 100)
            #expect(floodedP99 <= quietP99 * 10, "p99 \(floodedP99) µs under the flood vs \(quietP99) µs quiet")
            let words = report.split(separator: " ")
            #expect(words.count == 3 && Int(words[1]) ?? 9999 <= 64, "the attacker keeps at most its uid's connections: \(report)")
            #expect(broker.descriptorCount <= before + 2 * 64 + 700 + 16, "the broker holds \(broker.descriptorCount) descriptors")
            #expect(try broker.client.list().count >= 0, "root's status still answers")
            attacker.closeInput()
            _ = attacker.wait()
            _ = try victim.finish()
            // Kept shares stay until revoked: root revokes the attacker's, and everything is back.
            for share in try broker.client.namedShares() { try broker.client.revoke(named: share.name, from: Self.attacker) }
            #expect(eventually(timeout: .seconds(10)) { broker.descriptorCount == before }, "descriptors: \(broker.descriptorCount) vs \(before)")
            #expect(!broker.log.contains("Too many open files"))
            try broker.stop()
        }

        /// Finding 6: under a descriptor limit of 600, one member deposits 700 kept shares: the broker
        /// never runs out of descriptors — the member is stopped at its quota, another member's
        /// deposit and claim and root's status still work.
        @Test func aLowDescriptorLimitBoundsWhatOneUserMayHold() throws {
            let parent = Self.openDirectory()
            defer { Self.cleanUp(parent) }
            let broker = try Self.groupBroker(in: parent, wrapper: ["prlimit", "--nofile=600:600"])
            #expect(broker.log.contains("the descriptor limit allows"), "--max-shares was lowered to fit: \(broker.log)")
            let script = parent + "/flood_broker.py"
            _ = try ProgramRun.run("cp", [CommandLineTests.scripts + "/flood_broker.py", script])
            chmod(script, 0o644)
            let attacker = try ProgramRun.Background.start(
                "setpriv", Array(Self.runAs(Self.attacker, Self.group).dropFirst()) + [Self.python, script, broker.socketPath, "300", "700"],
                pipeInput: true)
            defer { attacker.kill() }
            let report = try #require(attacker.readLine(timeout: .seconds(60)))
            let deposited = Int(report.split(separator: " ").last ?? "") ?? 9999
            #expect(deposited < 150, "the quota stopped it: \(report)")
            let victim = try Helper(wrapper: Self.runAs(Self.victim, Self.group))
            let slot = try victim.call("listen", "udp://127.0.0.1:0")[0]
            for _ in 0..<20 { _ = try victim.call("broker-round", slot, broker.socketPath) }
            #expect(try broker.client.namedShares().count == deposited, "root's listing works")
            #expect(broker.descriptorCount < 600 && !broker.log.contains("Too many open files"), "\(broker.descriptorCount) descriptors")
            attacker.closeInput()
            _ = attacker.wait()
            _ = try victim.finish()
            try broker.stop()
        }

        // MARK: 5 and 10. Named shares

        /// Finding 5: uid 41001 deposits `api` for uid 41000 before root does. Root's deposit still
        /// succeeds, and 41000's `adopt --name api` gets root's socket; `--from-uid 41001` is how it
        /// would ask for the other.
        @Test func aNameCannotBeSquattedIntoAVictimsHands() throws {
            let parent = Self.openDirectory()
            defer { Self.cleanUp(parent) }
            let broker = try Self.groupBroker(in: parent)
            let attackersSocket = try SocketDescriptor.socket(.inet, .datagram)
            defer { try? attackersSocket.close() }
            let squat = try ProgramRun.run(
                "setpriv", Array(Self.runAs(Self.attacker, Self.group).dropFirst()) + [
                    Paths.sockshare, "share", "--fd", "3", "--name", "api", "--for-uid", "\(Self.victim)", "--ttl", "60",
                    "--broker", broker.socketPath,
                ], descriptors: [3: attackersSocket.rawValue])
            #expect(squat.status == .exited(0), "the attacker deposits first: \(squat.standardError)")
            // Root's deposit of the same name is not refused: names are scoped by depositor.
            let real = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            defer { try? real.close() }
            _ = try broker.client.deposit(real.rawValue, named: "api", policy: ClaimPolicy(uid: Self.victim), timeToLive: .seconds(60))
            let adopt = { (extra: [String]) throws -> ProgramRun in
                try ProgramRun.run(
                    "setpriv", Array(Self.runAs(Self.victim, Self.group).dropFirst()) + [
                        Paths.sockshare, "adopt", "--name", "api", "--broker", broker.socketPath,
                    ] + extra + ["--", "readlink", "/proc/self/fd/3"])
            }
            let claimed = try adopt([])
            #expect(claimed.status == .exited(0), "\(claimed.standardError)")
            #expect(claimed.standardOutput == "socket:[\(try SocketIdentity(of: real.rawValue).inode)]\n", "root's share, not the squatter's")
            // The intended use of another user's share: say whose.
            let theirs = try adopt(["--from-uid", "\(Self.attacker)"])
            #expect(theirs.status == .exited(0), "\(theirs.standardError)")
            #expect(theirs.standardOutput == "socket:[\(try SocketIdentity(of: attackersSocket.rawValue).inode)]\n")
            try broker.stop()
        }

        /// Finding 10: a group member learns nothing of other users' shares: a claim of a name whose
        /// policy refuses it reads exactly as one of a name nobody holds, `revoke` of another's id as
        /// one that does not exist, and the metrics are not its to read.
        @Test func refusalsSayNothingOfOtherUsersShares() throws {
            let parent = Self.openDirectory()
            defer { Self.cleanUp(parent) }
            let broker = try Self.groupBroker(in: parent)
            let socket = try SocketDescriptor.socket(.inet, .stream)
            defer { try? socket.close() }
            _ = try broker.client.deposit(socket.rawValue, named: "secret-db", policy: ClaimPolicy(uid: 0), timeToLive: .seconds(60))
            let token = try broker.client.deposit(socket.rawValue, for: .current)
            let asAttacker = Array(Self.runAs(Self.attacker, Self.group).dropFirst())
            let exists = try ProgramRun.run("setpriv", asAttacker + [
                Paths.sockshare, "adopt", "--name", "secret-db", "--from-uid", "0", "--broker", broker.socketPath, "--", "true",
            ])
            let missing = try ProgramRun.run("setpriv", asAttacker + [
                Paths.sockshare, "adopt", "--name", "nothing-db", "--from-uid", "0", "--broker", broker.socketPath, "--", "true",
            ])
            #expect(exists.status == missing.status && exists.status == .exited(2))
            #expect(exists.standardError.replacing("secret-db", with: "nothing-db") == missing.standardError, "\(exists.standardError)")
            let revokeReal = try ProgramRun.run("setpriv", asAttacker + [Paths.sockshare, "revoke", "\(token.shareID)", "--broker", broker.socketPath])
            let revokeNone = try ProgramRun.run("setpriv", asAttacker + [Paths.sockshare, "revoke", "12345", "--broker", broker.socketPath])
            #expect(revokeReal.status == revokeNone.status)
            #expect(revokeReal.standardError.replacing("\(token.shareID)", with: "12345") == revokeNone.standardError,
                    "\(revokeReal.standardError) / \(revokeNone.standardError)")
            let metrics = try ProgramRun.run("setpriv", asAttacker + [Paths.sockshare, "status", "--metrics", "--broker", broker.socketPath])
            #expect(metrics.status == .exited(1) && metrics.standardError.contains("root and the broker's own user"), "\(metrics.standardError)")
            try broker.stop()
        }

        // MARK: 7. External workers

        /// Finding 7: one uid opens 500 worker channels, says `ready`, and never acknowledges. At most
        /// 64 are admitted; every real client is answered, none waiting more than one stall timeout.
        @Test func stalledExternalWorkersHoldNoClientLongerThanOneStallTimeout() throws {
            let directory = BrokerProcess.freshDirectory()
            let socket = directory + "/workers/workers.sock"
            let serve = try ServeProcess(
                ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--worker-socket", socket, "--stall-timeout", "2"],
                command: [], workers: 0)
            let honest = try ExternalWorkerTests.startWorker(socket)
            defer { try? honest.signal(SIGKILL); _ = try? honest.wait() }
            #expect(ExternalWorkerTests.externalReady(serve, 1))
            let address = try serve.address()
            #expect(LoadClient.request(address, timeout: .seconds(5)).answer != nil, "the honest worker proves itself")
            var hostile: [DescriptorChannel] = []
            defer { for channel in hostile { try? channel.close() } }
            for _ in 0..<500 {
                guard let channel = try? DescriptorChannel.connect(to: socket) else { continue }
                try? channel.send(WorkerMessage.ready.bytes, deadline: .now + .seconds(1))
                hostile.append(channel)
            }
            #expect(eventually(timeout: .seconds(10)) { (try? serve.status().externalWorkers?.count) == 64 },
                    "64 per uid (\((try? serve.status().externalWorkers?.count) ?? -1) connected)")
            let results = onThreads((0..<15).map { _ in
                { @Sendable () -> Duration in
                    let started = ContinuousClock.now
                    return LoadClient.request(address, timeout: .seconds(25)).answer == nil ? .seconds(999) : ContinuousClock.now - started
                }
            })
            let slowest = results.max() ?? .zero
            print("status: \(String(describing: try? serve.status().externalWorkers?.first))")
            print("external-worker flood: 500 channels (64 admitted), 15 clients answered, slowest \(slowest)")
            #expect(results.allSatisfy { $0 < .seconds(4) }, "each client waits at most one stall timeout (2 s): \(results)\n\(serve.log.split(separator: "\n").filter { !$0.contains("refused an external") }.suffix(60).joined(separator: "\n"))")
            try? honest.signal(SIGTERM)
            _ = try? honest.wait(deadline: .now + .seconds(20))
            try serve.stop()
        }

        // MARK: 9. pidfd tokens

        /// Finding 9: a token made up only from what /proc shows — the broker's pid and start time, its
        /// listening socket's inode and a descriptor number — must not make root's `adopt` run its
        /// command on the broker's socket: the holder it names is asked first, and does not know it.
        @Test func aMadeUpPidfdTokenGetsRootNothing() throws {
            let broker = try BrokerProcess()
            let pid = broker.process.pid
            var listenerFD: CInt = -1
            var inode: UInt64 = 0
            for name in Kernel.directoryEntries("/proc/\(pid)/fd") {
                guard let fd = CInt(name), let link = Kernel.readLink("/proc/\(pid)/fd/\(name)"), link.hasPrefix("socket:[") else { continue }
                let number = UInt64(link.dropFirst(8).dropLast()) ?? 0
                if String(decoding: try Kernel.readFile("/proc/net/unix"), as: UTF8.self).split(separator: "\n")
                    .contains(where: { $0.contains(" \(number) ") && $0.hasSuffix(broker.socketPath) }) {
                    listenerFD = fd
                    inode = number
                }
            }
            #expect(listenerFD >= 0, "found the broker's listener in /proc")
            let description = SocketDescription(
                family: .unix, kind: .seqpacket, protocolNumber: 0, localAddress: .unix(path: broker.socketPath), isListening: true,
                identity: SocketIdentity(inode: inode, device: 0))
            let marker = TestEnvironment.root + "/deputy-\(UInt32.random(in: 0...UInt32.max))"
            // A holder of the attacker's own making answers anything: it is refused, not being the source.
            let fakeHolder = BrokerProcess.freshDirectory() + "/fake-holder-\(UInt32.random(in: 0...UInt32.max)).sock"
            let fake = try SocketDescriptor.listening(on: .unix(path: fakeHolder), kind: .seqpacket)
            defer { try? fake.close(); Kernel.unlink(fakeHolder) }
            for (endpoint, refusal) in [(broker.socketPath, "no share with this id and secret"), (fakeHolder, "confirmed by its source only")] {
                let target = try ProgramRun.Background.start(
                    "sh", ["-c", "read token; exec \"$0\" adopt \"$token\" -- sh -c 'readlink /proc/self/fd/3 > \(marker)'", Paths.sockshare],
                    pipeInput: true)
                let forged = ShareToken(
                    mechanism: .pidfd, description: description, source: try ProcessIdentity(pid: pid),
                    target: try ProcessIdentity(pid: target.pid), createdAtMilliseconds: ShareTime.nowMilliseconds,
                    expiresAtMilliseconds: ShareTime.nowMilliseconds + 60_000, endpoint: endpoint, shareID: UInt64(listenerFD),
                    secret: .random())
                target.write(forged.text + "\n")
                #expect(target.wait() == .exited(1), "adopt refused")
                #expect(target.standardError.contains(refusal), "\(target.standardError)")
                #expect(access(marker, F_OK) != 0, "the command never ran on the broker's socket")
            }
            try broker.stop()
        }

        // MARK: 11. Robustness at start

        /// Finding 11: `LISTEN_FDS=3` with only descriptor 3 passed (4 a file, 5 closed) is a clear
        /// error, not a crash, and takes no descriptor that is not a socket.
        @Test func listenFDSNamingDescriptorsThatAreNotSocketsIsAClearError() throws {
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            defer { try? listener.close() }
            let file = try Kernel.open("/dev/null", O_RDONLY)
            defer { try? Kernel.close(file) }
            let run = try ProgramRun.run(
                "sh", ["-c", "LISTEN_PID=$$ LISTEN_FDS=3 exec \"$0\" serve --workers 1 -- \"$1\"", Paths.sockshare, Paths.helloWorker],
                descriptors: [3: listener.rawValue, 4: file])
            #expect(run.status == .exited(1), "\(run.status)")
            #expect(run.standardError.contains("descriptor 4 is a character device, not a socket"), "\(run.standardError)")
        }

        /// Finding 11: hello-worker (ConnectionServer) given a socket that does not listen, or a
        /// channel whose serve has gone, says so and exits 1; it does not trap.
        @Test func aWorkerGivenTheWrongSocketSaysSoAndExits() throws {
            let datagram = try SocketDescriptor.socket(.unix, .datagram)
            defer { try? datagram.close() }
            let listen = try ProgramRun.run(
                "sh", ["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\"", Paths.helloWorker], descriptors: [3: datagram.rawValue])
            #expect(listen.status == .exited(1) && listen.standardError.contains("not a listening stream socket"), "\(listen.standardError)")
            let (mine, theirs) = try SocketDescriptor.pair(kind: .seqpacket)
            try mine.close()
            var environment = ProcessSpawner.environment
            environment["SOCKSHARE_WORKER_FD"] = "3"
            let orphan = try ProgramRun.run(Paths.helloWorker, [], descriptors: [3: theirs.rawValue], environment: environment)
            try theirs.close()
            #expect(orphan.status == .exited(1) && orphan.standardError.contains("closed this worker's channel"), "\(orphan.standardError)")
        }

        /// Finding 11: a serve that fails to start leaves no control socket behind.
        @Test func aServeThatFailsToStartLeavesNoControlSocket() throws {
            let parent = BrokerProcess.freshDirectory()
            let control = parent + "/serve.sock"
            // The worker socket's directory is someone else's: serve fails after making its control socket.
            let foreign = Self.openDirectory()
            defer { Self.cleanUp(foreign) }
            mkdir(foreign + "/workers", 0o700)
            chown(foreign + "/workers", Self.attacker, Self.attacker)
            let run = try ProgramRun.run(Paths.sockshare, [
                "serve", "--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--control", control, "--worker-socket",
                foreign + "/workers/workers.sock", "--", Paths.helloWorker,
            ])
            #expect(run.standardError.contains("owned by uid \(Self.attacker)"), "\(run.standardError)")
            #expect(run.status == .exited(1), "\(run.standardError)")
            #expect(access(control, F_OK) != 0, "the control socket was removed")
        }
    }
}

/// Writes `text` to a new file at `path`.
func writeFile(_ path: String, _ text: String) throws {
    let fd = try Kernel.open(path, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
    defer { try? Kernel.close(fd) }
    let written = text.withCString { Glibc.write(fd, $0, strlen($0)) }
    guard written == text.utf8.count else { throw HelperError(code: "write", text: "\(path): short write") }
}

extension SocketShareTests.SecurityTests {
    // MARK: What the red team found in the fixes

    /// A granted user cannot take serve down by opening control connections: at most 8 at once for
    /// it, 64 for all granted users; the rest are refused at once, logged once a second, and root's
    /// status still answers.
    @Test func aGrantedUserCannotFloodTheControlSocket() throws {
        let parent = Self.openDirectory()
        defer { Self.cleanUp(parent) }
        let control = parent + "/serve.sock"
        let serve = try ServeProcess(
            ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--control-user", "\(Self.attacker)"],
            command: [Paths.helloWorker], workers: 1, controlPath: control)
        let before = ServeProcess.descriptorCount(serve.process.pid)
        let script = "import socket,sys,time\nheld=[]\nfor _ in range(2000):\n s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\n"
            + " try:\n  s.connect(sys.argv[1]); held.append(s)\n except OSError: pass\ntime.sleep(1)\nkept=0\nfor s in held:\n"
            + " s.setblocking(False)\n try:\n  kept += 0 if s.recv(4096) else 0\n except BlockingIOError:\n  kept += 1\n except OSError: pass\n"
            + "print(kept, flush=True)\nsys.stdin.read()"
        let flood = try ProgramRun.Background.start(
            "setpriv", Array(Self.runAs(Self.attacker).dropFirst()) + [Self.python, "-c", script, control], pipeInput: true)
        defer { flood.kill() }
        let kept = Int(try #require(flood.readLine(timeout: .seconds(60)))) ?? -1
        #expect(kept == Supervisor.controlConnectionsPerGrantedUser, "the flood kept \(kept) control connections")
        #expect(ServeProcess.descriptorCount(serve.process.pid) <= before + Supervisor.controlConnectionsPerGrantedUser + 2)
        #expect(try SupervisorClient(controlPath: control).status().pid == serve.process.pid, "root's status answers")
        let lines = serve.log.split(separator: "\n").filter { $0.contains("refused a control connection") }.count
        #expect(lines <= 5, "\(lines) log lines for 1,992 refusals")
        flood.closeInput()
        flood.wait()
        try serve.stop()
    }

    /// An external worker on probation that reads what it is sent and refuses it, to see every
    /// connection without ever acknowledging one, fails its probation: it is dropped, told
    /// `takenBack`, and its uid's next probe waits a stall timeout (2 s, then 4, 8…). The request it
    /// read is lost to its client; of 40 clients, asked one after another within about 3 s, at most
    /// two go unanswered (one per cooldown).
    @Test func aWorkerOnProbationThatRefusesWhatItReadsIsDropped() throws {
        let directory = BrokerProcess.freshDirectory()
        let socket = directory + "/workers/workers.sock"
        let serve = try ServeProcess(
            ["--listen", "tcp://127.0.0.1:0", "--mode", "handoff", "--worker-socket", socket, "--stall-timeout", "2"],
            command: [], workers: 0)
        let honest = try SocketShareTests.ExternalWorkerTests.startWorker(socket)
        defer { try? honest.signal(SIGKILL); _ = try? honest.wait() }
        #expect(SocketShareTests.ExternalWorkerTests.externalReady(serve, 1))
        let address = try serve.address()
        #expect(LoadClient.request(address, timeout: .seconds(5)).answer != nil, "the honest worker proves itself")
        var hostile: [ProgramRun.Background] = []
        defer { for worker in hostile { worker.kill() } }
        for _ in 0..<5 {
            hostile.append(try ProgramRun.Background.start(Self.python, [SocketShareTests.CommandLineTests.scripts + "/hostile_worker.py", socket]))
        }
        #expect(SocketShareTests.ExternalWorkerTests.externalReady(serve, 6))
        var unanswered = 0
        for _ in 0..<40 where LoadClient.request(address, timeout: .seconds(1)).answer == nil { unanswered += 1 }
        print("probation refusals: 5 refusing workers, 40 clients, \(unanswered) unanswered")
        #expect(unanswered <= 2, "\(unanswered) clients unanswered")
        #expect(serve.log.contains("refused the connection it was sent on probation"), "\(serve.log.suffix(2000))")
        try? honest.signal(SIGTERM)
        _ = try? honest.wait(deadline: .now + .seconds(20))
        try serve.stop()
    }

    /// Text a group member controls never forges a line of the broker's log: a cgroup with a
    /// newline is refused, and control characters in a socket's address are escaped.
    @Test func aMemberCannotForgeALineOfTheBrokersLog() throws {
        let parent = Self.openDirectory()
        defer { Self.cleanUp(parent) }
        let broker = try Self.groupBroker(in: parent)
        let socket = try SocketDescriptor.socket(.inet, .stream)
        defer { try? socket.close() }
        let forged = "/x\n2026-12-08T00:00:00+0000 critical sockshare.broker: FORGED revoked every share"
        #expect(throws: SocketShareError.self) {
            try broker.client.deposit(socket.rawValue, named: "web", policy: ClaimPolicy(cgroup: forged), timeToLive: .seconds(10))
        }
        var writer = ByteWriter()
        writer.write(EscrowMessage.version)
        writer.write(EscrowMessage.TypeCode.depositNamed.rawValue)
        writer.writeShortText("web")
        writer.write(UInt8(4))
        writer.write(UInt32(0))
        writer.write(UInt32(0))
        writer.writeShortText(forged)
        writer.write(UInt32(10_000))
        writer.write(UInt8(0))
        let channel = try DescriptorChannel.connect(to: broker.socketPath)
        defer { try? channel.close() }
        try channel.send(writer.bytes, descriptors: [socket.rawValue], deadline: .now + .seconds(5))
        let reply = try #require(try channel.receive(deadline: .now + .seconds(5)))
        guard case .failure(let failure, _) = try EscrowMessage(bytes: reply.bytes) else { Issue.record("accepted"); return }
        #expect(failure == .malformed)
        #expect(!broker.log.split(separator: "\n").contains { $0.contains("FORGED") && !$0.contains("\\u{A}") })
        #expect(SocketAddress.unix(path: "/tmp/a\nb").description == "unix:/tmp/a\\u{A}b")
        try broker.stop()
    }

    /// Root takes a broker path from `$SOCKSHARE_BROKER` only in a directory of root's own: another
    /// user may have set root's environment (`sudo -E`). A path given with `--broker` is root's choice.
    @Test func rootRefusesABrokerNamedByItsEnvironmentInAUsersDirectory() throws {
        let parent = Self.openDirectory()
        defer { Self.cleanUp(parent) }
        let evil = parent + "/evil"
        mkdir(evil, 0o700)
        chown(evil, Self.attacker, Self.attacker)
        let fake = try BrokerProcess(directory: evil, wrapper: Self.runAs(Self.attacker), environment: Self.strangerEnvironment())
        let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
        defer { try? listener.close() }
        let share = try ProgramRun.run(
            Paths.sockshare, ["share", "--fd", "3", "--to", "1", "--via", "broker"], descriptors: [3: listener.rawValue],
            environment: Self.strangerEnvironment(["SOCKSHARE_BROKER": fake.socketPath]))
        #expect(share.status != .exited(0) && share.standardError.contains("owned by uid \(Self.attacker)"), "\(share.standardError)")
        #expect(!fake.log.contains("deposit"))
        try fake.stop()
    }

    /// A runtime directory another user made and closed (0700) is refused with the reason, not with
    /// a bare "permission denied".
    @Test func aClosedSquattedRuntimeDirectoryIsRefusedWithTheReason() throws {
        let squatted = "/tmp/sockshare-\(Self.victim)"
        Self.cleanUp(squatted)
        defer { Self.cleanUp(squatted) }
        mkdir(squatted, 0o700)
        chown(squatted, Self.attacker, Self.attacker)
        let share = try ProgramRun.run(
            "setpriv", Array(Self.runAs(Self.victim).dropFirst()) + [
                Paths.sockshare, "bind", "tcp://127.0.0.1:0", "--", Paths.sockshare, "share", "--fd", "3", "--to", "1", "--via", "sharer",
            ], environment: Self.strangerEnvironment())
        #expect(share.status != .exited(0) && share.standardError.contains("owned by uid \(Self.attacker)"), "\(share.standardError)")
    }
}
