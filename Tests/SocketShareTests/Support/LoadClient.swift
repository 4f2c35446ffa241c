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

/// A bounded closed-loop keep-alive HTTP/1.1 client, as `wrk` loads a server: each thread keeps one
/// connection and sends its next request as soon as the previous answer is in, until told to stop
/// (at most `timeout` per answer). An answer that says `Connection: close` ends the connection
/// cleanly, and the thread opens a new one; a connection that ends (or resets) while a request is
/// unanswered is a failed request — what a reload under load must never cause. Loopback only.
final class KeepAliveLoad: Sendable {
    struct Result: CustomStringConvertible {
        var requests = 0
        var answered = 0
        /// Sent, and the connection ended or reset before the answer (or the answer was not 2xx).
        var failed = 0
        var timedOut = 0
        /// Connections the server ended after an answer that said `Connection: close`.
        var closedCleanly = 0
        var refused = 0

        var description: String {
            "requests \(requests), answered \(answered), failed \(failed), timed out \(timedOut), closed cleanly \(closedCleanly), "
                + "refused \(refused)"
        }
    }

    private let address: SocketAddress
    private let connections: Int
    private let timeout: Duration
    private let stopping = Atomic(false)
    private let finished = Atomic(0)
    private let shared = Locked(Result())

    /// Starts `connections` threads loading `address`.
    init(address: SocketAddress, connections: Int = 8, timeout: Duration = .seconds(10)) throws {
        self.address = address
        self.connections = connections
        self.timeout = timeout
        for _ in 0..<connections {
            try DetachedThread.start { [self] in
                run()
                finished.add(1, ordering: .releasing)
            }
        }
    }

    /// Stops the load (each thread finishes the request it is on) and returns the tally.
    func stop() -> Result {
        stopping.store(true, ordering: .releasing)
        while finished.load(ordering: .acquiring) < connections {
            var pause = timespec(tv_sec: 0, tv_nsec: 2_000_000)
            nanosleep(&pause, nil)
        }
        return shared.withLock { $0 }
    }

    /// The tally so far.
    var result: Result { shared.withLock { $0 } }

    private func run() {
        var socket: SocketDescriptor?
        defer { try? socket?.close() }
        let request = Array("GET / HTTP/1.1\r\nHost: test\r\n\r\n".utf8)
        while !stopping.load(ordering: .acquiring) {
            if socket == nil {
                socket = try? SocketDescriptor.connected(to: address)
                if socket == nil {
                    shared.withLock { $0.refused += 1 }
                    continue
                }
            }
            shared.withLock { $0.requests += 1 }
            let outcome = exchange(request, on: socket!)
            shared.withLock { result in
                switch outcome {
                case .answered(let close):
                    result.answered += 1
                    if close { result.closedCleanly += 1 }
                case .failed: result.failed += 1
                case .timedOut: result.timedOut += 1
                }
            }
            switch outcome {
            case .answered(false): break
            default:
                try? socket?.close()
                socket = nil
            }
        }
    }

    private enum Outcome { case answered(close: Bool), failed, timedOut }

    /// Sends one request and reads its answer: the head to the blank line, then Content-Length bytes.
    private func exchange(_ request: [UInt8], on socket: SocketDescriptor) -> Outcome {
        guard (try? socket.sendAll(request)) != nil else { return .failed }
        var received: [UInt8] = []
        let deadline = ContinuousClock.now + timeout
        while true {
            if let end = received.firstRange(of: Array("\r\n\r\n".utf8)) {
                let head = String(decoding: received[..<end.lowerBound], as: UTF8.self).lowercased()
                let lengthLine = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                let length = lengthLine.flatMap { Int(String($0.dropFirst(15)).trimmingSpaces) } ?? 0
                if received.count - end.upperBound >= length {
                    guard head.hasPrefix("http/1.1 2") || head.hasPrefix("http/1.0 2") else { return .failed }
                    return .answered(close: head.contains("connection: close"))
                }
            }
            guard let readable = try? socket.waitUntilReadable(deadline: deadline) else { return .failed }
            if !readable { return .timedOut }
            guard let chunk = try? socket.receive(), !chunk.isEmpty else { return .failed }
            received += chunk
        }
    }
}
