import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// Winsock's event selection with its shared-socket rule: one registration per socket, across
/// processes; the displaced registrant is told; cooperative registrations share disjoint events.
extension SocketShareTests {
    @Suite struct EventTests {
        init() { TestEnvironment.prepare() }

        /// Records from a selection made in this process, collected for assertions.
        final class Recorder: Sendable {
            let records = Locked<[EventRecord]>([])
            var handler: @Sendable (EventRecord) -> Void { { record in self.records.withLock { $0.append(record) } } }

            func wait(for record: EventRecord, timeout: Duration = .seconds(10)) -> Bool {
                eventually(timeout: timeout) { records.withLock { $0.contains(record) } }
            }

            func count(_ record: EventRecord) -> Int { records.withLock { $0.filter { $0 == record }.count } }
        }

        /// A connected TCP pair shared with `helpers`: returns (our end, the peer, each helper's slot).
        static func sharedConnection(with helpers: [Helper]) throws -> (SocketDescriptor, SocketDescriptor, [String]) {
            let (client, server) = try SharedSocketSemanticsTests.connectedPair()
            let slots = try helpers.map { helper in try helper.call("adopt", try SocketShare.duplicate(server, for: helper.pid).text)[0] }
            return (server, client, slots)
        }

        @Test func aRegistrationInAnotherProcessDisplacesTheFirstAndTellsIt() throws {
            let a = try Helper()
            let b = try Helper()
            let (server, peer, slots) = try Self.sharedConnection(with: [a, b])
            try a.call("select", slots[0], "read")
            try peer.send(Array("one".utf8))
            try a.call("wait-record", "read")
            try b.call("select", slots[1], "write")
            try a.call("wait-record", "displaced_by_pid_\(b.pid)")
            try b.call("wait-record", "write")
            // A's registration is gone: more data reaches nobody but B's (write-only) registration.
            let holders = SocketHolders(inode: try server.socketDescription().identity.inode)
            #expect(holders.registrations.map(\.pid) == [b.pid])
            #expect(holders.registrations.first?.events == .write)
            #expect(Set(holders.holders.map(\.pid)).isSuperset(of: [a.pid, b.pid, getpid()]))
            _ = try a.finish()
            _ = try b.finish()
        }

        @Test func aRegistrantThatCrashesLeavesNoStaleLock() throws {
            let a = try Helper()
            let b = try Helper()
            let (server, _, slots) = try Self.sharedConnection(with: [a, b])
            try a.call("select", slots[0], "read")
            try a.process.signal(SIGKILL)
            _ = try a.process.wait()
            try b.call("select", slots[1], "read")
            let holders = SocketHolders(inode: try server.socketDescription().identity.inode)
            #expect(holders.registrations.map(\.pid) == [b.pid])
            _ = try b.finish()
        }

        @Test func selectingNoEventsCancelsTheRegistration() throws {
            let a = try Helper()
            let (server, _, slots) = try Self.sharedConnection(with: [a])
            try a.call("select", slots[0], "read|close")
            let cancel = try EventSelection(server, events: [])
            try a.call("wait-record", "displaced_by_pid_\(getpid())")
            #expect(SocketHolders(inode: cancel.identity.inode).registrations.isEmpty)
            _ = try a.finish()
        }

        @Test func threadsInOneProcessFollowTheSameRule() throws {
            let (server, peer) = try SharedSocketSemanticsTests.connectedPair()
            let other = try server.duplicate()
            let first = Recorder()
            let second = Recorder()
            let one = try EventSelection(server, events: .read, handler: first.handler)
            let two = try EventSelection(other, events: .read, handler: second.handler)
            #expect(first.wait(for: .displaced(by: getpid())))
            try peer.send(Array("x".utf8))
            #expect(second.wait(for: .event(.read, error: nil)))
            #expect(first.count(.event(.read, error: nil)) == 0)
            one.cancel()
            two.cancel()
        }

        @Test func readIsReportedOnceUntilReenabled() throws {
            let (server, peer) = try SharedSocketSemanticsTests.connectedPair()
            let recorder = Recorder()
            let selection = try EventSelection(server, events: .read, handler: recorder.handler)
            defer { selection.cancel() }
            try peer.send(Array("first".utf8))
            #expect(recorder.wait(for: .event(.read, error: nil)))
            try peer.send(Array("second".utf8))
            usleep(200_000)
            #expect(recorder.count(.event(.read, error: nil)) == 1, "not again before a receive, as Winsock")
            _ = try selection.receive(maximumCount: 5)
            // Data is left after that receive: reported again at once.
            #expect(eventually { recorder.count(.event(.read, error: nil)) == 2 })
            _ = try selection.receive()
            usleep(100_000)
            #expect(recorder.count(.event(.read, error: nil)) == 2)
        }

        @Test func writeIsReportedAtOnceAndAgainWhenTheBufferFrees() throws {
            let (server, peer) = try SharedSocketSemanticsTests.connectedPair()
            let recorder = Recorder()
            let selection = try EventSelection(server, events: .write, handler: recorder.handler)
            defer { selection.cancel() }
            #expect(recorder.wait(for: .event(.write, error: nil)), "sending is possible from the start")
            var sent = 0
            while try selection.send([UInt8](repeating: 1, count: 65536)) > 0 { sent += 1 }
            #expect(sent > 0)
            #expect(recorder.count(.event(.write, error: nil)) == 1)
            while try peer.waitUntilReadable(deadline: .now + .milliseconds(100)) { _ = try peer.receive() }
            #expect(eventually { recorder.count(.event(.write, error: nil)) == 2 }, "the would-block send re-enabled write")
        }

        @Test func acceptConnectAndCloseFireWhenTheyShould() throws {
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let address = try listener.socketDescription().localAddress
            let onListener = Recorder()
            let accepting = try EventSelection(listener, events: .accept, handler: onListener.handler)
            defer { accepting.cancel() }

            // connect: selected, then a non-blocking connect, as Winsock code does.
            let client = try SocketDescriptor.socket(.inet, .stream)
            try client.setNonBlocking(true)
            let onClient = Recorder()
            let connecting = try EventSelection(client, events: [.connect, .close], handler: onClient.handler)
            defer { connecting.cancel() }
            _ = try address.withSockAddr { (pointer, length) throws(SocketShareError) in Glibc.connect(client.rawValue, pointer, length) }
            #expect(onClient.wait(for: .event(.connect, error: nil)))
            #expect(onListener.wait(for: .event(.accept, error: nil)))
            let server = try #require(try accepting.accept())

            // close: the peer closes; and a reset carries ECONNRESET.
            try server.close()
            #expect(onClient.wait(for: .event(.close, error: nil)))

            // A port nobody listens on (bound, never listening, closed).
            let unused = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0), kind: .datagram)
            let nowhere = SocketAddress.ipv4(host: "127.0.0.1", port: try unused.socketDescription().localAddress.port!)
            try unused.close()
            let refused = try SocketDescriptor.socket(.inet, .stream)
            try refused.setNonBlocking(true)
            let onRefused = Recorder()
            let failing = try EventSelection(refused, events: .connect, handler: onRefused.handler)
            defer { failing.cancel() }
            _ = try nowhere.withSockAddr { (pointer, length) throws(SocketShareError) in Glibc.connect(refused.rawValue, pointer, length) }
            #expect(onRefused.wait(for: .event(.connect, error: ECONNREFUSED)))
        }

        @Test func aResetIsACloseWithItsError() throws {
            let (server, peer) = try SharedSocketSemanticsTests.connectedPair()
            let recorder = Recorder()
            let selection = try EventSelection(server, events: .close, handler: recorder.handler)
            defer { selection.cancel() }
            var linger = linger(l_onoff: 1, l_linger: 0)
            setsockopt(peer.rawValue, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<linger>.size))
            try peer.close()
            #expect(recorder.wait(for: .event(.close, error: ECONNRESET)))
        }

        @Test func outOfBandDataIsReported() throws {
            let (server, peer) = try SharedSocketSemanticsTests.connectedPair()
            let recorder = Recorder()
            let selection = try EventSelection(server, events: .outOfBand, handler: recorder.handler)
            defer { selection.cancel() }
            var urgent: UInt8 = 0x21
            #expect(Glibc.send(peer.rawValue, &urgent, 1, CInt(MSG_OOB)) == 1)
            #expect(recorder.wait(for: .event(.outOfBand, error: nil)))
            #expect(try selection.receiveOutOfBand() == 0x21)
        }

        @Test func cooperativeRegistrationsShareDisjointEventsAndRefuseOverlap() throws {
            let a = try Helper()
            let b = try Helper()
            let c = try Helper()
            let (server, peer, slots) = try Self.sharedConnection(with: [a, b, c])
            try a.call("select", slots[0], "read", "coop")
            try b.call("select", slots[1], "write", "coop")
            try b.call("wait-record", "write")
            try peer.send(Array("for A".utf8))
            try a.call("wait-record", "read")
            #expect(try a.call("records") == ["read"], "A gets read only")
            #expect(!(try b.call("records").contains("read")), "B gets write only")
            #expect {
                try c.call("select", slots[2], "read|close", "coop")
            } throws: { error in
                let error = error as! HelperError
                return error.code == "refused" && error.text.contains("read already registered by pid \(a.pid)")
            }
            let holders = SocketHolders(inode: try server.socketDescription().identity.inode)
            #expect(Set(holders.registrations.map(\.pid)) == [a.pid, b.pid])
            // An exclusive registration, as Winsock's, displaces them all.
            let exclusive = try EventSelection(server, events: .close)
            try a.call("wait-record", "displaced_by_pid_\(getpid())")
            try b.call("wait-record", "displaced_by_pid_\(getpid())")
            exclusive.cancel()
            for helper in [a, b, c] { _ = try helper.finish() }
        }

        @Test func sockshareWhoListsHoldersAndTheRegistrant() throws {
            let a = try Helper()
            let (server, _, slots) = try Self.sharedConnection(with: [a])
            try a.call("select", slots[0], "read|close")
            let inode = try server.socketDescription().identity.inode
            let run = try ProgramRun.run(Paths.sockshare, ["who", "--inode", "\(inode)", "--json"])
            #expect(run.status == .exited(0), "\(run.standardError)")
            #expect(run.standardOutput.contains("\"pid\":\(a.pid)"))
            #expect(run.standardOutput.contains("\"pid\":\(getpid())"))
            #expect(run.standardOutput.contains("\"registrations\":[{\"cooperative\":false,\"events\":\"read|close\",\"pid\":\(a.pid)}]"), "\(run.standardOutput)")
            let text = try ProgramRun.run(Paths.sockshare, ["who", "--fd", "3"], descriptors: [3: server.rawValue])
            #expect(text.standardOutput.contains("socket:[\(inode)]: 2 processes"), "\(text.standardOutput)")
            #expect(text.standardOutput.contains("read|close"))
            let bad = try ProgramRun.run(Paths.sockshare, ["who", "--fd", "5"], descriptors: [5: try Kernel.open("/dev/null", O_RDONLY)])
            #expect(bad.status == .exited(1) && bad.standardError.contains("--fd 5: descriptor 5 is not a socket"), "\(bad.standardError)")
            _ = try a.finish()
        }
    }
}
