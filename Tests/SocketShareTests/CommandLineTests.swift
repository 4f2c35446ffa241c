import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// The `sockshare` program, run as users run it.
extension SocketShareTests {
    @Suite struct CommandLineTests {
        init() { TestEnvironment.prepare() }

        static let scripts = Paths.sourceRoot + "/Tests/Scripts"

        /// The cookbook's Python clients (examples/any-language), which these tests also run.
        static let anyLanguage = Paths.sourceRoot + "/examples/any-language"

        @Test func theDemoPasses() throws {
            let run = try ProgramRun.run(Paths.sockshare, ["demo"])
            #expect(run.status == .exited(0), "\(run.standardOutput)\(run.standardError)")
            #expect(run.standardOutput.contains("demo passed"))
            #expect(!run.standardOutput.contains("FAIL"))
        }

        @Test func theDemoPassesOverIPv6AndUnixSockets() throws {
            let path = TestEnvironment.root + "/demo.sock"
            for address in ["tcp://[::1]:0", "unix://\(path)"] {
                let run = try ProgramRun.run(Paths.sockshare, ["demo", "--address", address])
                #expect(run.status == .exited(0), "\(address): \(run.standardOutput)\(run.standardError)")
            }
        }

        /// The CLI contract from Python: share, adopt, inspect, expiry, signals, every error path.
        @Test func theContractHoldsWhenDrivenFromPython() throws {
            let run = try ProgramRun.run("python3", [Self.scripts + "/cli_contract.py", Paths.sockshare], timeout: .seconds(240))
            #expect(run.status == .exited(0), "\(run.standardOutput)\n\(run.standardError)")
            #expect(run.standardOutput.contains("all checks passed"))
        }

        @Test func usageErrorsAreOneLineWithExitStatus64() throws {
            for arguments in [["share", "--fd", "3"], ["share", "--fd", "-1", "--to", "1"], ["adopt", "x"], ["frobnicate"]] {
                let run = try ProgramRun.run(Paths.sockshare, arguments)
                #expect(run.status == .exited(64), "\(arguments)")
                #expect(run.standardError.hasPrefix("sockshare: "), "\(arguments): \(run.standardError)")
                #expect(run.standardError.filter { $0 == "\n" }.count == 1, "\(arguments): \(run.standardError)")
                #expect(run.standardOutput.isEmpty)
            }
        }

        @Test func bindPlacesAListenerForTheCommand() throws {
            let run = try ProgramRun.run(
                Paths.sockshare, ["bind", "udp://127.0.0.1:0", "--fd", "4", "--name", "dns", "--", Paths.helper, "--probe-fds"])
            #expect(run.status == .exited(0), "\(run.standardError)")
            let words = run.standardOutput.split(whereSeparator: \.isWhitespace)
            #expect(words.contains { $0.hasPrefix("4:socket:[") })
            #expect(words.contains("LISTEN_FDNAMES=dns"))
            #expect(!words.contains { $0.hasPrefix("3:") }, "only the descriptor asked for")
        }
    }
}

extension SocketShareTests {
    /// Other languages: the Python client printed in docs/PROTOCOL.md claims shares made by Swift.
    @Suite struct ForeignClientTests {
        init() { TestEnvironment.prepare() }

        /// One whole line a child printed (it may arrive in pieces), within 20 s.
        static func line(from socket: SocketDescriptor) throws -> String {
            var bytes: [UInt8] = []
            while !bytes.contains(UInt8(ascii: "\n")), try socket.waitUntilReadable(deadline: .now + .seconds(20)) {
                let chunk = try socket.receive()
                if chunk.isEmpty { break }
                bytes += chunk
            }
            return String(decoding: bytes, as: UTF8.self)
        }

        /// (The Swift blocks are checked by `DocumentationTests`.)
        @Test(arguments: [
            ("PROTOCOL.md", "examples/any-language/claim.py"), ("PROTOCOL.md", "examples/any-language/deposit.py"),
            ("WORKERS.md", "Tests/Scripts/worker.py"),
        ])
        func theDocumentedPythonClientsAreTheTestedOnes(_ page: String, _ path: String) throws {
            let document = String(decoding: try Kernel.readFile(Paths.sourceRoot + "/docs/" + page), as: UTF8.self)
            let script = String(decoding: try Kernel.readFile(Paths.sourceRoot + "/" + path), as: UTF8.self)
            #expect(document.contains("```python\n" + script + "```"))
        }

        @Test func pythonDepositsAtTheBrokerAndSwiftAdopts() throws {
            let broker = try BrokerProcess()
            let target = try Helper()
            // Python deposits its listener and exits at once.
            let run = try ProgramRun.run("python3", [CommandLineTests.anyLanguage + "/deposit.py", broker.socketPath, "\(target.pid)"])
            #expect(run.status == .exited(0), "\(run.standardError)")
            let words = run.standardOutput.split(separator: " ").map(String.init)
            let token = try ShareToken(text: words[0])
            #expect(token.mechanism == .broker && token.isListening)
            let port = UInt16(words[1].trimmingSpaces)!
            let slot = try target.call("adopt", token.text)[0]
            let client = try SocketDescriptor.connected(to: .ipv4(host: "127.0.0.1", port: port))
            let connection = try target.call("accept", slot)[0]
            try target.call("send", connection, hex("served by swift"))
            #expect(try client.waitUntilReadable(deadline: .now + .seconds(5)))
            #expect(String(decoding: try client.receive(), as: UTF8.self) == "served by swift")
            _ = try target.finish()
            try broker.stop()
        }

        @Test func swiftDepositsAtTheBrokerAndPythonClaims() throws {
            let broker = try BrokerProcess()
            let (inRead, inWrite) = try SocketDescriptor.pair()
            let (outRead, outWrite) = try SocketDescriptor.pair()
            let python = try ProcessSpawner.spawn(
                "python3", arguments: [CommandLineTests.anyLanguage + "/claim.py"],
                descriptors: [0: inRead.rawValue, 1: outWrite.rawValue, 2: 2])
            try inRead.close()
            try outWrite.close()
            let socket = try SocketDescriptor.listening(on: .ipv6(host: "::1", port: 0), kind: .datagram)
            let token = try broker.client.deposit(socket.rawValue, for: try ProcessIdentity(pid: python.pid))
            try socket.close()
            try inWrite.sendAll(Array((token.text + "\n").utf8))
            let line = try Self.line(from: outRead)
            #expect(line.hasPrefix("claimed AF_INET6 SOCK_DGRAM ('::1'"), "\(line)")
            #expect(try python.wait(deadline: .now + .seconds(20)) == .exited(0))
            #expect(eventually { (try? broker.client.list().isEmpty) == true }, "Python acknowledged")
            try broker.stop()
        }

        @Test func pythonClaimsAShareMadeBySwift() throws {
            let (inRead, inWrite) = try SocketDescriptor.pair()
            let (outRead, outWrite) = try SocketDescriptor.pair()
            let python = try ProcessSpawner.spawn(
                "python3", arguments: [CommandLineTests.anyLanguage + "/claim.py"],
                descriptors: [0: inRead.rawValue, 1: outWrite.rawValue, 2: 2])
            try inRead.close()
            try outWrite.close()
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let token = try SocketShare.duplicate(listener, for: python.pid)
            try inWrite.sendAll(Array((token.text + "\n").utf8))
            let line = try Self.line(from: outRead)
            let port = try listener.socketDescription().localAddress.port!
            #expect(line.hasPrefix("claimed AF_INET SOCK_STREAM ('127.0.0.1', \(port))"), "\(line)")
            #expect(try python.wait(deadline: .now + .seconds(20)) == .exited(0))
        }

        @Test func pythonIsRefusedWhenItIsNotTheTarget() throws {
            let helper = try Helper()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let token = try SocketShare.duplicate(socket, for: helper.pid)
            let run = try ProgramRun.run("python3", [CommandLineTests.anyLanguage + "/claim.py"], input: token.text + "\n")
            #expect(run.status == .exited(1))
            #expect(run.standardError.contains("claim failed: this share is for pid \(helper.pid)"), "\(run.standardError)")
            #expect(run.standardError.contains("(code 5)"))
            _ = try helper.finish()
        }
    }
}
