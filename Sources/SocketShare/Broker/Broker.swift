import Glibc
import Logging

/// The broker daemon: an escrow holder in its own process, so that a source may close its socket,
/// or exit, right after sharing it (Windows' `DuplicateAndClose`), and so that shares outlive
/// their sources.
///
/// Sources deposit a descriptor for a target pid and get a token; targets claim with it, exactly as
/// from the in-process sharer (`docs/PROTOCOL.md`). The broker adds what no in-process holder can:
/// expiry and quotas across processes, a listing of held shares, metrics, and restart without loss
/// (``takingOver(configuration:logger:)``).
///
/// ```swift
/// let broker = try Broker(configuration: .init(), logger: logger)
/// broker.run()            // until stop(), e.g. from a SIGTERM handler
/// ```
public final class Broker: Sendable {
    /// How a broker runs.
    public struct Configuration: Sendable {
        /// The broker's socket. Its directory must be private to this user (`0700`), or with
        /// ``group``, enterable by that group only (`0710`).
        public var socketPath: String
        /// The most shares held at once; deposits beyond are refused.
        public var maximumShares: Int
        /// The most shares one depositor uid may hold at once; nil for no limit.
        public var maximumSharesPerUser: Int?
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
            socketPath: String = Broker.defaultSocketPath, maximumShares: Int = 100_000,
            maximumSharesPerUser: Int? = nil, maximumTimeToLive: Duration = .seconds(86_400), group: gid_t? = nil,
            idleTimeout: Duration = .seconds(10), metricsText: (@Sendable () -> String)? = nil
        ) {
            self.idleTimeout = idleTimeout
            self.socketPath = socketPath
            self.maximumShares = maximumShares
            self.maximumSharesPerUser = maximumSharesPerUser
            self.maximumTimeToLive = maximumTimeToLive
            self.group = group
            self.metricsText = metricsText
        }
    }

    /// `$SOCKSHARE_BROKER`, else `broker.sock` in the standard ``RuntimeDirectory``
    /// (`$XDG_RUNTIME_DIR/sockshare/broker.sock`, `/run/sockshare/broker.sock` for root).
    public static var defaultSocketPath: String {
        if let explicit = RuntimeDirectory.environment("SOCKSHARE_BROKER"), !explicit.isEmpty { return explicit }
        return RuntimeDirectory.standardPath + "/broker.sock"
    }

    let holder: EscrowHolder

    /// Prepares the socket's directory, checks no broker already serves there, and binds.
    ///
    /// - Throws: ``SocketShareError``: `permissionDenied` when the directory is not private (or not
    ///   of the group); `invalidArgument` when a broker already answers at the path, or something
    ///   other than a socket is there.
    public init(configuration: Configuration, logger: Logger) throws(SocketShareError) {
        let settings = try Self.prepare(configuration, logger: logger)
        if let existing = try Kernel.linkStatus(configuration.socketPath) {
            guard existing.st_mode & S_IFMT == S_IFSOCK else {
                throw SocketShareError(
                    .invalidArgument, operation: "start broker", detail: "\(configuration.socketPath) exists and is not a socket")
            }
            if let probe = try? DescriptorChannel.connect(to: configuration.socketPath) {
                try? probe.close()
                throw SocketShareError(
                    .invalidArgument, operation: "start broker",
                    detail: "a broker already serves \(configuration.socketPath); stop it, or replace it with --takeover")
            }
            logger.info("removing a stale socket left by a broker that died", metadata: ["path": "\(configuration.socketPath)"])
            Kernel.unlink(configuration.socketPath)
        }
        holder = try EscrowHolder(configuration: settings)
        try Self.openToGroup(configuration)
    }

    private init(holder: EscrowHolder) {
        self.holder = holder
    }

    /// Takes over from the broker serving at `configuration.socketPath`: receives its listening
    /// socket and every share it holds over the descriptor channel; the old broker then exits.
    /// Tokens it issued stay claimable here; no connection is refused meanwhile.
    public static func takingOver(configuration: Configuration, logger: Logger) throws(SocketShareError) -> Broker {
        let settings = try prepare(configuration, logger: logger)
        return Broker(holder: try EscrowHolder.takingOver(configuration: settings))
    }

    /// Serves on the calling thread until ``stop()``. On a plain stop, every held share is closed
    /// (and logged); after a takeover, the successor has them.
    public func run() {
        holder.run()
    }

    /// Asks ``run()`` to return.
    public func stop() {
        holder.stop()
    }

    /// The shares held now.
    public var heldShareCount: Int { holder.heldCount }

    private static func prepare(_ configuration: Configuration, logger: Logger) throws(SocketShareError) -> EscrowHolder.Configuration {
        let path = configuration.socketPath
        guard path.hasPrefix("/"), let slash = path.lastIndex(of: "/") else {
            throw SocketShareError(.invalidArgument, operation: "start broker", detail: "--socket \(path): not an absolute path")
        }
        let directory = slash == path.startIndex ? "/" : String(path[..<slash])
        _ = try RuntimeDirectory(preparing: directory, group: configuration.group)
        raiseDescriptorLimit(logger: logger)
        var settings = EscrowHolder.Configuration(endpoint: path, mechanism: .broker, lingerWhenIdle: nil)
        settings.servesBrokerRequests = true
        settings.maximumShares = configuration.maximumShares
        settings.maximumSharesPerUser = configuration.maximumSharesPerUser
        settings.maximumTimeToLive = configuration.maximumTimeToLive
        settings.metricsText = configuration.metricsText
        settings.requestTimeout = configuration.idleTimeout
        settings.logger = logger
        return settings
    }

    /// With a group, lets its members connect (the socket file needs write permission for them).
    private static func openToGroup(_ configuration: Configuration) throws(SocketShareError) {
        guard let group = configuration.group else { return }
        guard chown(configuration.socketPath, geteuid(), group) == 0, chmod(configuration.socketPath, 0o660) == 0 else {
            throw SocketShareError.system("chmod", errno: Glibc.errno, detail: "\(configuration.socketPath) for group \(group)")
        }
    }

    /// Every held share is a descriptor: lift the soft limit to the hard one.
    private static func raiseDescriptorLimit(logger: Logger) {
        var limit = rlimit()
        guard getrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        if setrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit) == 0 {
            logger.debug("raised the descriptor limit", metadata: ["limit": "\(limit.rlim_cur)"])
        }
    }
}
