import Glibc
import SocketShareCore

/// Talks to a broker: deposit a socket for a target pid or under a name, claim a named share,
/// revoke, list, read metrics.
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

    /// Deposits `descriptor` under `name` for whoever `policy` admits, and returns the share's id.
    /// The way to share with a process whose pid you cannot see (another pid namespace or
    /// container, or one not started yet): it claims with `claim(named:waitingUpTo:)`.
    ///
    /// - Parameters:
    ///   - descriptor: The socket to share; it stays open and owned by the caller.
    ///   - name: 1 to 128 characters of `A-Z a-z 0-9 . _ - : @`, unique at the broker.
    ///   - policy: Who may claim it; the empty policy admits the caller's own uid only.
    ///   - timeToLive: How long it stays claimable; nil (with `keep` only) until revoked.
    ///   - keep: Hand a descriptor to every admitted claimant until revoked (a standing store, as
    ///     systemd's `FDSTORE=1`), rather than to the first one only.
    /// - Throws: `SocketShareError`: `invalidArgument` for a bad name, or a name already held;
    ///   `limitReached` for quotas or a time to live above the broker's maximum; `holderGone` when
    ///   no broker answers.
    public func deposit(
        _ descriptor: CInt, named name: String, policy: ClaimPolicy = ClaimPolicy(),
        timeToLive: Duration? = ShareOptions.defaultTimeToLive, keep: Bool = false
    ) throws(SocketShareError) -> UInt64 {
        if let problem = ShareName.problem(name) {
            throw SocketShareError(.invalidArgument, operation: "deposit", detail: "name \(name): \(problem)")
        }
        if let cgroup = policy.cgroup, !cgroup.hasPrefix("/") || cgroup.utf8.count > ClaimPolicy.maximumCgroupLength {
            throw SocketShareError(
                .invalidArgument, operation: "deposit",
                detail: "cgroup \(cgroup): expected an absolute cgroup v2 path of at most \(ClaimPolicy.maximumCgroupLength) bytes")
        }
        var milliseconds: Int64 = 0
        if let timeToLive {
            milliseconds = timeToLive.components.seconds * 1000 + timeToLive.components.attoseconds / 1_000_000_000_000_000
            guard milliseconds > 0, milliseconds <= Int64(UInt32.max) else {
                throw SocketShareError(.invalidArgument, operation: "deposit", detail: "time to live \(timeToLive) is out of range")
            }
        } else if !keep {
            throw SocketShareError(
                .invalidArgument, operation: "deposit", detail: "a share held until revoked must be kept (keep: true); give a time to live")
        }
        let reply = try request(
            .depositNamed(name: name, policy: policy, timeToLiveMilliseconds: UInt32(milliseconds), keep: keep),
            descriptors: [descriptor], operation: "deposit")
        guard case .depositedNamed(let id) = reply else { throw unexpected(reply, "deposit") }
        return id
    }

    /// Claims the share named `name`: this process gets its own descriptor of the socket,
    /// close-on-exec. With a wait, the broker holds the claim while the name is not (yet) held, or
    /// while a single-use share is in another claimant's hands, and answers once it can hand the
    /// share out or the wait is over.
    ///
    /// - Throws: `SocketShareError`: `notFound` when no share has the name (after the wait);
    ///   `refused` when its policy does not admit this process (the text says which condition;
    ///   cause `policyRefused`), or when another claimant still has a single-use share at the end
    ///   of the wait (cause `claimInProgress`); `expired`; `holderGone` when no broker answers;
    ///   `invalidArgument` for a bad name or a wait longer than a day.
    public func claim(named name: String, waitingUpTo wait: Duration = .zero) throws(SocketShareError) -> SocketDescriptor {
        let (channel, waitMilliseconds) = try connectToClaim(named: name, waitingUpTo: wait)
        defer { try? channel.close() }
        return try exchangeNamedClaim(name, waitMilliseconds: waitMilliseconds, on: channel)
    }

    /// `claim(named:waitingUpTo:)` for async callers: the wait blocks no thread of the cooperative
    /// pool, and a cancelled task stops waiting (it throws `CancellationError`).
    public func claim(named name: String, waitingUpTo wait: Duration = .zero) async throws -> SocketDescriptor {
        try Task.checkCancellation()
        let (channel, waitMilliseconds) = try connectToClaim(named: name, waitingUpTo: wait)
        // Cancelling shuts the socket down (a blocked wait then wakes); only the call closes it,
        // under the lock, so a shutdown never reaches a descriptor number reused since.
        let closed = Locked(false)
        do {
            return try await withTaskCancellationHandler {
                try await BlockingCall.run { () throws(SocketShareError) in
                    defer { closed.withLock { $0 = true; try? channel.close() } }
                    return try exchangeNamedClaim(name, waitMilliseconds: waitMilliseconds, on: channel)
                }
            } onCancel: {
                closed.withLock { if !$0 { _ = shutdown(channel.socket.rawValue, CInt(SHUT_RDWR)) } }
            }
        } catch where Task.isCancelled {
            throw CancellationError()
        }
    }

    /// The longest wait a named claim may ask for.
    public static let maximumClaimWait: Duration = .seconds(86_400)

    /// Checks the arguments of a named claim and connects to the broker.
    private func connectToClaim(named name: String, waitingUpTo wait: Duration) throws(SocketShareError) -> (DescriptorChannel, UInt32) {
        if let problem = ShareName.problem(name) {
            throw SocketShareError(.invalidArgument, operation: "claim", detail: "name \(name): \(problem)")
        }
        guard wait >= .zero, wait <= Self.maximumClaimWait else {
            throw SocketShareError(.invalidArgument, operation: "claim", detail: "wait \(wait): expected 0 to 86400 s")
        }
        let channel = try DescriptorChannel.connect(
            to: socketPath, for: "claim", absent: "no broker answers at \(socketPath) (start one with `sockshare broker`)")
        return (channel, UInt32(wait / .milliseconds(1)))
    }

    /// Sends the named claim and receives the socket (or the refusal), within the wait plus `timeout`.
    private func exchangeNamedClaim(_ name: String, waitMilliseconds: UInt32, on channel: DescriptorChannel) throws(SocketShareError) -> SocketDescriptor {
        let deadline = ContinuousClock.now + .milliseconds(Int64(waitMilliseconds)) + timeout
        return try ShareClaim.exchange(
            .claimNamed(name: name, waitMilliseconds: waitMilliseconds), on: channel, deadline: deadline
        ) { (descriptor, _) throws(SocketShareError) in
            // No token to check it against: it must at least be a socket.
            guard (try? SocketIdentity(of: descriptor.rawValue)) != nil else {
                throw SocketShareError(.verificationFailed, operation: "claim", detail: "the broker sent a descriptor that is not a socket")
            }
        }
    }

    /// Revokes the share named `name` (yours, or any as root) and returns its id.
    @discardableResult
    public func revoke(named name: String) throws(SocketShareError) -> UInt64 {
        if let problem = ShareName.problem(name) {
            throw SocketShareError(.invalidArgument, operation: "revoke", detail: "name \(name): \(problem)")
        }
        let reply = try request(.revokeNamed(name: name), operation: "revoke")
        guard case .revoked(let id) = reply else { throw unexpected(reply, "revoke") }
        return id
    }

    /// The named shares you deposited (every one, as root): names and policies, never anything more.
    public func namedShares() throws(SocketShareError) -> [NamedShare] {
        try pages(\.id) { (after) throws(SocketShareError) in
            let reply = try request(.listNamed(after: after), operation: "list")
            guard case .namedListing(let more, let page) = reply else { throw unexpected(reply, "list") }
            return (more, page)
        }
    }

    /// Revokes share `shareID` (yours, or any as root).
    public func revoke(shareID: UInt64) throws(SocketShareError) {
        let reply = try request(.revoke(shareID: shareID), operation: "revoke")
        guard case .revoked = reply else { throw unexpected(reply, "revoke") }
    }

    /// The shares you deposited (every share, as root).
    public func list() throws(SocketShareError) -> [HeldShare] {
        try pages(\.id) { (after) throws(SocketShareError) in
            let reply = try request(.list(after: after), operation: "list")
            guard case .listing(let more, let page) = reply else { throw unexpected(reply, "list") }
            return (more, page)
        }
    }

    /// Every page of a listing: asks for ids above the last one seen while the broker says there is more.
    private func pages<Entry>(
        _ id: (Entry) -> UInt64, _ page: (UInt64) throws(SocketShareError) -> (more: Bool, entries: [Entry])
    ) throws(SocketShareError) -> [Entry] {
        var entries: [Entry] = []
        var after: UInt64 = 0
        while true {
            let (more, next) = try page(after)
            entries += next
            guard more, let last = next.last else { return entries }
            after = id(last)
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
