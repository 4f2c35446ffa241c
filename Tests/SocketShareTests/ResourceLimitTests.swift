import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// Running out: a target at its descriptor limit gets a clear error and can claim once it has room.
/// (A full channel and the broker's cap are tested with the channel and the broker.)
extension SocketShareTests {
    @Suite struct ResourceLimitTests {
        init() { TestEnvironment.prepare() }

        /// `spare` 0: no room even to connect to the holder; 1: room for the connection but not for
        /// the socket it brings (the kernel drops it: MSG_CTRUNC; for pidfd, `pidfd_getfd` fails).
        /// Through a sharer, a broker and pidfd.
        @Test(arguments: [0, 1], ["sharer", "broker", "pidfd"])
        func aTargetAtItsDescriptorLimitGetsAClearErrorAndClaimsLater(spare: Int, via: String) throws {
            let broker = via == "broker" ? try BrokerProcess() : nil
            let source = try Helper()
            let target = try Helper()
            let listener = try source.call("listen", "tcp://127.0.0.1:0")
            let token = try broker.map { try source.call("deposit", listener[0], "\(target.pid)", $0.socketPath, "60000")[0] }
                ?? source.call("share", listener[0], "\(target.pid)", via)[0]
            _ = try target.call("fill-fds", "\(spare)")
            let refusal = #expect(throws: HelperError.self) { try target.call("adopt", token) }
            #expect(refusal?.code == "limitReached", "\(String(describing: refusal))")
            #expect(refusal?.text.contains("descriptor limit") == true, "\(String(describing: refusal))")
            #expect(refusal?.text.contains("stays claimable") == true, "\(String(describing: refusal))")
            try target.call("free-fds", "8")
            // The holder takes the share back once it has seen the failed claimant go.
            var adopted: [String]? = nil
            #expect(eventually { adopted = try? target.call("adopt", token); return adopted != nil })
            #expect(adopted?[1] == listener[1])
            _ = try target.finish()
            _ = try source.finish()
            try broker?.stop()
        }
    }
}
