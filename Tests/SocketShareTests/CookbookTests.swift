import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// The cookbook (`examples/`): each example's `run.sh` runs as its page says, against this build,
/// and reports every check it made; the Winsock port runs to its last check.
extension SocketShareTests {
    @Suite struct CookbookTests {
        init() { TestEnvironment.prepare() }

        static let examples = Paths.sourceRoot + "/examples"

        /// Runs `examples/<name>/run.sh`; returns its output once it has exited 0, and checks that it
        /// printed `okLines` lines of `<name>: ok: …` and left no new descriptor open in this process.
        static func runExample(_ name: String, okLines: Int, environment extra: [String: String] = [:]) throws -> String {
            let before = openDescriptors()
            var environment = ProcessSpawner.environment.merging(extra) { _, new in new }
            environment["SOCKSHARE_BIN"] = Paths.binaries
            let run = try ProgramRun.run(
                "bash", [examples + "/\(name)/run.sh"], environment: environment, timeout: .seconds(120))
            #expect(run.status == .exited(0), "\(run.standardOutput)\n\(run.standardError)")
            let oks = run.standardOutput.split(separator: "\n").filter { $0.hasPrefix("\(name): ok: ") }
            #expect(oks.count == okLines, "\(run.standardOutput)")
            #expect(!run.standardError.contains("FAILED"), "\(run.standardError)")
            // None left open here (other tests' background threads may close theirs meanwhile).
            #expect(Set(openDescriptors()).subtracting(before).isEmpty)
            return run.standardOutput
        }

        @Test func anyLanguage() throws {
            let output = try Self.runExample("any-language", okLines: 3)
            #expect(output.contains("Swift (sockshare share) -> Python (claim.py): hello from python pid"))
            #expect(output.contains("Python (deposit.py) -> broker -> Swift (sockshare adopt + http-app): hello from pid"))
            #expect(output.contains("on one TCP connection: PING FROM SHELL PID"))
        }

        @Test func nioHTTPAppInHandoffAndSharedMode() throws {
            let output = try Self.runExample("nio-http-app", okLines: 2)
            #expect(output.contains("handoff: reloaded while a slow request was in flight: it finished"))
            #expect(output.contains("shared: reloaded while a slow request was in flight: it finished"))
        }

        @Test func systemdSocketActivationAndNotifications() throws {
            let output = try Self.runExample("systemd", okLines: 1)
            for message in ["READY=1;STATUS=serving with 4 workers", "RELOADING=1;MONOTONIC_USEC=", "STOPPING=1;STATUS=draining", "exited 0"] {
                #expect(output.contains(message), "\(message)")
            }
        }

        /// The Hummingbird example is a package of its own: CI builds it before the tests
        /// (`swift build --package-path examples/hummingbird-app`).
        static let hummingbirdApp = examples + "/hummingbird-app/.build/debug/hummingbird-app"

        @Test(.enabled(if: access(hummingbirdApp, X_OK) == 0, "examples/hummingbird-app is not built"))
        func hummingbirdAppInHandoffAndSharedMode() throws {
            let output = try Self.runExample("hummingbird-app", okLines: 2, environment: ["HUMMINGBIRD_APP": Self.hummingbirdApp])
            #expect(output.contains("handoff: reloaded while a slow request was in flight: it finished"))
            #expect(output.contains("shared: reloaded while a slow request was in flight: it finished"))
        }

        /// So is the Vapor example (`swift build --package-path examples/vapor-app`).
        static let vaporApp = examples + "/vapor-app/.build/debug/vapor-app"

        @Test(.enabled(if: access(vaporApp, X_OK) == 0, "examples/vapor-app is not built"))
        func vaporAppInHandoffAndSharedMode() throws {
            let output = try Self.runExample("vapor-app", okLines: 2, environment: ["VAPOR_APP": Self.vaporApp])
            #expect(output.contains("handoff: a route parameter, a 100 KB echo, a 404, a 400 and a 413 are right"))
            #expect(output.contains("handoff: reloaded while a slow request was in flight: it finished"))
            #expect(output.contains("shared: reloaded while a slow request was in flight: it finished"))
        }

        @Test(.enabled(if: getuid() == 0, "binds port 80 and switches to nobody: needs root"))
        func privilegeSeparation() throws {
            let output = try Self.runExample("privilege-separation", okLines: 1)
            #expect(output.contains("\"uids\": [\"65534\", \"65534\", \"65534\", \"65534\"]"))
            #expect(output.contains("\"listening_on\": \"127.0.0.1:80\""))
        }

        @Test(.enabled(if: getuid() == 0, "creates network namespaces: needs root"))
        func networkNamespaces() throws {
            let output = try Self.runExample("network-namespaces", okLines: 1)
            #expect(output.contains("127.0.0.1:8080 refuses connections: the listener is not there"))
        }

        @Test(.enabled(if: getuid() == 0, "makes pid namespaces: needs root"))
        func containerReplacementByName() throws {
            let output = try Self.runExample("container-replacement", okLines: 1)
            #expect(output.contains("20 replacements under load: attempted"))
            #expect(output.contains("failed 0, reset 0, refused 0, timed out 0"))
            if output.contains("under keep-alive load") {
                #expect(output.contains("requests, 0 failed"), "keep-alive clients lost nothing either")
                #expect(output.contains("the broker handed 'web' to 41 generations"))
            } else {
                #expect(output.contains("the broker handed 'web' to 21 generations"))
            }
        }

        @Test(.enabled(if: getuid() == 0, "makes pid namespaces: needs root"))
        func sidecarHandsConnectionsToAppContainersThatComeAndGo() throws {
            let output = try Self.runExample("sidecar", okLines: 1)
            #expect(output.contains("10 blue/green app replacements under load: attempted"))
            #expect(output.contains("failed 0, reset 0, refused 0, timed out 0"))
        }

        @Test func theContainerFilesAreWellFormed() throws {
            let run = try ProgramRun.run("python3", [CommandLineTests.scripts + "/check_container_files.py", Self.examples + "/container-replacement"])
            #expect(run.status == .exited(0) && run.standardOutput == "container files: ok\n", "\(run.standardOutput)\(run.standardError)")
        }

        @Test func theWinsockPortRunsTheDocumentedFlow() throws {
            let run = try ProgramRun.run(Paths.binaries + "/winsock-port", [])
            #expect(run.status == .exited(0), "\(run.standardOutput)\n\(run.standardError)")
            let lines = run.standardOutput.split(separator: "\n").map(String.init)
            #expect(lines.contains { $0.hasPrefix("source: the share was claimed by pid ") })
            #expect(lines.contains("source: adopting the target's share itself is refused (alreadyClaimed)"))
            #expect(lines.last?.hasPrefix("ok: one socket, created by pid ") == true, "\(lines)")
        }

        /// Every example has its page, its script, and the page tells how to run the script.
        @Test(arguments: [
            "privilege-separation", "network-namespaces", "winsock-porting", "any-language", "nio-http-app", "hummingbird-app",
            "vapor-app", "systemd", "container-replacement", "sidecar",
        ])
        func everyExampleHasAPageThatRunsIt(_ name: String) throws {
            let page = String(decoding: try Kernel.readFile(Self.examples + "/\(name)/README.md"), as: UTF8.self)
            let runs = name == "winsock-porting" ? "swift run winsock-port" : "examples/\(name)/run.sh"
            #expect(page.contains(runs), "the page shows how to run it")
        }
    }
}
