import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// The seed's semantics, across real processes: one socket, several descriptors, common state,
/// independent I/O, reference-counted close.
extension SocketShareTests {
    @Suite struct SharedSocketSemanticsTests {
        init() { TestEnvironment.prepare() }

        /// A connected TCP pair on loopback: (client, server side).
        static func connectedPair(_ host: String = "127.0.0.1") throws -> (SocketDescriptor, SocketDescriptor) {
            let listener = try SocketDescriptor.listening(on: try .ip(host, port: 0))
            defer { try? listener.close() }
            let client = try SocketDescriptor.connected(to: try listener.socketDescription().localAddress)
            let server = try listener.accept()!
            return (client, server)
        }

        @Test func optionsSetThroughOneDescriptorAreSeenThroughTheOther() throws {
            let helper = try Helper()
            let (client, server) = try Self.connectedPair()
            let token = try SocketShare.duplicate(server, for: helper.pid)
            let slot = try helper.call("adopt", token.text)[0]

            try server.setOption(SOL_SOCKET, SO_RCVBUF, 32768)
            try server.setOption(SOL_SOCKET, SO_KEEPALIVE, 1)
            try server.setOption(CInt(IPPROTO_TCP), TCP_NODELAY, 1)
            #expect(try helper.call("getopt", slot, "\(SOL_SOCKET)", "\(SO_RCVBUF)") == ["\(try server.option(SOL_SOCKET, SO_RCVBUF))"])
            #expect(try helper.call("getopt", slot, "\(SOL_SOCKET)", "\(SO_KEEPALIVE)") == ["1"])
            #expect(try helper.call("getopt", slot, "\(IPPROTO_TCP)", "\(TCP_NODELAY)") == ["1"])

            // And the other way round.
            try helper.call("setopt", slot, "\(SOL_SOCKET)", "\(SO_KEEPALIVE)", "0")
            try helper.call("setopt", slot, "\(IPPROTO_TCP)", "\(TCP_NODELAY)", "0")
            #expect(try server.option(SOL_SOCKET, SO_KEEPALIVE) == 0)
            #expect(try server.option(CInt(IPPROTO_TCP), TCP_NODELAY) == 0)
            try client.close()
            #expect(try helper.finish() == .exited(0))
        }

        @Test func nonBlockingIsSharedAndReported() throws {
            let helper = try Helper()
            let (client, server) = try Self.connectedPair()
            defer { try? client.close() }
            let slot = try helper.call("adopt", try SocketShare.duplicate(server, for: helper.pid).text)[0]
            #expect(try helper.call("describe", slot)[5] == "blocking")
            try server.setNonBlocking(true)
            #expect(try helper.call("describe", slot)[5] == "nonblocking")
            let token = try SocketShare.duplicate(server, for: helper.pid)
            #expect(token.isNonBlocking)
            try helper.call("nonblock", slot, "0")
            #expect(try server.socketDescription().isNonBlocking == false)
            _ = try helper.finish()
        }

        @Test func closingOneDescriptorLeavesTheSocketToTheOthers() throws {
            let helper = try Helper()
            let (client, server) = try Self.connectedPair()
            let slot = try helper.call("adopt", try SocketShare.duplicate(server, for: helper.pid).text)[0]
            try server.close()

            // The target's descriptor still works after the source closed its own.
            try helper.call("send", slot, hex("still here"))
            #expect(try client.waitUntilReadable(deadline: .now + .seconds(5)))
            #expect(String(decoding: try client.receive(), as: UTF8.self) == "still here")

            // The peer sees no EOF while a descriptor remains…
            #expect(try client.waitUntilReadable(deadline: .now + .milliseconds(200)) == false)
            // …and sees it once the last one closes.
            try helper.call("close", slot)
            #expect(try client.waitUntilReadable(deadline: .now + .seconds(5)))
            #expect(try client.receive().isEmpty)
            _ = try helper.finish()
        }

        @Test func bothProcessesWriteToOneConnection() throws {
            let helper = try Helper()
            let (client, server) = try Self.connectedPair()
            let slot = try helper.call("adopt", try SocketShare.duplicate(server, for: helper.pid).text)[0]
            try server.sendAll(Array("from-source;".utf8))
            try helper.call("send", slot, hex("from-target;"))
            var received = ""
            let deadline = ContinuousClock.now + .seconds(5)
            while received.count < 24, try client.waitUntilReadable(deadline: deadline) {
                received += String(decoding: try client.receive(), as: UTF8.self)
            }
            #expect(received == "from-source;from-target;")
            // Both read from it too: what the client sends reaches whoever reads first.
            try client.sendAll(Array("ping".utf8))
            #expect(unhex(try helper.call("recv", slot)[0]) == "ping")
            _ = try helper.finish()
        }

        @Test func bothProcessesAcceptOnOneListener() throws {
            let helper = try Helper()
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let address = try listener.socketDescription().localAddress
            let slot = try helper.call("adopt", try SocketShare.duplicate(listener, for: helper.pid).text)[0]
            let first = try SocketDescriptor.connected(to: address)
            let second = try SocketDescriptor.connected(to: address)
            let mine = try listener.accept()
            let theirs = try helper.call("accept", slot)[0]
            #expect(mine != nil)
            try mine?.sendAll(Array("source".utf8))
            try helper.call("send", theirs, hex("target"))
            var answers: Set<String> = []
            for client in [first, second] {
                #expect(try client.waitUntilReadable(deadline: .now + .seconds(5)))
                answers.insert(String(decoding: try client.receive(), as: UTF8.self))
            }
            #expect(answers == ["source", "target"])
            _ = try helper.finish()
        }

        @Test func threadsShareOneDescriptor() throws {
            let (receiver, sender) = try SocketDescriptor.pair(kind: .datagram)
            let threads = 4
            let perThread = 500
            let senders: [@Sendable () -> Set<String>] = (0..<threads).map { thread in
                {
                    for index in 0..<perThread { _ = try? sender.send(Array("\(thread):\(index)".utf8)) }
                    return []
                }
            }
            // The other end, read on its own thread at the same time.
            let reader: @Sendable () -> Set<String> = {
                var seen = Set<String>()
                while seen.count < threads * perThread,
                      (try? receiver.waitUntilReadable(deadline: .now + .seconds(5))) == true,
                      let datagram = try? receiver.receive() {
                    seen.insert(String(decoding: datagram, as: UTF8.self))
                }
                return seen
            }
            let seen = onThreads(senders + [reader]).reduce(into: Set<String>()) { $0.formUnion($1) }
            #expect(seen.count == threads * perThread)
            try sender.close()
            try sender.close()  // a second close is a no-op: closed exactly once
            #expect(!sender.isOpen)
        }

        @Test func threadsAcceptConcurrentlyOnOneListener() throws {
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let address = try listener.socketDescription().localAddress
            let clients = try (0..<8).map { _ in try SocketDescriptor.connected(to: address) }
            try listener.setNonBlocking(true)  // so a thread that loses the race gets EAGAIN, not a wait
            let acceptors: [@Sendable () -> Int] = (0..<4).map { _ in
                {
                    var count = 0
                    while (try? listener.waitUntilReadable(deadline: .now + .milliseconds(300))) == true,
                          let connection = try? listener.accept() {
                        count += 1
                        try? connection.close()
                    }
                    return count
                }
            }
            let accepted = onThreads(acceptors).reduce(0, +)
            #expect(accepted == clients.count)
        }
    }
}
