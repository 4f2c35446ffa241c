import Glibc
import SocketShareCore

/// Talks to a broker: deposit a socket for a target pid or under a name, claim a named share,
/// revoke, list, read metrics.
///
/// Each call opens a connection, sends one request, waits (at most `timeout`) for the answer and
/// closes. Claims go through `SocketShare.adopt(_:timeout:)`, as for any token.
public struct BrokerClient: Sendable {
    /// The broker's socket.
    public let socketPath: String
    /// How long to wait for an answer.
    public var timeout: Duration
    /// Whom the client trusts to serve `socketPath` (``Rendezvous``): a path derived from the runtime
    /// directory must be this user's or root's; a named one, its directory owner's.
    private let trust: Rendezvous.Trust

    /// A client of the broker at `socketPath`; nil for the default (``defaultSocketPath``).
    ///
    /// Before each request the client checks who serves the path (`docs/SECURITY.md`): the socket's
    /// directory must not be writable by others, and the broker (`SO_PEERCRED`) must be the
    /// directory's owner or root; for the default path in the runtime directory (and, for root,
    /// `$SOCKSHARE_BROKER`), that owner must also be this user or root. A path that fails is refused
    /// with the reason, never replaced.
    public init(socketPath: String? = nil, timeout: Duration = .seconds(10)) {
        let environment = RuntimeDirectory.environment("SOCKSHARE_BROKER").flatMap { $0.isEmpty ? nil : $0 }
        self.socketPath = socketPath ?? environment ?? RuntimeDirectory.standardPath + "/broker.sock"
        // A path given here was named; one from the environment too, except for root, whose
        // environment another user may have set (`sudo -E`): root trusts it as its own runtime
        // directory's, and names another user's broker explicitly.
        self.trust = socketPath != nil || (environment != nil && geteuid() != 0) ? .directoryOwner : .ownUserOrRoot
        self.timeout = timeout
    }

    /// Where brokers listen unless told otherwise: `$SOCKSHARE_BROKER`, else `broker.sock` in the
    /// standard `RuntimeDirectory` (`$XDG_RUNTIME_DIR/sockshare/broker.sock`,
    /// `/run/sockshare/broker.sock` for root).
    public static var defaultSocketPath: String { BrokerClient().socketPath }

    /// Connects to the broker, once it is one this client trusts.
    private func connect(for operation: String) throws(SocketShareError) -> DescriptorChannel {
        try Rendezvous.connect(
            to: socketPath, trust: trust, for: operation,
            absent: "no broker answers at \(socketPath) (start one with `sockshare broker`)")
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
        if let cgroup = policy.cgroup, let problem = ClaimPolicy.problem(cgroup: cgroup) {
            throw SocketShareError(.invalidArgument, operation: "deposit", detail: "cgroup \(problem)")
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
    /// share out or the wait is over; a broker that cuts the wait short (`--max-claim-wait`) is
    /// asked again until the wait is over.
    ///
    /// Names are scoped by depositor (`docs/SECURITY.md`): the claim looks at the shares `depositor`
    /// deposited, or by default at this user's own, then root's, then the broker user's, so a share
    /// another user deposited under the same name is never taken for one of them.
    ///
    /// - Parameters:
    ///   - name: The share's name.
    ///   - depositor: Whose share: the uid that deposited it; nil for this user, root or the broker's user.
    ///   - wait: How long to wait for the name, at most a day.
    /// - Throws: `SocketShareError`: `notFound` when no share of that name is held for this process,
    ///   whether none exists or its policy does not admit this process (the broker's log says
    ///   which); `refused` when another claimant still has a single-use share at the end of the
    ///   wait (cause `claimInProgress`); `expired`; `holderGone` when no broker answers;
    ///   `invalidArgument` for a bad name or a wait longer than a day.
    public func claim(named name: String, from depositor: uid_t? = nil, waitingUpTo wait: Duration = .zero) throws(SocketShareError) -> SocketDescriptor {
        try claimNamed(name, from: depositor, waitingUpTo: wait, current: nil)
    }

    /// `claim(named:from:waitingUpTo:)` for async callers: the wait blocks no thread of the
    /// cooperative pool, and a cancelled task stops waiting (it throws `CancellationError`).
    public func claim(named name: String, from depositor: uid_t? = nil, waitingUpTo wait: Duration = .zero) async throws -> SocketDescriptor {
        try Task.checkCancellation()
        // Cancelling shuts the current connection down (a blocked wait then wakes); only the claim
        // closes it, under the lock, so a shutdown never reaches a descriptor number reused since.
        let current = Locked(ClaimConnection())
        do {
            return try await withTaskCancellationHandler {
                try await BlockingCall.run { () throws(SocketShareError) in
                    try claimNamed(name, from: depositor, waitingUpTo: wait, current: current)
                }
            } onCancel: {
                current.withLock { state in
                    state.cancelled = true
                    if let channel = state.channel { _ = shutdown(channel.socket.rawValue, CInt(SHUT_RDWR)) }
                }
            }
        } catch where Task.isCancelled {
            throw CancellationError()
        }
    }

    /// The connection of a named claim under way, as a cancellation sees it.
    private struct ClaimConnection: Sendable {
        var channel: DescriptorChannel?
        var cancelled = false
    }

    /// The longest wait a named claim may ask for.
    public static let maximumClaimWait: Duration = .seconds(86_400)

    /// Claims `name`, asking again while a wait the broker cut short has time left.
    private func claimNamed(
        _ name: String, from depositor: uid_t?, waitingUpTo wait: Duration, current: Locked<ClaimConnection>?
    ) throws(SocketShareError) -> SocketDescriptor {
        if let problem = ShareName.problem(name) {
            throw SocketShareError(.invalidArgument, operation: "claim", detail: "name \(name): \(problem)")
        }
        guard wait >= .zero, wait <= Self.maximumClaimWait else {
            throw SocketShareError(.invalidArgument, operation: "claim", detail: "wait \(wait): expected 0 to 86400 s")
        }
        let end = ContinuousClock.now + wait
        while true {
            let started = ContinuousClock.now
            let remaining = max(.zero, started.duration(to: end))
            let channel = try connect(for: "claim")
            let cancelled = current?.withLock { state -> Bool in
                state.channel = channel
                return state.cancelled
            } ?? false
            defer {
                if let current {
                    current.withLock { state in
                        state.channel = nil
                        try? channel.close()
                    }
                } else {
                    try? channel.close()
                }
            }
            if cancelled { throw SocketShareError(.timedOut, operation: "claim", detail: "cancelled") }
            do throws(SocketShareError) {
                return try exchangeNamedClaim(name, from: depositor, waitMilliseconds: UInt32(remaining / .milliseconds(1)), on: channel)
            } catch where (error.code == .notFound || error.cause == .claimInProgress)
                && ContinuousClock.now - started >= .seconds(1) && ContinuousClock.now < end - .seconds(1) {
                // The broker answered at its own maximum wait, before ours: ask again.
                continue
            }
        }
    }

    /// Sends the named claim and receives the socket (or the refusal), within the wait plus `timeout`.
    private func exchangeNamedClaim(
        _ name: String, from depositor: uid_t?, waitMilliseconds: UInt32, on channel: DescriptorChannel
    ) throws(SocketShareError) -> SocketDescriptor {
        let deadline = ContinuousClock.now + .milliseconds(Int64(waitMilliseconds)) + timeout
        let request = EscrowMessage.claimNamed(name: name, waitMilliseconds: waitMilliseconds, from: depositor)
        return try ShareClaim.exchange(request, on: channel, deadline: deadline) { (reply, attached) throws(SocketShareError) in
            guard case .claimed = reply, let attached else { throw ShareClaim.unexpected(reply, attached) }
            // No token to check it against: it must at least be a socket.
            guard (try? SocketIdentity(of: attached.rawValue)) != nil else {
                throw SocketShareError(.verificationFailed, operation: "claim", detail: "the broker sent a descriptor that is not a socket")
            }
            return attached
        }
    }

    /// Revokes the share named `name` that `depositor` deposited (nil: your own; another user's,
    /// as root only) and returns its id.
    @discardableResult
    public func revoke(named name: String, from depositor: uid_t? = nil) throws(SocketShareError) -> UInt64 {
        if let problem = ShareName.problem(name) {
            throw SocketShareError(.invalidArgument, operation: "revoke", detail: "name \(name): \(problem)")
        }
        let reply = try request(.revokeNamed(name: name, from: depositor), operation: "revoke")
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
        let channel = try connect(for: operation)
        defer { try? channel.close() }
        try channel.sendRequest(message.bytes, descriptors: descriptors, deadline: deadline)
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
