import Glibc
import Testing
@testable import SocketShare

/// The `sockshare` program, run as users run it.
extension SocketShareTests {
    @Suite struct CommandLineTests {
        init() { TestEnvironment.prepare() }

        static let scripts: String = {
            // Tests/SocketShareTests/CommandLineTests.swift -> Tests/Scripts
            let file = #filePath
            let tests = file[..<file.lastIndex(of: "/")!]
            return String(tests[..<tests.lastIndex(of: "/")!]) + "/Scripts"
        }()

        @Test func theDemoPasses() throws {
            let run = try ProgramRun.run(Paths.sockshare, ["demo"])
            #expect(run.status == .exited(0), "\(run.standardOutput)\(run.standardError)")
            #expect(run.standardOutput.contains("demo passed"))
            #expect(!run.standardOutput.contains("FAIL"))
        }

        @Test func theDemoPassesOverIPv6AndUnixSockets() throws {
            let path = TestEnvironment.runtimeDirectory + "/../demo.sock"
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
