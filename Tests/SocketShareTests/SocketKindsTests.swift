import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// Every kind of socket SocketShare shares, adopted by another process and used there.
extension SocketShareTests {
    @Suite struct SocketKindsTests {
        init() { TestEnvironment.prepare() }

        enum Kind: String, CaseIterable, CustomTestStringConvertible {
            case tcp4Listening, tcp4Connected, tcp6Listening, tcp6Connected, udp4, udp6
            case unixStream, unixDatagram, unixSeqpacket
            var testDescription: String { rawValue }
        }

        /// The socket to share, plus the far end the test talks to, and whatever must outlive the test.
        struct Fixture {
            var shared: SocketDescriptor
            var peer: SocketDescriptor?
            var address: SocketAddress?
            var cleanup: () -> Void = {}
        }

        static func fixture(_ kind: Kind) throws -> Fixture {
            switch kind {
            case .tcp4Listening, .tcp6Listening:
                let host = kind == .tcp4Listening ? "127.0.0.1" : "::1"
                let listener = try SocketDescriptor.listening(on: try .ip(host, port: 0))
                return Fixture(shared: listener, address: try listener.socketDescription().localAddress)
            case .tcp4Connected, .tcp6Connected:
                let (client, server) = try SharedSocketSemanticsTests.connectedPair(kind == .tcp4Connected ? "127.0.0.1" : "::1")
                return Fixture(shared: server, peer: client)
            case .udp4, .udp6:
                let host = kind == .udp4 ? "127.0.0.1" : "::1"
                let bound = try SocketDescriptor.listening(on: try .ip(host, port: 0), kind: .datagram)
                let peer = try SocketDescriptor.connected(to: try bound.socketDescription().localAddress, kind: .datagram)
                return Fixture(shared: bound, peer: peer)
            case .unixStream, .unixDatagram, .unixSeqpacket:
                let type: SocketKind = kind == .unixStream ? .stream : (kind == .unixDatagram ? .datagram : .seqpacket)
                let (shared, peer) = try SocketDescriptor.pair(kind: type)
                return Fixture(shared: shared, peer: peer)
            }
        }

        @Test(arguments: Kind.allCases)
        func adoptedSocketIsTheSameSocketAndWorks(_ kind: Kind) throws {
            let helper = try Helper()
            let fixture = try Self.fixture(kind)
            let description = try fixture.shared.socketDescription()
            let token = try SocketShare.duplicate(fixture.shared, for: helper.pid)
            #expect(token.family == description.family)
            #expect(token.kind == description.kind)
            #expect(token.isListening == description.isListening)

            let adopted = try helper.call("adopt", token.text)
            let slot = adopted[0]
            #expect(adopted[1] == "\(description.identity.inode)", "same inode: same socket")
            #expect(adopted[2] == "\(description.family)")
            #expect(adopted[3] == "\(description.kind)")
            #expect(adopted[4] == (description.isListening ? "listening" : "-"))
            #expect(adopted[7] == "cloexec", "the adopted descriptor is close-on-exec")
            try fixture.shared.close()

            // Use it from the target, with the source's descriptor already closed.
            if description.isListening, let address = fixture.address {
                let client = try SocketDescriptor.connected(to: address)
                let connection = try helper.call("accept", slot)[0]
                try helper.call("send", connection, hex("hello"))
                #expect(try client.waitUntilReadable(deadline: .now + .seconds(5)))
                #expect(String(decoding: try client.receive(), as: UTF8.self) == "hello")
            } else if let peer = fixture.peer {
                if kind == .udp4 || kind == .udp6 {
                    try peer.send(Array("to-target".utf8))
                    #expect(unhex(try helper.call("recv", slot)[0]) == "to-target")
                } else {
                    try helper.call("send", slot, hex("to-peer"))
                    #expect(try peer.waitUntilReadable(deadline: .now + .seconds(5)))
                    #expect(String(decoding: try peer.receive(), as: UTF8.self) == "to-peer")
                    try peer.send(Array("to-target".utf8))
                    #expect(unhex(try helper.call("recv", slot)[0]) == "to-target")
                }
            }
            #expect(try helper.finish() == .exited(0))
        }

        @Test func refusesWhatItCannotShare() throws {
            let helper = try Helper()
            defer { _ = try? helper.finish() }
            // A pipe is not a socket.
            let (read, write) = try Kernel.pipe()
            defer { try? Kernel.close(read); try? Kernel.close(write) }
            let notSocket = #expect(throws: SocketShareError.self) { try SocketShare.duplicate(read, for: helper.pid) }
            #expect(notSocket?.code == .invalidArgument)
            #expect(notSocket?.detail.contains("not a socket (it is a pipe)") == true)
            // A netlink socket is a socket, but not a family we share.
            let netlink = try Kernel.socket(domain: AF_NETLINK, type: Kernel.datagramType)
            defer { try? Kernel.close(netlink) }
            let family = #expect(throws: SocketShareError.self) { try SocketShare.duplicate(netlink, for: helper.pid) }
            #expect(family?.detail.contains("address family 16") == true)
            // A closed descriptor, and a process that does not exist.
            #expect(throws: SocketShareError.self) { try SocketShare.duplicate(CInt(19_999), for: helper.pid) }
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let noProcess = #expect(throws: SocketShareError.self) { try SocketShare.duplicate(socket, for: 4_000_000) }
            #expect(noProcess?.detail.contains("no process with pid 4000000") == true)
        }
    }
}
