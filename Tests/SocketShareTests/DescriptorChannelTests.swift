import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

extension SocketShareTests {
    @Suite struct DescriptorChannelTests {
        init() { TestEnvironment.prepare() }

        @Test func carriesBytesAndDescriptorsTogether() throws {
            let (left, right) = try DescriptorChannel.pair()
            let sockets = try (0..<3).map { _ in try SocketDescriptor.socket(.inet, .datagram) }
            try left.send(Array("three".utf8), descriptors: sockets.map(\.rawValue))
            try left.send(Array("none".utf8))
            let first = try #require(try right.receive(deadline: .now + .seconds(5)))
            #expect(String(decoding: first.bytes, as: UTF8.self) == "three")
            #expect(first.descriptorCount == 3)
            let arrived = first.takeDescriptors()
            #expect(first.takeDescriptors().isEmpty, "taken once")
            for (sent, received) in zip(sockets, arrived) {
                #expect(try sent.isSameSocket(as: received))
                #expect(received.rawValue != sent.rawValue)
                #expect(received.isCloseOnExec)
            }
            let second = try #require(try right.receive(deadline: .now + .seconds(5)))
            #expect(String(decoding: second.bytes, as: UTF8.self) == "none" && second.descriptorCount == 0)
            try left.close()
            #expect(try right.receive(deadline: .now + .seconds(5)) == nil, "end of channel")
            for descriptor in arrived { try descriptor.close() }
        }

        @Test func refusesBadSends() throws {
            let (left, _) = try DescriptorChannel.pair()
            let socket = try SocketDescriptor.socket(.unix, .stream)
            let empty = #expect(throws: SocketShareError.self) { try left.send([]) }
            #expect(empty?.code == .invalidArgument)
            let tooMany = #expect(throws: SocketShareError.self) {
                try left.send([1], descriptors: Array(repeating: socket.rawValue, count: 253))
            }
            #expect(tooMany?.detail.contains("the limit is 252") == true)
        }

        @Test func receiveHonoursItsDeadline() throws {
            let (left, right) = try DescriptorChannel.pair()
            let start = ContinuousClock.now
            let error = #expect(throws: SocketShareError.self) { try right.receive(deadline: .now + .milliseconds(100)) }
            #expect(error?.code == .timedOut)
            #expect(ContinuousClock.now - start < .seconds(2))
            withExtendedLifetime(left) {}
        }

        @Test func sendGivesUpAtItsDeadlineWhenThePeerDoesNotRead() throws {
            let (left, right) = try DescriptorChannel.pair()
            let before = openDescriptors().count
            let socket = try SocketDescriptor.socket(.inet, .stream)
            var sent = 0
            let error = #expect(throws: SocketShareError.self) {
                while sent < 100_000 {
                    try left.send(Array(repeating: 7, count: 1024), descriptors: [socket.rawValue], deadline: .now + .milliseconds(100))
                    sent += 1
                }
            }
            #expect(error?.code == .timedOut || error?.code == .limitReached, "\(String(describing: error))")
            #expect(sent > 0)
            // Reading drains what was queued, and every queued copy closes with the messages.
            while let message = try? right.receive(deadline: .now) { message.closeDescriptors() }
            try socket.close()
            #expect(openDescriptors().count == before)
        }

        @Test func cutOffDescriptorsAreClosedAndReported() throws {
            let (left, right) = try DescriptorChannel.pair()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let before = openDescriptors().count
            try left.send([1], descriptors: Array(repeating: socket.rawValue, count: 20))
            var buffer = [UInt8](repeating: 0, count: 16)
            let error = #expect(throws: SocketShareError.self) {
                try buffer.withMutableBytes { (raw) throws(SocketShareError) in
                    _ = try Kernel.receiveMessage(right.socket.rawValue, into: raw, maximumDescriptors: 5)
                }
            }
            #expect(error?.detail.contains("MSG_CTRUNC") == true)
            #expect(openDescriptors().count == before)
        }

        @Test func anOversizedMessageIsRefusedWithItsDescriptorsClosed() throws {
            let (left, right) = try DescriptorChannel.pair()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let before = openDescriptors().count
            try left.send(Array(repeating: 1, count: 100), descriptors: [socket.rawValue, socket.rawValue])
            let error = #expect(throws: SocketShareError.self) { try right.receive(maximumBytes: 10, deadline: .now + .seconds(1)) }
            #expect(error?.code == .protocolViolation)
            #expect(openDescriptors().count == before)
        }

        @Test func descriptorLimitOnReceiveLosesNothingOfOurs() throws {
            let (left, right) = try DescriptorChannel.pair()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let before = openDescriptors()
            var limit = rlimit()
            getrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit)
            let saved = limit
            try left.send([1], descriptors: Array(repeating: socket.rawValue, count: 10))
            // Room for three more descriptors only: the limit caps descriptor numbers.
            let free = (CInt(0)...).lazy.filter { !before.contains($0) }.prefix(4)
            limit.rlim_cur = rlim_t(Array(free)[3])
            setrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit)
            let error = #expect(throws: SocketShareError.self) { try right.receive(deadline: .now + .seconds(1)) }
            var restore = saved
            setrlimit(CInt(RLIMIT_NOFILE.rawValue), &restore)
            #expect(error?.code == .limitReached)
            #expect(openDescriptors() == before)
        }

        @Test func aBatchOfTenThousandArrivesWholeAndInOrder() throws {
            let (mine, theirs) = try SocketDescriptor.pair(kind: .seqpacket)
            let helper = try Helper(descriptors: [3: theirs.rawValue])
            try theirs.close()
            let channelSlot = try helper.call("take", "3")[0]
            let inodes = try helper.call("make-sockets", "10000", timeout: .seconds(120))
            #expect(inodes.count == 10_000)
            let before = openDescriptors().count
            let channel = DescriptorChannel(mine)
            try helper.begin(["send-batch", channelSlot])
            let received = try channel.receiveBatch(deadline: .now + .seconds(60))
            #expect(try helper.reply() == ["10000"])
            #expect(received.count == 10_000)
            #expect(openDescriptors().count == before + 10_000)
            // Each one is the socket the helper made in that position: fstat identity, in order.
            #expect(try received.map { "\(try SocketIdentity(of: $0.rawValue).inode)" } == inodes)
            for descriptor in received { try descriptor.close() }
            #expect(openDescriptors().count == before)
            _ = try helper.finish()
        }

        @Test func aBatchCutShortByItsSenderLeavesNothingOpen() throws {
            let (left, right) = try DescriptorChannel.pair()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let before = openDescriptors().count
            // The first message of a batch of 500, then the sender goes away.
            var header = ByteWriter()
            header.write(UInt8(0xB7))
            header.write(UInt32(500))
            header.write(UInt32(0))
            try left.send(header.bytes, descriptors: Array(repeating: socket.rawValue, count: 252))
            try left.close()
            let error = #expect(throws: SocketShareError.self) { try right.receiveBatch(deadline: .now + .seconds(5)) }
            #expect(error?.code == .holderGone)
            #expect(error?.detail.contains("after 252 of 500") == true)
            #expect(openDescriptors().count == before - 1)
        }

        @Test func aBatchThatDoesNotContinueIsRefused() throws {
            let (left, right) = try DescriptorChannel.pair()
            let socket = try SocketDescriptor.socket(.inet, .stream)
            let before = openDescriptors().count
            try left.sendBatch(Array(repeating: socket.rawValue, count: 300))
            // Drop the first part, so the second arrives first.
            _ = try right.receive(deadline: .now + .seconds(1))?.closeDescriptors()
            let error = #expect(throws: SocketShareError.self) { try right.receiveBatch(deadline: .now + .seconds(5)) }
            #expect(error?.code == .protocolViolation)
            #expect(openDescriptors().count == before)
        }
    }
}
