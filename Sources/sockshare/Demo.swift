import ArgumentParser
import Glibc
import SocketShare
import SocketShareServer

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a socket shared between two processes, on loopback, step by step.",
        discussion: """
            One process binds a listening socket, duplicates it for a second process it starts, and passes \
            the token over the second process's stdin. The second process adopts it and serves HTTP \
            requests. The first closes its descriptor; the second keeps serving. Each step is printed and \
            checked; the exit status is 0 when every check passed.

            Example:
              sockshare demo
              sockshare demo --address 'tcp://[::1]:0'
            """
    )

    @Option(help: ArgumentHelp("The address to listen on (tcp:// or unix://).", valueName: "ADDR"))
    var address: String = "tcp://127.0.0.1:0"

    @Option(help: .private)
    var role: String = "source"

    func validate() throws {
        guard role == "source" || role == "target" else { throw ValidationError("--role \(role): unknown role") }
        do {
            let endpoint = try SocketEndpoint(parsing: address)
            guard endpoint.kind == .stream else { throw ValidationError("--address \(address): the demo needs a stream socket") }
        } catch let error as SocketShareError {
            throw ValidationError("--address \(error.detail)")
        }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        if role == "target" {
            try Terminal.run { () throws(SocketShareError) in try DemoTarget().run() }
            return
        }
        let passed = try Terminal.run { () throws(SocketShareError) in
            try DemoSource(endpoint: try SocketEndpoint(parsing: address)).run()
        }
        if !passed { throw ExitCode(1) }
    }
}

/// The first process of the demo: creates the socket, shares it, then acts as the HTTP client.
private struct DemoSource {
    let endpoint: SocketEndpoint
    let me = getpid()

    func say(_ text: String) { try? Terminal.line("[source \(me)] \(text)") }

    func run() throws(SocketShareError) -> Bool {
        try Terminal.line("sockshare demo: one listening socket, two processes, on loopback\n")
        var checks: [(String, Bool)] = []
        let listener = try SocketDescriptor.listening(on: endpoint.address, kind: .stream)
        let description = try listener.socketDescription()
        let address = description.localAddress
        defer { if case .unix(let path) = address { unlink(path) } }
        say("socket(), bind(), listen(): \(description.family) stream on \(address), fd \(listener.rawValue), \(description.identity)")

        let (commandRead, commandWrite) = try pipePair()
        let (reportRead, reportWrite) = try pipePair()
        let target = try ProcessSpawner.spawn(
            "/proc/self/exe", arguments: ["demo", "--role", "target"],
            descriptors: [0: commandRead.rawValue, 1: reportWrite.rawValue, 2: 2])
        try commandRead.close()
        try reportWrite.close()
        let reports = LineReader(reportRead)
        var targetDone = false
        defer {
            if !targetDone {
                try? target.signal(SIGKILL)
                _ = try? target.wait()
            }
        }
        say("started the target process, pid \(target.pid)")

        let token = try SocketShare.duplicate(listener, for: target.pid, options: ShareOptions(via: .sharer))
        let preview = String(token.text.prefix(24))
        say("duplicate(fd \(listener.rawValue), for: \(target.pid)) [WSADuplicateSocket] -> token \(preview)... (\(token.text.count) characters)")
        say("passing the token on the target's stdin (any IPC would do)")
        try send("adopt \(token.text)", to: commandWrite)
        let adopted = try reports.expect("adopted")
        guard adopted.count == 4 else {
            throw SocketShareError(.protocolViolation, operation: "demo", detail: "the target reported \(adopted)")
        }
        try Terminal.line(
            "[target \(target.pid)] adopt(token) [WSASocket(FROM_PROTOCOL_INFO)] -> fd \(adopted[0]), "
                + "socket:[\(adopted[1])], \(adopted[2]) stream listening on \(adopted[3])")
        let sameInode = adopted[1] == String(description.identity.inode)
        checks.append(("both descriptors name one socket (\(description.identity))", sameInode))

        try listener.setOption(SOL_SOCKET, SO_RCVBUF, 65536)
        let sourceValue = try listener.option(SOL_SOCKET, SO_RCVBUF)
        say("setsockopt(SO_RCVBUF, 65536) through the source's descriptor; getsockopt reads \(sourceValue)")
        try send("rcvbuf", to: commandWrite)
        let targetValue = try reports.expect("rcvbuf").first ?? ""
        try Terminal.line("[target \(target.pid)] getsockopt(SO_RCVBUF) through its own descriptor = \(targetValue)")
        checks.append(("an option set through one descriptor is seen through the other", targetValue == String(sourceValue)))

        try send("serve", to: commandWrite)
        let first = try request(address)
        say("connect + GET / -> \"\(first)\"")
        _ = try reports.expect("served")
        checks.append(("the target serves a connection on the shared listener", first == "hello from pid \(target.pid)"))

        try listener.close()
        say("close() of the source's descriptor [closesocket]: the target's descriptor keeps the socket open")
        try send("serve", to: commandWrite)
        let second = try request(address)
        say("connect + GET / -> \"\(second)\"")
        _ = try reports.expect("served")
        checks.append(("after the source closed, the target still serves", second == "hello from pid \(target.pid)"))

        try send("quit", to: commandWrite)
        _ = try reports.expect("bye")
        try Terminal.line("[target \(target.pid)] close() of the last descriptor: the socket is gone")
        let termination = try target.wait(deadline: .now + .seconds(10))
        targetDone = termination != nil
        let refused: Bool
        do throws(SocketShareError) {
            try? SocketDescriptor.connected(to: address).close()
            _ = try SocketDescriptor.connected(to: address)
            refused = false
        } catch {
            refused = error.errno?.rawValue == ECONNREFUSED || error.errno?.rawValue == ENOENT
        }
        say("connect after the last close -> \(refused ? "refused" : "accepted?!")")
        Sharer.default.stop()
        checks.append(("the socket closes with its last descriptor", refused))
        checks.append(("the target exited cleanly", termination == .exited(0)))

        try Terminal.line("")
        for (what, passed) in checks { try Terminal.line("\(passed ? "ok  " : "FAIL") \(what)") }
        let passed = checks.allSatisfy(\.1)
        try Terminal.line(passed ? "\ndemo passed: a socket was shared between pid \(me) and pid \(target.pid)" : "\ndemo FAILED")
        return passed
    }

    /// A one-way byte stream for the target's stdin or stdout (a socketpair reads like a pipe).
    private func pipePair() throws(SocketShareError) -> (SocketDescriptor, SocketDescriptor) {
        try SocketDescriptor.pair(kind: .stream)
    }

    private func send(_ line: String, to pipe: SocketDescriptor) throws(SocketShareError) {
        let bytes = Array((line + "\n").utf8)
        try pipe.sendAll(bytes)
    }

    /// One HTTP/1.0 request; returns the response body's first line.
    private func request(_ address: SocketAddress) throws(SocketShareError) -> String {
        let client = try SocketDescriptor.connected(to: address)
        defer { try? client.close() }
        try client.sendAll(Array("GET / HTTP/1.0\r\nHost: demo\r\n\r\n".utf8))
        var response: [UInt8] = []
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            guard try client.waitUntilReadable(deadline: deadline) else {
                throw SocketShareError(.timedOut, operation: "demo request", detail: "no response within 10 s")
            }
            let chunk = try client.receive()
            if chunk.isEmpty { break }
            response += chunk
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let body = text.firstRange(of: "\r\n\r\n") else { return text }
        return String(text[body.upperBound...]).trimmingCharacters(in: "\n")
    }
}

/// The second process of the demo: adopts the token from stdin and serves as it is told.
private struct DemoTarget {
    func report(_ text: String) throws(SocketShareError) { try Terminal.line(text) }

    func run() throws(SocketShareError) {
        var socket: SocketDescriptor? = nil
        while let line = try Terminal.readLine() {
            let words = line.split(separator: " ", maxSplits: 1).map(String.init)
            switch words.first {
            case "adopt" where words.count == 2:
                let adopted = try SocketShare.adopt(try ShareToken(text: words[1]))
                let description = try adopted.socketDescription()
                socket = adopted
                try report("adopted \(adopted.rawValue) \(description.identity.inode) \(description.family) \(description.localAddress)")
            case "rcvbuf":
                guard let socket else { throw SocketShareError(.invalidArgument, operation: "demo", detail: "no socket yet") }
                try report("rcvbuf \(try socket.option(SOL_SOCKET, SO_RCVBUF))")
            case "serve":
                guard let socket else { throw SocketShareError(.invalidArgument, operation: "demo", detail: "no socket yet") }
                guard try socket.waitUntilReadable(deadline: .now + .seconds(10)), let client = try socket.accept() else {
                    throw SocketShareError(.timedOut, operation: "demo", detail: "no connection within 10 s")
                }
                _ = try client.waitUntilReadable(deadline: .now + .seconds(10))
                _ = try client.receive()
                let body = "hello from pid \(getpid())\n"
                try client.sendAll(Array("HTTP/1.0 200 OK\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8))
                try client.close()
                try report("served")
            case "quit":
                try socket?.close()
                try report("bye")
                return
            default:
                throw SocketShareError(.invalidArgument, operation: "demo", detail: "unknown command \(line)")
            }
        }
    }
}

/// Reads the target's report lines, with a deadline.
private final class LineReader {
    let descriptor: SocketDescriptor
    var buffer: [UInt8] = []

    init(_ descriptor: SocketDescriptor) { self.descriptor = descriptor }

    /// Reads the next line and checks it starts with `word`; returns the words after it.
    func expect(_ word: String) throws(SocketShareError) -> [String] {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                let words = line.split(separator: " ").map(String.init)
                guard words.first == word else {
                    throw SocketShareError(.protocolViolation, operation: "demo", detail: "the target said \"\(line)\", expected \(word)")
                }
                return Array(words.dropFirst())
            }
            guard try descriptor.waitUntilReadable(deadline: deadline) else {
                throw SocketShareError(.timedOut, operation: "demo", detail: "the target did not answer within 10 s")
            }
            let chunk = try descriptor.receive()
            if chunk.isEmpty {
                throw SocketShareError(.holderGone, operation: "demo", detail: "the target exited early")
            }
            buffer += chunk
        }
    }
}
