import Glibc
import Logging
import ServiceLifecycle
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// The long-running components as swift-service-lifecycle services: an owned `Sharer` and the
/// `Broker`, each run, used across real processes, and stopped by cancellation or graceful
/// shutdown with nothing left behind.
extension SocketShareTests {
    @Suite struct ServicesTests {
        init() { TestEnvironment.prepare() }

        static let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

        /// A fresh private directory for a holder's socket.
        static func privateDirectory() throws -> String {
            var template = Array("/tmp/sockshare-service-XXXXXX".utf8CString)
            return try template.withUnsafeMutableBufferPointer { buffer in
                guard let path = mkdtemp(buffer.baseAddress!) else { throw SocketShareError.system("mkdtemp", errno: errno) }
                return String(cString: path)
            }
        }

        @Test func anOwnedSharerServesInItsDirectoryAndItsShutdownEndsItsShares() async throws {
            let directory = try Self.privateDirectory()
            defer { rmdir(directory) }
            let target = try Helper()
            let before = openDescriptors().count
            do {
                let sharer = Sharer(configuration: .init(directory: directory, lingerWhenIdle: nil), logger: Self.logger)
                let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
                let service = Task { try await sharer.run() }

                let claimed = try sharer.duplicate(socket, for: target.pid)
                #expect(claimed.endpoint.hasPrefix(directory + "/sharer-"), "the share is held in the sharer's own directory")
                try target.call("close", try target.call("adopt", claimed.text)[0])
                #expect(await sharer.outcome(of: claimed) == .claimed(by: try ProcessIdentity(pid: target.pid)))

                let pending = try sharer.duplicate(socket, for: target.pid)
                #expect(sharer.heldShareCount == 1)
                let outcomeAtTheDefaultSharer = await SocketShare.outcome(of: pending)
                #expect(outcomeAtTheDefaultSharer == .holderStopped, "the default sharer does not know it")
                service.cancel()
                _ = try await service.value
                #expect(await sharer.outcome(of: pending) == .holderStopped)
                #expect(sharer.heldShareCount == 0)
                #expect(Kernel.directoryEntries(directory).isEmpty, "the rendezvous socket is removed")
                #expect(throws: SocketShareError.self, "a sharer whose service ended takes no more shares") {
                    try sharer.duplicate(socket, for: target.pid)
                }
                try socket.close()
            }
            #expect(eventually { openDescriptors().count == before }, "\(openDescriptors().count) vs \(before)")
            _ = try target.finish()
        }

        @Test func aBrokerRunsAsAServiceAndGracefulShutdownClosesWhatItHolds() async throws {
            let directory = try Self.privateDirectory()
            defer { rmdir(directory) }
            let path = directory + "/broker.sock"
            let target = try Helper()
            let before = openDescriptors().count
            do {
                let broker = try Broker(configuration: .init(socketPath: path, maximumShares: 10), logger: Self.logger)
                let group = ServiceGroup(services: [broker], logger: Self.logger)
                let running = Task { try await group.run() }
                let client = BrokerClient(socketPath: path)
                let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
                let token = try client.deposit(socket.rawValue, for: try ProcessIdentity(pid: target.pid))
                try socket.close()
                #expect(try client.list().map(\.id) == [token.shareID])
                #expect(broker.heldShareCount == 1)
                let adopted = try target.call("adopt", token.text)
                try target.call("close", adopted[0])
                #expect(eventually { broker.heldShareCount == 0 })
                let unclaimed = try SocketDescriptor.socket(.inet, .datagram)
                _ = try client.deposit(unclaimed.rawValue, for: try ProcessIdentity(pid: target.pid))
                try unclaimed.close()
                await group.triggerGracefulShutdown()
                try await running.value
                #expect(broker.heldShareCount == 0)
                #expect(try Kernel.linkStatus(path) == nil, "the broker's socket is removed")
                #expect(throws: SocketShareError.self) { try client.list() }
            }
            #expect(eventually { openDescriptors().count == before }, "\(openDescriptors().count) vs \(before)")
            _ = try target.finish()
        }
    }
}
