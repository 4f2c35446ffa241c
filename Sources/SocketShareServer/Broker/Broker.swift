import Glibc
import Logging
import ServiceLifecycle
import SocketShare
import SocketShareCore

/// The broker daemon: an escrow holder in its own process, so that a source may close its socket,
/// or exit, right after sharing it (Windows' `DuplicateAndClose`), and so that shares outlive
/// their sources.
///
/// Sources deposit a descriptor for a target pid and get a token; targets claim with it, exactly as
/// from the in-process sharer (`docs/PROTOCOL.md`). The broker adds what no in-process holder can:
/// expiry and quotas across processes, a listing of held shares, metrics, and restart without loss
/// (``takingOver(configuration:logger:)``).
///
/// A `Service`: run it in a `ServiceGroup`, which stops it on graceful shutdown (every held share
/// is then closed and logged); cancelling ``run()`` stops it too.
///
/// ```swift
/// let broker = try Broker(configuration: .init(), logger: logger)
/// let group = ServiceGroup(services: [broker], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
/// try await group.run()
/// ```
public final class Broker: Service, @unchecked Sendable {
    /// How a broker runs.
    public struct Configuration: Sendable {
        /// The broker's socket. Its directory must be private to this user (`0700`), or with
        /// ``group``, enterable by that group only (`0710`).
        public var socketPath: String
        /// The most shares held at once, pid-targeted and named together; deposits beyond are
        /// refused. Lowered at start to what the descriptor limit allows, less a reserve kept for
        /// `status` and for root's and the broker's own user's requests (`docs/SECURITY.md`).
        public var maximumShares: Int
        /// The most shares one depositor uid may hold at once, for every uid; nil for the automatic
        /// quota: a quarter of ``maximumShares`` for each uid other than root and the broker's own.
        public var maximumSharesPerUser: Int?
        /// The most connections one uid other than root and the broker's own may have open at once;
        /// nil for the automatic limit (64, or an eighth of what the descriptor limit allows).
        public var maximumConnectionsPerUser: Int?
        /// The longest a named claim is held waiting for its name; a client that asked for longer
        /// asks again (`BrokerClient.claim(named:from:waitingUpTo:)` does).
        public var maximumClaimWait: Duration
        /// The longest time to live a deposit may ask for.
        public var maximumTimeToLive: Duration
        /// A group whose members may reach the broker, for sharing across users; nil keeps it private.
        public var group: gid_t?
        /// How long a client connection may stay silent before it is dropped.
        public var idleTimeout: Duration
        /// Renders metrics for `sockshare status --metrics`; nil answers with an empty text.
        public var metricsText: (@Sendable () -> String)?

        /// Creates a configuration; every value has a default.
        public init(
            socketPath: String = BrokerClient.defaultSocketPath, maximumShares: Int = 100_000,
            maximumSharesPerUser: Int? = nil, maximumConnectionsPerUser: Int? = nil, maximumClaimWait: Duration = .seconds(600),
            maximumTimeToLive: Duration = .seconds(86_400), group: gid_t? = nil, idleTimeout: Duration = .seconds(10),
            metricsText: (@Sendable () -> String)? = nil
        ) {
            self.idleTimeout = idleTimeout
            self.socketPath = socketPath
            self.maximumShares = maximumShares
            self.maximumSharesPerUser = maximumSharesPerUser
            self.maximumConnectionsPerUser = maximumConnectionsPerUser
            self.maximumClaimWait = maximumClaimWait
            self.maximumTimeToLive = maximumTimeToLive
            self.group = group
            self.metricsText = metricsText
        }
    }

    package let configuration: Configuration
    /// What the descriptor limit lets this broker hold, and the quotas that follow.
    package let capacity: Capacity
    package let holder: EscrowHolder
    private let stopped = StopSignal()

    // Touched on the holder's reactor thread only.
    /// A successor broker that asked for everything; serving winds down until it is handed over.
    var successor: EscrowHolder.Connection?
    /// When the hand-over goes ahead even with claims still unacknowledged.
    var handoverDeadline: ContinuousClock.Instant?
    var handoverTimer: Reactor.Timer?
    /// The named shares (`Broker+Names.swift`). Changed on the reactor's thread; read anywhere.
    let named: Locked<NamedShareTable<SocketDescriptor>>
    /// The named share handed to each connection and not yet acknowledged, by connection id.
    var namedOffers: [UInt64: UInt64] = [:]
    var namedTimer: Reactor.Timer?
    /// Named claims waiting for their name, by connection id (`Broker+Names.swift`).
    var parkedClaims: [UInt64: ParkedClaim] = [:]

    var logger: Logger { holder.logger }

    /// Prepares the socket's directory, checks no broker already serves there, and binds.
    /// Nothing is served until ``run()``.
    ///
    /// - Throws: `SocketShareError`: `permissionDenied` when the directory is not private (or not
    ///   of the group); `invalidArgument` when a broker already answers at the path, or something
    ///   other than a socket is there.
    public convenience init(configuration: Configuration, logger: Logger) throws(SocketShareError) {
        let (settings, capacity) = try Self.prepare(configuration, logger: logger)
        if let existing = try Kernel.linkStatus(configuration.socketPath) {
            guard existing.st_mode & S_IFMT == S_IFSOCK else {
                throw SocketShareError(
                    .invalidArgument, operation: "start broker", detail: "\(configuration.socketPath) exists and is not a socket")
            }
            if let probe = try? DescriptorChannel.connect(to: configuration.socketPath) {
                try? probe.close()
                throw SocketShareError(
                    .invalidArgument, operation: "start broker",
                    detail: "a broker already serves \(configuration.socketPath); stop it, or have its successor take over")
            }
            logger.info("removing a stale socket left by a broker that died", metadata: ["path": "\(configuration.socketPath)"])
            Kernel.unlink(configuration.socketPath)
        }
        let holder = try EscrowHolder(configuration: settings)
        do throws(SocketShareError) {
            try Self.openToGroup(configuration)
        } catch {
            holder.stop()
            throw error
        }
        self.init(configuration: configuration, capacity: capacity, holder: holder)
    }

    init(
        configuration: Configuration, capacity: Capacity, holder: EscrowHolder,
        installing named: [(NamedShareRecord, SocketDescriptor)] = []
    ) {
        self.configuration = configuration
        self.capacity = capacity
        self.holder = holder
        var table = NamedShareTable<SocketDescriptor>(maximumShares: capacity.maximumShares)
        let now = ShareTime.nowMilliseconds
        for (record, descriptor) in named {
            guard let description = try? SocketDescription(of: descriptor.rawValue) else {
                try? descriptor.close()
                continue
            }
            let deadline = record.expiresAtMilliseconds == 0
                ? nil
                : ContinuousClock.now + .milliseconds(Int64(record.expiresAtMilliseconds > now ? record.expiresAtMilliseconds - now : 0))
            if !table.install(record, description: description, held: descriptor, deadline: deadline) { try? descriptor.close() }
        }
        self.named = Locked(table)
        holder.service = self
        holder.whenStopped { [self] in
            let count = endAllNamed()
            if count > 0 { logger.notice("stopped: closed \(count) named shares") }
        }
    }

    /// Serves until graceful shutdown, cancellation or ``stop()``, or until a successor has taken
    /// everything over. On a plain stop, every held share is closed (and logged); after a
    /// takeover, the successor has them.
    ///
    /// - Throws: `SocketShareError` when the broker's thread cannot start.
    public func run() async throws {
        try holder.start()
        holder.reactor.execute { [self] in armNamedTimer() }
        holder.whenStopped { [stopped] in stopped.signal() }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await stopped.wait()
            } onGracefulShutdown: { [self] in
                stop()
            }
        } onCancel: { [self] in
            stop()
        }
        holder.stop()
    }

    /// Stops serving now; ``run()`` returns. Idempotent.
    public func stop() {
        holder.stop()
        stopped.signal()
    }

    /// The shares held now, pid-targeted and named.
    public var heldShareCount: Int { holder.heldCount + named.withLock { $0.count } }

    static func prepare(_ configuration: Configuration, logger: Logger) throws(SocketShareError) -> (EscrowHolder.Configuration, Capacity) {
        let path = configuration.socketPath
        guard let (directory, _) = Kernel.splitPath(path) else {
            throw SocketShareError(.invalidArgument, operation: "start broker", detail: "socket path \(path): not an absolute path")
        }
        _ = try RuntimeDirectory(preparing: directory, group: configuration.group)
        let capacity = Capacity(descriptorLimit: Kernel.raiseDescriptorLimit(), configuration: configuration)
        if capacity.maximumShares < configuration.maximumShares {
            logger.notice("the descriptor limit allows \(capacity.maximumShares) shares; holding at most that many", metadata: [
                "descriptorLimit": "\(capacity.descriptorLimit)", "asked": "\(configuration.maximumShares)",
            ])
        }
        var settings = EscrowHolder.Configuration(endpoint: path, mechanism: .broker, lingerWhenIdle: nil, logger: logger)
        settings.limits.maximumShares = capacity.maximumShares
        settings.requestTimeout = configuration.idleTimeout
        settings.connections = capacity.connections
        return (settings, capacity)
    }

    /// With a group, lets its members connect (the socket file needs write permission for them).
    private static func openToGroup(_ configuration: Configuration) throws(SocketShareError) {
        guard let group = configuration.group else { return }
        try Kernel.setSocketFile(configuration.socketPath, user: geteuid(), group: group, mode: 0o660)
    }
}
