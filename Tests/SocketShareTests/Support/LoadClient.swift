import Glibc
import Synchronization
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// A bounded closed-loop HTTP client for the serve tests: each thread opens a connection, sends one
/// request (`Connection: close`), reads the answer, and starts over, until `count` connections have
/// been opened in all. Loopback only.
struct LoadClient {
    /// What happened to the connections.
    struct Result: CustomStringConvertible {
        var opened = 0
        var answered = 0
        /// Connected, but the connection ended without an answer (reset or closed).
        var failed = 0
        /// Could not connect at all.
        var refused = 0
        var timedOut = 0
        /// Answers per pid in the body (`hello from PID`).
        var byPid: [String: Int] = [:]

        var description: String {
            "opened \(opened), answered \(answered), failed \(failed), refused \(refused), timed out \(timedOut), by pid \(byPid)"
        }
    }

    var address: SocketAddress
    var count: Int
    var threads = 2
    var timeout: Duration = .seconds(20)

    /// One request on a new connection.
    static func request(_ address: SocketAddress, timeout: Duration) -> (answer: String?, connected: Bool, timedOut: Bool) {
        guard let socket = try? SocketDescriptor.connected(to: address) else { return (nil, false, false) }
        defer { try? socket.close() }
        guard (try? socket.sendAll(Array("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".utf8))) != nil else {
            return (nil, true, false)
        }
        var response: [UInt8] = []
        let deadline = ContinuousClock.now + timeout
        while true {
            guard let readable = try? socket.waitUntilReadable(deadline: deadline) else { return (nil, true, false) }
            if !readable { return (nil, true, true) }
            guard let chunk = try? socket.receive(), !chunk.isEmpty else { break }
            response += chunk
        }
        let text = String(decoding: response, as: UTF8.self)
        guard text.hasPrefix("HTTP/1.") && text.contains(" 200 "), let body = text.firstRange(of: "\r\n\r\n") else { return (nil, true, false) }
        return (String(text[body.upperBound...]).trimmingSpaces, true, false)
    }

    /// Runs the load and returns the tally.
    func run() -> Result { run(during: {}) }

    /// Runs the load and returns the tally. `during` runs on the calling thread meanwhile.
    func run(during: () throws -> Void) rethrows -> Result {
        let started = Atomic(0)
        let shared = Locked(Result())
        let address = address
        let count = count
        let timeout = timeout
        let workers: [@Sendable () -> Void] = (0..<threads).map { _ in
            {
                while started.add(1, ordering: .relaxed).newValue <= count {
                    let outcome = Self.request(address, timeout: timeout)
                    shared.withLock { result in
                        result.opened += 1
                        if let answer = outcome.answer {
                            result.answered += 1
                            result.byPid[String(answer.split(separator: " ").last ?? ""), default: 0] += 1
                        } else if !outcome.connected {
                            result.refused += 1
                        } else if outcome.timedOut {
                            result.timedOut += 1
                        } else {
                            result.failed += 1
                        }
                    }
                }
            }
        }
        let done = Atomic(0)
        for worker in workers {
            try? DetachedThread.start {
                worker()
                done.add(1, ordering: .releasing)
            }
        }
        try during()
        while done.load(ordering: .acquiring) < workers.count {
            var pause = timespec(tv_sec: 0, tv_nsec: 2_000_000)
            nanosleep(&pause, nil)
        }
        return shared.withLock { $0 }
    }
}
