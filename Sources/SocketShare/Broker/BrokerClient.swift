import Glibc
import SocketShareCore

/// Talks to a broker: deposit a socket for a target, revoke, list, read metrics.
///
/// Each call opens a connection, sends one request, waits (at most `timeout`) for the answer and
/// closes. Claims go through `SocketShare.adopt(_:timeout:)`, as for any token.
public struct BrokerClient: Sendable {
    /// The broker's socket.
    public var socketPath: String
    /// How long to wait for an answer.
    public var timeout: Duration

    /// A client of the broker at `socketPath` (default `defaultSocketPath`).
    public init(socketPath: String = BrokerClient.defaultSocketPath, timeout: Duration = .seconds(10)) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    /// Where brokers listen unless told otherwise: `$SOCKSHARE_BROKER`, else `broker.sock` in the
    /// standard `RuntimeDirectory` (`$XDG_RUNTIME_DIR/sockshare/broker.sock`,
    /// `/run/sockshare/broker.sock` for root).
    public static var defaultSocketPath: String {
        if let explicit = RuntimeDirectory.environment("SOCKSHARE_BROKER"), !explicit.isEmpty { return explicit }
        return RuntimeDirectory.standardPath + "/broker.sock"
    }

    /// Deposits `descriptor` for `target` and returns the token. The caller keeps its descriptor
    /// and may close it, or exit, at once: the broker holds a duplicate.
    ///
    /// - Parameters:
    ///   - descriptor: The socket to share; it stays open and owned by the caller.
    ///   - target: The target; a start time of 0 means whichever process has the pid now.
    ///   - timeToLive: How long the share stays claimable; the broker may cap it (`--max-ttl`).
    /// - Throws: `SocketShareError`: `holderGone` when no broker answers; `limitReached` for quotas,
    ///   the global cap or a time to live above the broker's maximum; `invalidArgument` when the target
    ///   does not exist.
    public func deposit(_ descriptor: CInt, for target: ProcessIdentity, timeToLive: Duration = ShareOptions.defaultTimeToLive) throws(SocketShareError) -> ShareToken {
        let milliseconds = timeToLive.components.seconds * 1000 + timeToLive.components.attoseconds / 1_000_000_000_000_000
        guard milliseconds > 0, milliseconds <= Int64(UInt32.max) else {
            throw SocketShareError(.invalidArgument, operation: "deposit", detail: "time to live \(timeToLive) is out of range")
        }
        let reply = try request(
            .deposit(targetPID: UInt32(bitPattern: target.pid), targetStartTime: target.startTime,
                     timeToLiveMilliseconds: UInt32(milliseconds)),
            descriptors: [descriptor], operation: "deposit")
        guard case .deposited(let bytes) = reply else { throw unexpected(reply, "deposit") }
        return try ShareToken(bytes: bytes)
    }

    /// Revokes share `shareID` (yours, or any as root).
    public func revoke(shareID: UInt64) throws(SocketShareError) {
        let reply = try request(.revoke(shareID: shareID), operation: "revoke")
        guard case .revoked = reply else { throw unexpected(reply, "revoke") }
    }

    /// The shares you deposited (every share, as root).
    public func list() throws(SocketShareError) -> [HeldShare] {
        var shares: [HeldShare] = []
        var after: UInt64 = 0
        while true {
            let reply = try request(.list(after: after), operation: "list")
            guard case .listing(let more, let page) = reply else { throw unexpected(reply, "list") }
            shares += page
            guard more, let last = page.last else { return shares }
            after = last.id
        }
    }

    /// The broker's metrics in the Prometheus text format.
    public func metrics() throws(SocketShareError) -> String {
        let reply = try request(.metrics, operation: "metrics")
        guard case .metricsText(let text) = reply else { throw unexpected(reply, "metrics") }
        return text
    }

    /// Sends one request and returns the answer; a failure answer is thrown.
    package func request(_ message: EscrowMessage, descriptors: [CInt] = [], operation: String) throws(SocketShareError) -> EscrowMessage {
        let deadline = ContinuousClock.now + timeout
        let channel = try DescriptorChannel.connect(
            to: socketPath, for: operation, absent: "no broker answers at \(socketPath) (start one with `sockshare broker`)")
        defer { try? channel.close() }
        try channel.send(message.bytes, descriptors: descriptors, deadline: deadline)
        guard let reply = try channel.receive(maximumBytes: EscrowMessage.maximumReplyLength, deadline: deadline) else {
            throw SocketShareError(.holderGone, operation: operation, detail: "the broker closed the connection without answering")
        }
        reply.closeDescriptors()
        let answer: EscrowMessage
        do throws(SocketShareError) {
            answer = try EscrowMessage(bytes: reply.bytes)
        } catch {
            throw error.within(operation, code: .protocolViolation, context: "reply")
        }
        if case .failure(let code, let text) = answer { throw SocketShareError(code.code, operation: operation, detail: text) }
        return answer
    }

    private func unexpected(_ reply: EscrowMessage, _ operation: String) -> SocketShareError {
        SocketShareError(.protocolViolation, operation: operation, detail: "unexpected reply \(reply)")
    }
}
