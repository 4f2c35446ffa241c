// winsock-port: the flow of Microsoft's WSADuplicateSocket documentation, ported to SocketShare.
// Each step names the Winsock call it replaces (examples/winsock-porting/README.md puts them side by side).
//
//   winsock-port            the source: creates a listener, starts the target, duplicates the
//                           listener for it, passes the share info over a pipe, closes its own
//                           descriptor, then connects as a client and reads the target's answer;
//   winsock-port --target   the target: reads the share info on stdin, adopts the socket, accepts
//                           one connection and answers it.
//
// Exit status 0 when every step did what the page says.

import Glibc
import SocketShare

@main
enum WinsockPort {
    static func main() async {
        do {
            if CommandLine.arguments.dropFirst().first == "--target" {
                try target()
            } else {
                try await source()
            }
        } catch {
            write(2, "winsock-port: \(error)\n")
            exit(1)
        }
    }

    /// Prints one line at once (unbuffered: the two processes' lines keep their order).
    static func say(_ line: String) {
        write(1, line + "\n")
    }

    static func write(_ fd: CInt, _ text: String) {
        var text = text
        text.withUTF8 { bytes in _ = Glibc.write(fd, bytes.baseAddress, bytes.count) }
    }

    /// The source process.
    static func source() async throws {
        // Winsock: s = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP); bind(s, 127.0.0.1:0); listen(s, SOMAXCONN);
        let listener = try SocketDescriptor.listening(on: try .ip("127.0.0.1", port: 0))
        let address = try listener.socketDescription().localAddress
        say("source \(getpid()): listening on \(address)")

        // Winsock: CreatePipe(&read, &write); CreateProcess(..., stdin = read, ...);
        // (a socketpair plays the pipe here; any IPC carries the share info)
        let (readEnd, writeEnd) = try SocketDescriptor.pair()
        let target = try ProcessSpawner.spawn("/proc/self/exe", arguments: ["--target"], descriptors: [0: readEnd.rawValue])
        try readEnd.close()

        // Winsock: WSADuplicateSocket(s, targetPid, &protocolInfo);
        let token = try SocketShare.duplicate(listener, for: target.pid)

        // Winsock: WriteFile(write, &protocolInfo, sizeof(protocolInfo), ...);
        try writeEnd.sendAll(Array((token.text + "\n").utf8))
        try writeEnd.close()

        // Winsock: closesocket(s); the target's descriptor is not affected.
        try listener.close()
        say("source: closed its own descriptor; the share waits for pid \(target.pid)")

        // Not in Winsock: the source learns what became of the share.
        let outcome = await SocketShare.outcome(of: token)
        say("source: the share was \(outcome)")
        guard case .claimed(let by) = outcome, by.pid == target.pid else { throw failure("the target did not claim the share") }

        // Not in Winsock: a share is claimable once, only by its target.
        do {
            _ = try SocketShare.adopt(token)
            throw failure("the source adopted a share made for another process")
        } catch let error as SocketShareError {
            say("source: adopting the target's share itself is refused (\(error.code))")
        }

        // The socket lives on in the target: connect to it as a client.
        let client = try SocketDescriptor.connected(to: address)
        try client.sendAll(Array("hello\n".utf8))
        var answer: [UInt8] = []
        while case let bytes = try client.receive(), !bytes.isEmpty { answer += bytes }
        try client.close()
        say("source: the target answered: \(String(decoding: answer, as: UTF8.self).trimmingTrailingNewline)")

        let termination = try target.wait(deadline: .now + .seconds(10))
        guard termination == .exited(0) else { throw failure("the target ended with \(termination.map(String.init(describing:)) ?? "no exit in 10 s")") }
        guard String(decoding: answer, as: UTF8.self).hasPrefix("hello from pid \(target.pid)") else { throw failure("unexpected answer") }
        say("ok: one socket, created by pid \(getpid()), served by pid \(target.pid) after its creator closed it")
    }

    /// The target process.
    static func target() throws {
        // Winsock: ReadFile(stdin, &protocolInfo, sizeof(protocolInfo), ...);
        guard let line = readLine() else { throw failure("no share info on stdin") }

        // Winsock: s = WSASocket(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &protocolInfo, 0, 0);
        let listener = try SocketShare.adopt(try ShareToken(text: line))
        say("target \(getpid()): adopted \(try listener.socketDescription().localAddress)")

        // Use it as any socket: accept(s, ...); recv; send; closesocket.
        guard let connection = try listener.accept() else { throw failure("accept returned nothing") }
        _ = try connection.receive()
        try connection.sendAll(Array("hello from pid \(getpid()), on the socket the source created\n".utf8))
        try connection.close()
        try listener.close()
    }

    static func failure(_ detail: String) -> SocketShareError {
        SocketShareError(.verificationFailed, operation: "winsock-port", detail: detail)
    }
}

extension String {
    var trimmingTrailingNewline: String { hasSuffix("\n") ? String(dropLast()) : self }
}
