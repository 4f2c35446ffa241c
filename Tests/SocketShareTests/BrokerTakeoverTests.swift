import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// Restart without loss: a new broker takes the listening socket and every share from the old one.
extension SocketShareTests {
    @Suite struct BrokerTakeoverTests {
        init() { TestEnvironment.prepare() }

        @Test func tokensIssuedBeforeATakeoverStillClaimAndNoConnectionIsRefused() throws {
            let directory = BrokerProcess.freshDirectory()
            let old = try BrokerProcess(directory: directory)
            let target = try Helper()
            let sockets = try (0..<300).map { _ in try SocketDescriptor.socket(.inet, .datagram) }
            let tokens = try sockets.map {
                try old.client.deposit($0.rawValue, for: ProcessIdentity(pid: target.pid, startTime: 0))
            }
            for socket in sockets { try socket.close() }  // the broker's duplicates are all that is left

            // Clients keep connecting while the takeover happens: none may be refused.
            let client = old.client
            let stop = Atomic(false)
            let failures = Atomic(0)
            let requests = Atomic(0)
            try DetachedThread.start {
                while !stop.load(ordering: .acquiring) {
                    if (try? client.list()) == nil { failures.add(1, ordering: .relaxed) }
                    requests.add(1, ordering: .relaxed)
                }
            }
            let new = try BrokerProcess(directory: directory, takeover: true)
            #expect(try old.waitForExit() == .exited(0), "the old broker exits once the new one has everything")
            #expect(old.log.contains("handed 300 shares, 0 named shares and the listening socket"))
            #expect(new.log.contains("took over 300 shares"))
            stop.store(true, ordering: .releasing)
            #expect(failures.load(ordering: .relaxed) == 0, "\(failures.load(ordering: .relaxed)) of \(requests.load(ordering: .relaxed)) requests failed")
            #expect(requests.load(ordering: .relaxed) > 0)

            #expect(try new.client.list().count == 300)
            for token in tokens { try target.call("close", try target.call("adopt", token.text)[0]) }
            #expect(try new.client.list().isEmpty)
            _ = try target.finish()
            try new.stop()
        }

        @Test func aTakeoverOfNothingFailsClearly() throws {
            let directory = BrokerProcess.freshDirectory()
            let run = try ProgramRun.run(Paths.sockshare, ["broker", "--socket", directory + "/broker.sock", "--takeover"])
            #expect(run.status == .exited(1))
            #expect(run.standardError.contains("take over failed"), "\(run.standardError)")
        }

        @Test func aSuccessorThatDiesMidwayLeavesTheOldBrokerServing() throws {
            let broker = try BrokerProcess()
            let target = try Helper()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let token = try broker.client.deposit(socket.rawValue, for: ProcessIdentity(pid: target.pid, startTime: 0))
            // A "successor" that asks for everything, reads the first message, and vanishes.
            let channel = try DescriptorChannel.connect(to: broker.socketPath)
            try channel.send(EscrowMessage.takeover.bytes)
            let first = try #require(try channel.receive(maximumBytes: 65536, deadline: .now + .seconds(10)))
            first.closeDescriptors()
            try channel.close()
            #expect(eventually { broker.log.contains("serving on") })
            #expect(try target.call("adopt", token.text)[0] != "")
            _ = try target.finish()
            try broker.stop()
        }
    }
}

import Synchronization
