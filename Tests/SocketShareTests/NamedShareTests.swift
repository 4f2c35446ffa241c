import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// Named shares through the broker, across real processes: claimed by whoever the policy admits
/// (the kernel's uid, gid and cgroup), single use or kept, waited for, expired, revoked, handed to
/// a successor broker, and across pid namespaces that cannot see each other's pids.
extension SocketShareTests {
    @Suite struct NamedShareTests {
        init() { TestEnvironment.prepare() }

        /// `sockshare adopt --name NAME … -- sh -c 'readlink /proc/self/fd/3'`: the claimed socket's inode.
        static func adopt(
            _ name: String, broker: String, wait: Double? = nil, wrapper: [String] = []
        ) throws -> ProgramRun {
            let command = ["adopt", "--name", name, "--broker", broker] + (wait.map { ["--wait", "\($0)"] } ?? [])
                + ["--", "sh", "-c", "readlink /proc/self/fd/3; echo $LISTEN_FDNAMES"]
            if wrapper.isEmpty { return try ProgramRun.run(Paths.sockshare, command) }
            return try ProgramRun.run(wrapper[0], Array(wrapper.dropFirst()) + [Paths.sockshare] + command)
        }

        static func inode(of socket: SocketDescriptor) throws -> String {
            "socket:[\(try SocketIdentity(of: socket.rawValue).inode)]"
        }

        /// This process's cgroup v2 path, as `/proc/self/cgroup` shows it.
        static var ownCgroup: String {
            let text = String(decoding: (try? Kernel.readFile("/proc/self/cgroup")) ?? [], as: UTF8.self)
            return text.split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) } ?? "/"
        }

        @Test func aKeptNamedShareGoesToEveryAdmittedClaimantUntilItIsRevoked() throws {
            let broker = try BrokerProcess()
            let before = openDescriptors().count
            let brokerBefore = broker.settledDescriptorCount
            do {
                let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
                let id = try broker.client.deposit(listener.rawValue, named: "web", timeToLive: nil, keep: true)
                let inode = try Self.inode(of: listener)
                try listener.close()
                for _ in 0..<3 {
                    let run = try Self.adopt("web", broker: broker.socketPath)
                    #expect(run.status == .exited(0), "\(run.standardError)")
                    #expect(run.standardOutput == "\(inode)\nweb\n", "every claimant gets its own descriptor of the same socket")
                }
                let listed = try #require(try broker.client.namedShares().first)
                #expect(listed.id == id && listed.name == "web" && listed.keep && listed.claims == 3)
                #expect(listed.expiresInMilliseconds == nil, "a kept share without a time to live is held until revoked")
                #expect(listed.policy.isEmpty && listed.depositorUID == geteuid())
                #expect(broker.log.contains("named share claimed"))
                let status = try ProgramRun.run(Paths.sockshare, ["status", "--broker", broker.socketPath, "--json"])
                #expect(status.standardOutput.contains("\"claims\":3") && status.standardOutput.contains("\"name\":\"web\""))
                #expect(!status.standardOutput.contains("secret"))

                let revoke = try ProgramRun.run(Paths.sockshare, ["revoke", "--name", "web", "--broker", broker.socketPath])
                #expect(revoke.status == .exited(0) && revoke.standardOutput == "revoked share \(id) (web)\n")
                let late = try Self.adopt("web", broker: broker.socketPath)
                #expect(late.status == .exited(2) && late.standardError.contains("no share named web from uid"), "\(late.standardError)")
            }
            #expect(openDescriptors().count == before)
            #expect(broker.settledDescriptorCount == brokerBefore, "the broker closed its duplicate")
            try broker.stop()
        }

        @Test func aSingleUseNamedShareGoesToOneClaimantAndOneThatLeavesMidClaimLosesItForNoOne() throws {
            let broker = try BrokerProcess()
            let before = openDescriptors().count
            do {
                let socket = try SocketDescriptor.socket(.inet, .datagram)
                _ = try broker.client.deposit(socket.rawValue, named: "dns", timeToLive: .seconds(30))
                let inode = try Self.inode(of: socket)
                try socket.close()

                // A claimant takes the descriptor and goes away without acknowledging it.
                let quitter = try DescriptorChannel.connect(to: broker.socketPath)
                try quitter.send(EscrowMessage.claimNamed(name: "dns", waitMilliseconds: 0, from: nil).bytes, deadline: .now + .seconds(5))
                let offered = try #require(try quitter.receive(maximumBytes: 4096, deadline: .now + .seconds(5)))
                #expect(offered.descriptorCount == 1)
                offered.closeDescriptors()
                // Meanwhile nobody else gets it...
                #expect {
                    try broker.client.claim(named: "dns")
                } throws: { ($0 as? SocketShareError)?.cause == .claimInProgress }
                try quitter.close()
                // ...and once the quitter is gone it is there for the next claimant, once.
                let run = try Self.adopt("dns", broker: broker.socketPath, wait: 5)
                #expect(run.status == .exited(0) && run.standardOutput.hasPrefix(inode), "\(run.standardError)")
                let second = try Self.adopt("dns", broker: broker.socketPath)
                #expect(second.status == .exited(2) && second.standardError.contains("no share named dns"))
                #expect(try broker.client.namedShares().isEmpty)
            }
            #expect(openDescriptors().count == before)
            try broker.stop()
        }

        @Test func aClaimantWaitsForANameNotYetDepositedAndANameExpires() throws {
            let broker = try BrokerProcess()
            let before = openDescriptors().count
            do {
                let (out, outChild) = try SocketDescriptor.pair()
                let waiting = try ProcessSpawner.spawn(
                    Paths.sockshare,
                    arguments: ["adopt", "--name", "late", "--wait", "20", "--broker", broker.socketPath, "--fd-name", "api", "--",
                                "sh", "-c", "readlink /proc/self/fd/3; echo $LISTEN_FDNAMES"],
                    descriptors: [1: outChild.rawValue, 2: 2])
                try outChild.close()
                var pause = timespec(tv_sec: 0, tv_nsec: 300_000_000)
                nanosleep(&pause, nil)
                let listener = try SocketDescriptor.listening(on: .ipv6(host: "::1", port: 0))
                _ = try broker.client.deposit(listener.rawValue, named: "late", timeToLive: .seconds(30))
                let inode = try Self.inode(of: listener)
                try listener.close()
                #expect(try waiting.wait(deadline: .now + .seconds(20)) == .exited(0))
                #expect(String(decoding: try out.receive(), as: UTF8.self) == "\(inode)\napi\n")
                try out.close()

                // A share whose time ran out is refused, then forgotten.
                let short = try SocketDescriptor.socket(.inet, .stream)
                _ = try broker.client.deposit(short.rawValue, named: "short", timeToLive: .milliseconds(200))
                try short.close()
                nanosleep(&pause, nil)
                let expired = try Self.adopt("short", broker: broker.socketPath)
                #expect(expired.standardError.contains("expired") ? expired.status == .exited(1)
                    : expired.status == .exited(2) && expired.standardError.contains("no share named short"), "\(expired.standardError)")
                #expect(eventually { (try? broker.client.namedShares().isEmpty) == true })
                let gone = try Self.adopt("never", broker: broker.socketPath, wait: 0.3)
                #expect(gone.status == .exited(2) && gone.standardError.contains("no share named never"))
            }
            #expect(openDescriptors().count == before)
            try broker.stop()
        }

        /// The broker holds a claim with a wait: a claimant waiting behind one that has the share
        /// gets it when that one leaves without it; an async claim that is cancelled stops waiting
        /// and leaves nothing open on either side.
        @Test func theBrokerHoldsAWaitingClaimAndCancellingItLeavesNothing() async throws {
            let broker = try BrokerProcess()
            let brokerBefore = broker.settledDescriptorCount
            let before = openDescriptors().count
            do {
                let socket = try SocketDescriptor.socket(.inet, .stream)
                _ = try broker.client.deposit(socket.rawValue, named: "busy", timeToLive: .seconds(30))
                let inode = try Self.inode(of: socket)
                try socket.close()
                let first = try DescriptorChannel.connect(to: broker.socketPath)
                try first.send(EscrowMessage.claimNamed(name: "busy", waitMilliseconds: 0, from: nil).bytes, deadline: .now + .seconds(5))
                let offered = try #require(try first.receive(maximumBytes: 4096, deadline: .now + .seconds(5)))
                offered.closeDescriptors()
                // Waits at the broker behind the first claimant, which then leaves without the share.
                let client = broker.client
                let waiting = Task { try await client.claim(named: "busy", waitingUpTo: .seconds(20)) }
                try await Task.sleep(for: .milliseconds(300))
                try first.close()
                let claimed = try await waiting.value
                #expect(try Self.inode(of: claimed) == inode)
                try claimed.close()

                // Cancelled while the broker holds it: CancellationError, at once.
                let started = ContinuousClock.now
                let cancelled = Task { try await client.claim(named: "never", waitingUpTo: .seconds(20)) }
                try await Task.sleep(for: .milliseconds(300))
                cancelled.cancel()
                await #expect(throws: CancellationError.self) { try await cancelled.value }
                #expect(ContinuousClock.now - started < .seconds(5))

                // Without a deposit, the wait ends with the refusal of the last try.
                let waited = ContinuousClock.now
                #expect { try client.claim(named: "never", waitingUpTo: .milliseconds(400)) } throws: {
                    ($0 as? SocketShareError)?.code == .notFound
                }
                #expect(ContinuousClock.now - waited >= .milliseconds(400), "the broker held the claim for the wait")
                #expect(throws: SocketShareError.self, "a wait above a day is refused") {
                    try client.claim(named: "never", waitingUpTo: .seconds(86_401))
                }
            }
            #expect(eventually { openDescriptors().count == before })
            #expect(broker.settledDescriptorCount == brokerBefore, "the broker closed the held claims' connections")
            try broker.stop()
        }

        @Test func badNamesAndArgumentsAreRefusedNamingTheArgument() throws {
            let broker = try BrokerProcess()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            defer { try? socket.close() }
            #expect(throws: SocketShareError.self) { try broker.client.deposit(socket.rawValue, named: "no/slash") }
            #expect(throws: SocketShareError.self) { try broker.client.deposit(socket.rawValue, named: "forever", timeToLive: nil) }
            _ = try broker.client.deposit(socket.rawValue, named: "taken")
            #expect {
                try broker.client.deposit(socket.rawValue, named: "taken")
            } throws: { ($0 as? SocketShareError)?.detail.contains("you already hold a share named taken") == true }
            for (arguments, expected) in [
                (["share", "--fd", "0", "--name", "a b"], "--name a b: a name is made of letters"),
                (["share", "--fd", "0", "--name", "x", "--to", "1"], "--to and --name: give one"),
                (["share", "--fd", "0", "--to", "1", "--keep"], "--keep: only a share by --name has a policy"),
                (["share", "--fd", "0", "--name", "x", "--for-cgroup", "app"], "--for-cgroup app: expected an absolute cgroup v2 path"),
                (["share", "--fd", "0", "--name", "x", "--for-uid", "no-such-user-here"], "--for-uid no-such-user-here: no such user"),
                (["share", "--fd", "0", "--name", "x", "--via", "sharer"], "--via sharer: named shares are held by the broker"),
                (["adopt", "--", "true"], "missing TOKEN or --name NAME"),
                (["adopt", "--name", "x", "--wait=-1", "--", "true"], "--wait -1.0: expected a number of seconds"),
                (["revoke"], "missing TOKEN, ID or --name NAME"),
            ] {
                let run = try ProgramRun.run(Paths.sockshare, arguments)
                #expect(run.status == .exited(64) || run.status == .exited(1), "\(arguments)")
                #expect(run.standardError.contains(expected), "\(arguments): \(run.standardError)")
            }
            try broker.stop()
        }

        @Test func aSuccessorBrokerTakesOverNamedShares() throws {
            let directory = BrokerProcess.freshDirectory()
            let old = try BrokerProcess(directory: directory)
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let inode = try Self.inode(of: listener)
            _ = try old.client.deposit(listener.rawValue, named: "web", policy: ClaimPolicy(uid: geteuid()), timeToLive: nil, keep: true)
            _ = try old.client.deposit(listener.rawValue, named: "once", timeToLive: .seconds(60))
            try listener.close()
            #expect(try Self.adopt("web", broker: old.socketPath).standardOutput.hasPrefix(inode))
            let new = try BrokerProcess(directory: directory, takeover: true)
            #expect(try old.waitForExit() == .exited(0))
            let named = try new.client.namedShares()
            #expect(named.map(\.name) == ["web", "once"] || named.map(\.name) == ["once", "web"])
            #expect(named.first { $0.name == "web" }?.claims == 1, "the claim count travels with the share")
            #expect(named.first { $0.name == "web" }?.policy == ClaimPolicy(uid: geteuid()))
            #expect(try Self.adopt("web", broker: new.socketPath).standardOutput.hasPrefix(inode))
            #expect(try Self.adopt("once", broker: new.socketPath).standardOutput.hasPrefix(inode))
            #expect(new.log.contains("2 named shares"))
            try new.stop()
        }

        static let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

        /// A broker opened to nobody's group, in a directory outside the private test directory
        /// (which nobody could not enter); the caller removes `parent`.
        static func brokerNobodyCanReach() throws -> (broker: BrokerProcess, parent: String) {
            var template = Array("/tmp/sockshare-named-XXXXXX".utf8CString)
            let parent = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            chmod(parent, 0o755)
            return (try BrokerProcess(arguments: ["--group", "65534"], directory: parent + "/run"), parent)
        }

        @Test(.enabled(if: geteuid() == 0, "needs root to run processes as nobody"))
        func policiesAreExactAndDenyByDefault() throws {
            let (broker, parent) = try Self.brokerNobodyCanReach()
            defer { _ = try? ProgramRun.run("rm", ["-rf", parent]) }
            let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            defer { try? socket.close() }
            let inode = try Self.inode(of: socket)
            let cases: [(name: String, policy: ClaimPolicy, rootAdmitted: Bool, nobodyAdmitted: Bool, refusal: String)] = [
                ("default", ClaimPolicy(), true, false, "admits uid 0 only"),
                ("for-root", ClaimPolicy(uid: 0), true, false, "admits uid 0 only"),
                ("for-nobody", ClaimPolicy(uid: 65534), false, true, "admits uid 65534 only"),
                ("for-nogroup", ClaimPolicy(gid: 65534), false, true, "admits gid 65534 only"),
                ("for-my-cgroup", ClaimPolicy(cgroup: Self.ownCgroup), true, true, ""),
                ("for-other-cgroup", ClaimPolicy(cgroup: "/sockshare-test-nowhere"), false, false, "admits cgroup /sockshare-test-nowhere only"),
                ("uid-and-gid", ClaimPolicy(uid: 65534, gid: 0), false, false, "admits"),
            ]
            for entry in cases {
                _ = try broker.client.deposit(socket.rawValue, named: entry.name, policy: entry.policy, timeToLive: nil, keep: true)
                let asRoot = try Self.adopt(entry.name, broker: broker.socketPath)
                let asNobody = try Self.adopt(entry.name, broker: broker.socketPath, wrapper: Self.nobody)
                for (run, admitted, who) in [(asRoot, entry.rootAdmitted, "root"), (asNobody, entry.nobodyAdmitted, "nobody")] {
                    if admitted {
                        #expect(run.status == .exited(0) && run.standardOutput.hasPrefix(inode), "\(entry.name) \(who): \(run.standardError)")
                    } else {
                        // The claimant hears what it would of a name not held; the broker's log says why.
                        #expect(run.status == .exited(2), "\(entry.name) \(who): a refusal by policy exits 2")
                        #expect(run.standardError.contains("no share named \(entry.name) from uid"), "\(entry.name) \(who): \(run.standardError)")
                        #expect(!run.standardError.contains("admits"), "\(entry.name) \(who): the policy is not told")
                        #expect(broker.log.contains(entry.refusal), "\(entry.name) \(who): the log says why")
                    }
                }
            }
            #expect(broker.log.contains("named claim refused"))
            let metrics = try broker.client.metrics()
            #expect(metrics.contains("sockshare_refusals_total{reason=\"policyRefused\"}"), "\(metrics)")
            #expect(metrics.contains("sockshare_named_claims_total"))
            try broker.stop()
        }

        static let hasUserNamespaces: Bool = geteuid() == 0
            && (try? ProgramRun.run("setpriv", nobody + ["unshare", "--user", "--map-root-user", "true"]).status) == .exited(0)

        /// A claimant that is root in a user namespace of its own is still nobody to the broker: the
        /// kernel reports its ids as the broker's namespace maps them.
        @Test(.enabled(if: hasUserNamespaces, "needs root and unprivileged user namespaces"))
        func rootInItsOwnUserNamespaceIsNobodyToThePolicy() throws {
            let (broker, parent) = try Self.brokerNobodyCanReach()
            defer { _ = try? ProgramRun.run("rm", ["-rf", parent]) }
            let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            defer { try? socket.close() }
            let inode = try Self.inode(of: socket)
            _ = try broker.client.deposit(socket.rawValue, named: "for-root", policy: ClaimPolicy(uid: 0, gid: 0), timeToLive: nil, keep: true)
            _ = try broker.client.deposit(socket.rawValue, named: "for-nobody", policy: ClaimPolicy(uid: 65534), timeToLive: nil, keep: true)
            let fakeRoot = Self.nobody + ["unshare", "--user", "--map-root-user"]
            let whoami = try ProgramRun.run("setpriv", Array(fakeRoot.dropFirst()) + ["id", "-u"])
            #expect(whoami.standardOutput == "0\n", "inside its namespace the claimant is root")
            let refused = try Self.adopt("for-root", broker: broker.socketPath, wrapper: fakeRoot)
            #expect(refused.status == .exited(2) && broker.log.contains("runs as uid 65534"), "\(refused.standardError)")
            let admitted = try Self.adopt("for-nobody", broker: broker.socketPath, wrapper: fakeRoot)
            #expect(admitted.status == .exited(0) && admitted.standardOutput.hasPrefix(inode), "\(admitted.standardError)")
            try broker.stop()
        }

        // MARK: pid namespaces

        static let hasPidNamespaces: Bool = geteuid() == 0
            && (try? ProgramRun.run("unshare", ["--pid", "--fork", "--mount-proc", "true"]).status) == .exited(0)

        /// Runs the rest of the words in a new pid namespace of its own, with its own /proc: a
        /// container that sees none of the others' pids.
        static let container = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]

        @Test(.enabled(if: hasPidNamespaces, "needs root and unshare(1) for pid namespaces"))
        func siblingContainersShareByNameThroughABrokerInAThirdOne() throws {
            let broker = try BrokerProcess(wrapper: Self.container)
            // The source container binds and deposits; it cannot name the claimant, which is not even running.
            let source = try ProgramRun.run(
                "unshare",
                Array(Self.container.dropFirst()) + [
                    Paths.sockshare, "bind", "tcp://127.0.0.1:0", "--", "sh", "-c",
                    "readlink /proc/self/fd/3; echo $$; exec \(Paths.sockshare) share --fd 3 --name web --keep --for-uid 0 --broker \(broker.socketPath)",
                ])
            #expect(source.status == .exited(0), "\(source.standardError)")
            let lines = source.standardOutput.split(separator: "\n").map(String.init)
            #expect(lines.count == 3 && lines[1] == "1", "the source ran as pid 1 of its own namespace: \(lines)")
            let inode = lines.first ?? "?"
            let listed = try #require(try broker.client.namedShares().first)
            #expect(listed.sourcePID == 0, "the broker cannot see the source's pid, and says so")

            for _ in 0..<2 {
                let claim = try Self.adopt("web", broker: broker.socketPath, wrapper: Self.container)
                #expect(claim.status == .exited(0) && claim.standardOutput == "\(inode)\nweb\n", "\(claim.standardError)")
            }
            // A cgroup policy cannot be checked for a claimant whose pid the broker cannot see: refused, with the reason.
            let socket = try SocketDescriptor.socket(.inet, .stream)
            _ = try broker.client.deposit(socket.rawValue, named: "by-cgroup", policy: ClaimPolicy(cgroup: Self.ownCgroup), keep: false)
            try socket.close()
            let blind = try Self.adopt("by-cgroup", broker: broker.socketPath, wrapper: Self.container)
            #expect(blind.status == .exited(2) && broker.log.contains("not visible in the broker's pid namespace"), "\(blind.standardError)")
            try? broker.process.signal(SIGKILL)
            _ = try? broker.waitForExit()
        }

        @Test(.enabled(if: hasPidNamespaces, "needs root and unshare(1) for pid namespaces"))
        func hostToContainerByPidAndContainerToHostByNameOnly() throws {
            let broker = try BrokerProcess()
            // Host → container: the host sees the container's processes, so a pid share works.
            let inside = try Helper(wrapper: Self.container)
            #expect(try inside.call("pid")[0] == "1", "the helper is pid 1 of its own namespace")
            let hostPID = try #require(eventually { Self.onlyChild(of: inside.pid) != nil } ? Self.onlyChild(of: inside.pid) : nil)
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let inode = try Self.inode(of: listener)
            let token = try broker.client.deposit(listener.rawValue, for: try ProcessIdentity(pid: hostPID))
            let adopted = try inside.call("adopt", token.text)
            #expect("socket:[\(adopted[1])]" == inode, "the container adopts what the host shared to its host pid")

            // Container → host: the host's pid means nothing inside; the error says what to do instead.
            let toHost = try ProgramRun.run(
                "unshare",
                Array(Self.container.dropFirst()) + [
                    Paths.sockshare, "bind", "tcp://127.0.0.1:0", "--", Paths.sockshare, "share", "--fd", "3", "--to", "\(getpid())",
                    "--broker", broker.socketPath,
                ])
            #expect(toHost.status == .exited(1))
            #expect(toHost.standardError.contains("another pid namespace") && toHost.standardError.contains("--name"), "\(toHost.standardError)")
            // By name it works.
            let byName = try ProgramRun.run(
                "unshare",
                Array(Self.container.dropFirst()) + [
                    Paths.sockshare, "bind", "tcp://127.0.0.1:0", "--", Paths.sockshare, "share", "--fd", "3", "--name", "up",
                    "--broker", broker.socketPath,
                ])
            #expect(byName.status == .exited(0), "\(byName.standardError)")
            let claimed = try broker.client.claim(named: "up")
            #expect(try claimed.socketDescription().isListening)
            try claimed.close()
            try listener.close()
            _ = try inside.finish()
            try broker.stop()
        }

        /// The pid of the only child of `pid` (the process `unshare --fork` started).
        static func onlyChild(of pid: pid_t) -> pid_t? {
            let text = String(decoding: (try? Kernel.readFile("/proc/\(pid)/task/\(pid)/children")) ?? [], as: UTF8.self)
            let children = text.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { pid_t($0) }
            return children.count == 1 ? children[0] : nil
        }
    }
}
