import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// `sockshare serve` in shared mode, with the example worker, with systemd's variables, and its errors.
extension SocketShareTests {
    @Suite struct ServeTests {
        init() { TestEnvironment.prepare() }

        static let helloWorker = Paths.helloWorker

        @Test func anUnmodifiedSocketActivatedPythonServerServesInSharedMode() throws {
            let serve = try ServeProcess(
                ["--listen", "api=tcp://127.0.0.1:0", "--mode", "shared"],
                command: ["python3", CommandLineTests.scripts + "/listen_fds_server.py"], workers: 2)
            let result = LoadClient(address: try serve.address(), count: 100, threads: 2).run()
            #expect(result.answered == 100, "\(result)")
            let answer = LoadClient.request(try serve.address(), timeout: .seconds(10)).answer ?? ""
            #expect(answer.hasPrefix("hello from python") && answer.hasSuffix("via api (1 listener)"), "\(answer)")
            // A crashed worker is replaced, and the listener never stops answering.
            let victim = try serve.status().workers[0]
            kill(victim.pid, SIGKILL)
            #expect(eventually { (try? serve.status().workers.contains { $0.slot == 0 && $0.pid != victim.pid }) == true })
            #expect(LoadClient(address: try serve.address(), count: 50, threads: 2).run().answered == 50)
            #expect(try serve.stop() == .exited(0))
        }

        @Test(arguments: ["handoff", "shared"])
        func helloWorkerServesHTTPWithKeepAliveAndClose(_ mode: String) throws {
            let serve = try ServeProcess(
                ["--listen", "tcp://[::1]:0", "--mode", mode], command: [Self.helloWorker], workers: 2)
            let address = try serve.address()
            // Connection: close, several times.
            let result = LoadClient(address: address, count: 200, threads: 2).run()
            #expect(result.answered == 200, "\(result)")
            let pids = Set(try serve.status().workers.map { "\($0.pid)" })
            #expect(Set(result.byPid.keys).isSubset(of: pids), "\(result.byPid) vs \(pids)")
            // Keep-alive: three requests on one connection, one answer each, same worker.
            let client = try SocketDescriptor.connected(to: address)
            var answers: [String] = []
            for _ in 0..<3 {
                try client.sendAll(Array("GET / HTTP/1.1\r\nHost: test\r\n\r\n".utf8))
                var response = ""
                while !(response.contains("hello from") && response.hasSuffix("\n")),
                      try client.waitUntilReadable(deadline: .now + .seconds(10)) {
                    let chunk = try client.receive()
                    if chunk.isEmpty { break }
                    response += String(decoding: chunk, as: UTF8.self)
                }
                #expect(response.hasPrefix("HTTP/1.1 200 OK") && response.lowercased().contains("connection: keep-alive"), "\(response)")
                answers.append(response.firstRange(of: "\r\n\r\n").map { String(response[$0.upperBound...]).trimmingSpaces } ?? "")
            }
            #expect(Set(answers).count == 1 && answers[0].hasPrefix("hello from "), "\(answers)")
            try client.close()
            #expect(try serve.stop() == .exited(0))
        }

        @Test func serveUsesListenersPassedInBySystemd() throws {
            // sockshare bind plays systemd: it passes a listener at 3 with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES.
            let base = BrokerProcess.freshDirectory()
            let control = base + "/control.sock"
            let process = try ProcessSpawner.spawn(
                Paths.sockshare,
                arguments: ["bind", "tcp://127.0.0.1:0", "--name", "activated", "--", Paths.sockshare, "serve", "--control", control,
                            "--workers", "1", "--mode", "handoff", "--", Paths.helper, "--worker", "serve"],
                descriptors: [2: try Kernel.open("/dev/null", O_WRONLY)])
            defer {
                try? process.signal(SIGKILL)
                _ = try? process.wait()
            }
            #expect(eventually(timeout: .seconds(20)) { (try? SupervisorClient(controlPath: control).status().workers.first?.ready) == true })
            let status = try SupervisorClient(controlPath: control).status()
            #expect(status.listeners.map(\.name) == ["activated"])
            let address = try SocketEndpoint(parsing: status.listeners[0].address).address
            #expect(LoadClient(address: address, count: 20, threads: 1).run().answered == 20)
            try process.signal(SIGTERM)
            #expect(try process.wait(deadline: .now + .seconds(20)) == .exited(0))
        }

        @Test func badInvocationsAreOneLineErrors() throws {
            let cases: [([String], String)] = [
                (["serve", "--listen", "tcp://127.0.0.1:0", "--", "/nonexistent/worker"], "no such executable"),
                (["serve", "--listen", "web=sctp://x", "--", "true"], "unknown scheme sctp"),
                (["serve", "--listen", "tcp://127.0.0.1:0", "--mode", "relay", "--", "true"], "--mode relay"),
                (["serve", "--listen", "tcp://127.0.0.1:0", "--workers", "0", "--", "true"], "--workers 0"),
                (["serve", "--listen", "tcp://127.0.0.1:0"], "missing COMMAND"),
                (["serve", "--", "true"], "no --listen address"),
                (["serve", "--listen", "udp://127.0.0.1:0", "--mode", "handoff", "--", "true"], "datagram socket"),
                (["status", "--control", "/nonexistent/control.sock"], "no sockshare serve answers"),
            ]
            for (arguments, expected) in cases {
                let run = try ProgramRun.run(Paths.sockshare, arguments)
                #expect(run.status != .exited(0), "\(arguments)")
                #expect(run.standardError.hasPrefix("sockshare: ") && run.standardError.contains(expected), "\(arguments): \(run.standardError)")
                #expect(run.standardError.filter { $0 == "\n" }.count == 1, "\(arguments): \(run.standardError)")
            }
        }

        @Test func workerMessagesRoundTripAndRejectGarbage() throws {
            let messages: [WorkerMessage] = [
                .connections([HandedConnection(id: 7, listenerName: "web", peerAddress: "127.0.0.1:5", localAddress: "[::1]:80")]),
                .stop, .accepted([1, 2, 3], active: 9), .refused([4]), .load(active: 2), .ready, .doorbell, .leaving,
            ]
            for message in messages { #expect(try WorkerMessage(bytes: message.bytes) == message) }
            for bytes in [[UInt8](), [2, 0x21], [1, 0x99], [1, 0x21, 0, 5], [1, 0x31, 0, 0, 0, 0, 0, 2, 0]] {
                #expect(throws: SocketShareError.self) { try WorkerMessage(bytes: bytes) }
            }
        }

        /// Found by Fuzz/run: text that is not UTF-8 decoded lossily and then no longer fit its field.
        @Test func workerMessageTextMustBeUTF8AndLongNamesAreCutAtACharacter() throws {
            // connections, 1 connection, id 1, listener "ab", peer "\u{85}" (a lone continuation byte)
            let invalid: [UInt8] = [1, 0x21, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0x61, 0x62, 1, 0x85, 0]
            #expect { try WorkerMessage(bytes: invalid) } throws: { error in
                (error as? SocketShareError)?.detail.contains("peerAddress: not UTF-8") == true
            }
            let long = String(repeating: "é", count: 200)  // 400 bytes: cut to 254, not mid-character
            let message = WorkerMessage.connections([HandedConnection(id: 1, listenerName: long, peerAddress: "p", localAddress: "l")])
            guard case .connections(let decoded) = try WorkerMessage(bytes: message.bytes) else {
                Issue.record("not a connections message")
                return
            }
            #expect(decoded[0].listenerName == String(repeating: "é", count: 127))
        }
    }
}
