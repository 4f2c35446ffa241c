import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// Bad clients get a clear error or are dropped; good clients keep being served; the broker's
/// descriptors return to their baseline and its memory stays bounded.
extension SocketShareTests {
    @Suite struct BrokerRobustnessTests {
        init() { TestEnvironment.prepare() }

        /// A share for this very process, so the test can claim it with raw protocol messages.
        static func shareForUs(_ broker: BrokerProcess) throws -> (ShareToken, SocketDescriptor) {
            let socket = try SocketDescriptor.socket(.inet, .stream)
            return (try broker.client.deposit(socket.rawValue, for: .current), socket)
        }

        static func secret(_ token: ShareToken) -> ShareSecret {
            token.secret
        }

        @Test func garbageHalfAndOversizedMessagesGetAnErrorWhileGoodClientsAreServed() throws {
            let broker = try BrokerProcess()
            let baseline = broker.settledDescriptorCount
            let claim = EscrowMessage.claim(shareID: 1, secret: .random()).bytes
            var generator = SystemRandomNumberGenerator()
            var cases: [[UInt8]] = [
                Array(claim.prefix(5)),                       // half a claim
                [UInt8](repeating: 0x41, count: 10_000),      // longer than any request
                [1],                                          // a version and nothing else
                [1, 0x03, 0, 0],                              // a deposit cut short
            ]
            for _ in 0..<200 {
                cases.append((0..<Int.random(in: 1..<300, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) })
            }
            var answered = 0
            for bytes in cases {
                let channel = try DescriptorChannel.connect(to: broker.socketPath)
                try channel.send(bytes)
                if let reply = try channel.receive(maximumBytes: 65536, deadline: .now + .seconds(5)),
                   case .failure = try EscrowMessage(bytes: reply.bytes) {
                    answered += 1
                }
                try channel.close()
                // Meanwhile, correct clients are served.
                if answered % 50 == 0 { _ = try broker.client.list() }
            }
            #expect(answered >= cases.count - 5, "nearly every bad message gets an error reply (\(answered) of \(cases.count))")
            let (token, _) = try Self.shareForUs(broker)
            _ = try SocketShare.adopt(token)
            #expect(eventually { broker.descriptorCount == baseline }, "\(broker.descriptorCount) vs \(baseline)")
            try broker.stop()
        }

        @Test func descriptorsSentWhereNoneAreExpectedAreClosedAtOnce() throws {
            let broker = try BrokerProcess()
            let baseline = broker.settledDescriptorCount
            let socket = try SocketDescriptor.socket(.inet, .stream)
            for message in [EscrowMessage.claim(shareID: 9, secret: .random()), .list(after: 0), .metrics] {
                let channel = try DescriptorChannel.connect(to: broker.socketPath)
                try channel.send(message.bytes, descriptors: Array(repeating: socket.rawValue, count: 100))
                let reply = try #require(try channel.receive(maximumBytes: 65536, deadline: .now + .seconds(5)))
                guard case .failure(let code, let text) = try EscrowMessage(bytes: reply.bytes) else {
                    Issue.record("no failure reply")
                    continue
                }
                #expect(code == .malformed && text.contains("they were closed"))
                try channel.close()
            }
            // A deposit with two descriptors instead of one.
            let channel = try DescriptorChannel.connect(to: broker.socketPath)
            try channel.send(EscrowMessage.deposit(targetPID: UInt32(getpid()), targetStartTime: 0, timeToLiveMilliseconds: 1000).bytes,
                             descriptors: [socket.rawValue, socket.rawValue])
            let reply = try #require(try channel.receive(maximumBytes: 65536, deadline: .now + .seconds(5)))
            #expect(try EscrowMessage(bytes: reply.bytes) == .failure(.malformed, "a deposit carries exactly one descriptor; 2 came (closed)"))
            #expect(eventually { broker.descriptorCount == baseline }, "\(broker.descriptorCount) vs \(baseline)")
            try broker.stop()
        }

        @Test func aThousandSilentConnectionsDoNotStopServiceAndAreDropped() throws {
            let broker = try BrokerProcess(arguments: ["--idle-timeout", "2"])
            let baseline = broker.settledDescriptorCount
            let memoryBefore = broker.residentKilobytes
            let silent = try (0..<1000).map { _ in try DescriptorChannel.connect(to: broker.socketPath) }
            let (token, _) = try Self.shareForUs(broker)
            _ = try SocketShare.adopt(token)
            #expect(eventually { (try? broker.client.list().isEmpty) == true })
            #expect(broker.descriptorCount > baseline + 900, "they are held open for now")
            // Past the idle timeout each is dropped: the peer sees the end of its connection.
            #expect(try silent[0].receive(deadline: .now + .seconds(10)) == nil)
            #expect(eventually(timeout: .seconds(10)) { broker.descriptorCount == baseline }, "\(broker.descriptorCount) vs \(baseline)")
            if !underSanitizer {
                #expect(broker.residentKilobytes - memoryBefore < 16 * 1024, "memory stays bounded: \(broker.residentKilobytes - memoryBefore) KiB more")
            }
            for channel in silent { try channel.close() }
            try broker.stop()
        }

        @Test func aClaimantThatDiesBeforeAcknowledgingGetsTheShareOfferedAgain() throws {
            let broker = try BrokerProcess()
            let (token, socket) = try Self.shareForUs(broker)
            // Claim by hand, take the descriptor, and go away without acknowledging.
            let channel = try DescriptorChannel.connect(to: broker.socketPath)
            try channel.send(EscrowMessage.claim(shareID: token.shareID, secret: Self.secret(token)).bytes)
            let reply = try #require(try channel.receive(deadline: .now + .seconds(5)))
            #expect(try EscrowMessage(bytes: reply.bytes) == .claimed(shareID: token.shareID))
            let handed = reply.takeDescriptors()
            #expect(try handed.first?.isSameSocket(as: socket) == true)
            // While it is handed out and unacknowledged, another claim waits its turn.
            let second = #expect(throws: SocketShareError.self) { try SocketShare.adopt(token) }
            #expect(second?.detail.contains("awaits its acknowledgement") == true)
            for descriptor in handed { try descriptor.close() }
            try channel.close()
            #expect(eventually { broker.log.contains("claimable again") })
            let adopted = try SocketShare.adopt(token)
            #expect(try adopted.isSameSocket(as: socket))
            try broker.stop()
        }

        @Test func clientsThatDieMidRequestLeaveNothingBehind() throws {
            let broker = try BrokerProcess()
            let baseline = broker.settledDescriptorCount
            for _ in 0..<20 {
                let helper = try Helper()
                // Connect and die without a word, or after half a request.
                try helper.begin(["connect", "unix-seqpacket://\(broker.socketPath)"])
                try helper.process.signal(SIGKILL)
                _ = try helper.process.wait()
            }
            #expect(eventually { broker.descriptorCount == baseline }, "\(broker.descriptorCount) vs \(baseline): \(Kernel.directoryEntries("/proc/\(broker.process.pid)/fd").map { Kernel.readLink("/proc/\(broker.process.pid)/fd/\($0)") ?? "?" })")
            #expect(try broker.client.list().isEmpty)
            try broker.stop()
        }
    }
}
