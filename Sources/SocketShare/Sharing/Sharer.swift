import Glibc
import Logging
import ServiceLifecycle
import SocketShareCore

/// The in-process holder of shares: it keeps a duplicate of each socket shared through it until
/// the target claims it, and serves the claim (Windows keeps this state in the Winsock provider).
///
/// A sharer listens on a rendezvous socket in a private `RuntimeDirectory`, starting on the first
/// share and, with a linger, stopping once nothing has been held for that long; the next share
/// starts it again. Its shares live as long as this process does: to let the source exit at once,
/// share through the broker (``ShareOptions/Via/broker``).
///
/// Most programs use the default one through the module's functions
/// (`SocketShare.duplicate(_:for:options:)` and friends). A server that wants its own logger and
/// directory, and shares that end with its shutdown, owns one and runs it as a `Service`:
///
/// ```swift
/// let sharer = Sharer(configuration: .init(directory: "/run/myserver"), logger: logger)
/// let group = ServiceGroup(services: [sharer, server], gracefulShutdownSignals: [.sigterm], logger: logger)
/// // elsewhere: let token = try sharer.duplicate(listener, for: workerPID)
/// ```
public final class Sharer: Service, Sendable {
    /// How a sharer behaves.
    public struct Configuration: Sendable {
        /// The directory of the rendezvous socket; nil for the standard `RuntimeDirectory`. It is
        /// created `0700` if missing, and refused if open to others.
        public var directory: String?
        /// How long an idle sharer (no share held, no claimant connected) keeps its socket before it
        /// stops; nil keeps it until `stop()`. Default 5 s.
        public var lingerWhenIdle: Duration?
        /// The most shares held at once; shares beyond are refused (`limitReached`).
        public var maximumShares: Int

        /// Creates a configuration; every value has a default.
        public init(directory: String? = nil, lingerWhenIdle: Duration? = .seconds(5), maximumShares: Int = 100_000) {
            self.directory = directory
            self.lingerWhenIdle = lingerWhenIdle
            self.maximumShares = maximumShares
        }
    }

    /// The process's default sharer, behind `SocketShare.duplicate(_:for:options:)`. It does not
    /// log (a library should not write to a program's stderr uninvited); own a ``Sharer`` with a
    /// logger of yours to see what it does.
    public static let `default` = Sharer(logger: Logger(label: "sockshare.sharer", factory: { _ in SwiftLogNoOpLogHandler() }))

    /// How this sharer behaves.
    public let configuration: Configuration
    private let logger: Logger
    private let state = Locked(State())
    private let finished = StopSignal()

    private struct State: Sendable {
        var holder: EscrowHolder?
        /// Set when `run()` ended: no share is taken any more.
        var closed = false
    }

    /// A sharer that logs to `logger`; nothing is created or bound until the first share.
    public init(configuration: Configuration = Configuration(), logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Duplicates `descriptor` for the process `target` and returns the token that redeems it.
    ///
    /// The caller still owns `descriptor` and may close it as soon as this returns: the holder keeps
    /// its own duplicate until the target claims it, the share expires, the target exits, or it is
    /// revoked (.NET's `DuplicateAndClose`). With the sharer or pidfd, that holder is this process,
    /// so the share lives only as long as this process does; the broker lets the source exit.
    ///
    /// - Parameters:
    ///   - descriptor: An open socket of family inet, inet6 or unix, type stream, dgram or seqpacket.
    ///   - target: The pid of the only process that may adopt the share. It must be running.
    ///   - options: Who holds the share, and for how long.
    /// - Throws: `SocketShareError`: `invalidArgument` when the descriptor is not such a socket or
    ///   the target does not exist; `permissionDenied` when the runtime directory is unsafe;
    ///   `holderGone` when this sharer's `run()` has ended, or the broker asked for does not answer.
    public func duplicate(_ descriptor: CInt, for target: pid_t, options: ShareOptions = ShareOptions()) throws(SocketShareError) -> ShareToken {
        try duplicate(descriptor, to: try ShareTarget.resolve(pid: target), options: options)
    }

    /// Duplicates the socket behind `descriptor`; see `duplicate(_:for:options:)`.
    public func duplicate(
        _ descriptor: SocketDescriptor, for target: pid_t, options: ShareOptions = ShareOptions()
    ) throws(SocketShareError) -> ShareToken {
        try duplicate(descriptor.rawValue, for: target, options: options)
    }

    /// Duplicates for an exact process: `target`'s pid must still belong to the process that
    /// started at `target.startTime`.
    ///
    /// - Throws: `SocketShareError` with code `invalidArgument` when that process has exited
    ///   (its pid may now name another process).
    public func duplicate(
        _ descriptor: CInt, for target: ProcessIdentity, options: ShareOptions = ShareOptions()
    ) throws(SocketShareError) -> ShareToken {
        try duplicate(descriptor, to: try ShareTarget.resolve(pid: target.pid, expected: target), options: options)
    }

    /// The common path, for a target resolved while it runs.
    package func duplicate(_ descriptor: CInt, to target: ShareTarget, options: ShareOptions) throws(SocketShareError) -> ShareToken {
        guard options.timeToLive > .zero else {
            throw SocketShareError(.invalidArgument, operation: "duplicate", detail: "time to live must be positive")
        }
        guard Kernel.descriptorFlags(descriptor) != nil else {
            throw SocketShareError(.invalidArgument, operation: "duplicate", detail: "descriptor \(descriptor) is not open")
        }
        let description = try SocketDescription(of: descriptor)
        if options.via == .broker || options.via == .auto {
            let client = BrokerClient(socketPath: options.brokerSocketPath)
            do throws(SocketShareError) {
                return try client.deposit(descriptor, for: target.identity, timeToLive: options.timeToLive)
            } catch where options.via == .auto && error.code == .holderGone {
                // No broker answers: this process holds the share instead.
            }
        }
        if options.via == .pidfd { try Self.allowPull(by: target.identity.pid) }
        let mechanism: ShareMechanism = options.via == .pidfd ? .pidfd : .sharer
        // A holder that stopped itself when idle refuses deposits; start a fresh one and try once more.
        var stale: EscrowHolder?
        for _ in 0..<2 {
            let holder = try runningHolder(replacing: stale)
            let held = SocketDescriptor(taking: try Kernel.duplicate(descriptor))
            do throws(SocketShareError) {
                return try holder.deposit(
                    held, description: description, target: target, mechanism: mechanism,
                    timeToLive: options.timeToLive, depositor: .current, depositorUID: geteuid())
            } catch where error.code == .holderGone && stale == nil {
                stale = holder
            }
        }
        throw SocketShareError(.holderGone, operation: "duplicate", detail: "the sharer stopped twice in a row")
    }

    /// Waits until the share made with `token` through this sharer ends, and returns how.
    ///
    /// For a share held elsewhere (the broker, another sharer), returns ``ShareOutcome/holderStopped`` at once.
    public func outcome(of token: ShareToken) async -> ShareOutcome {
        guard let holder = holder(of: token) else { return .holderStopped }
        return await holder.outcome(of: token.shareID)
    }

    /// Revokes a share made through this sharer: its held duplicate is closed and later claims are refused.
    ///
    /// - Returns: false when the share had already ended (or is held elsewhere).
    @discardableResult
    public func revoke(_ token: ShareToken) -> Bool {
        holder(of: token)?.revoke(token.shareID) ?? false
    }

    /// The number of shares held now.
    public var heldShareCount: Int { state.withLock { $0.holder?.heldCount ?? 0 } }

    /// Stops now: unclaimed shares end with ``ShareOutcome/holderStopped``, their duplicates are
    /// closed and the rendezvous socket is removed. Returns when that is done. A later share starts
    /// the sharer again (unless `run()` has ended).
    public func stop() {
        let holder = state.withLock { state in
            defer { state.holder = nil }
            return state.holder
        }
        holder?.stop()
    }

    /// Keeps the sharer's lifetime that of the service: returns on graceful shutdown or
    /// cancellation, having stopped the sharer (every unclaimed share ends); later shares are
    /// refused with `holderGone`.
    public func run() async throws {
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await finished.wait()
            } onGracefulShutdown: { [finished] in
                finished.signal()
            }
        } onCancel: { [finished] in
            finished.signal()
        }
        state.withLock { $0.closed = true }
        stop()
    }

    private func holder(of token: ShareToken) -> EscrowHolder? {
        state.withLock { state in
            guard let holder = state.holder, holder.configuration.endpoint == token.endpoint else { return nil }
            return holder
        }
    }

    /// The holder serving now, started if there is none (or only `stale`, which refused a share).
    /// The directory is prepared and the socket bound outside the lock; should two threads race,
    /// the loser's holder is stopped.
    private func runningHolder(replacing stale: EscrowHolder?) throws(SocketShareError) -> EscrowHolder {
        let current = try state.withLock { state throws(SocketShareError) -> EscrowHolder? in
            guard !state.closed else {
                throw SocketShareError(.holderGone, operation: "duplicate", detail: "the sharer has stopped (its service ended)")
            }
            guard let holder = state.holder, holder !== stale, !holder.isStopping else { return nil }
            return holder
        }
        if let current { return current }
        let directory: RuntimeDirectory
        if let path = configuration.directory {
            directory = try RuntimeDirectory(preparing: path)
        } else {
            directory = try RuntimeDirectory.standard()
        }
        Self.removeStaleSockets(in: directory)
        let name = "sharer-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16)).sock"
        var settings = EscrowHolder.Configuration(
            endpoint: directory.appending(name), mechanism: .sharer, lingerWhenIdle: configuration.lingerWhenIdle,
            logger: logger)
        settings.limits.maximumShares = configuration.maximumShares
        let fresh = try EscrowHolder(configuration: settings)
        do throws(SocketShareError) {
            try fresh.start()
        } catch {
            fresh.stop()
            throw error
        }
        let (winner, replaced) = state.withLock { state -> (EscrowHolder, EscrowHolder?) in
            if let holder = state.holder, holder !== stale, !holder.isStopping { return (holder, nil) }
            defer { state.holder = fresh }
            return (fresh, state.holder)
        }
        if winner !== fresh { fresh.stop() }
        // A holder that stopped itself has nothing left to end; this joins its thread.
        if let replaced, replaced.isStopping { replaced.stop() }
        return winner
    }

    /// Removes rendezvous sockets left by sharers whose processes died without cleaning up.
    private static func removeStaleSockets(in directory: RuntimeDirectory) {
        for name in Kernel.directoryEntries(directory.path) where name.hasPrefix("sharer-") && name.hasSuffix(".sock") {
            let parts = name.split(separator: "-")
            guard parts.count == 3, let pid = pid_t(parts[1]), pid > 0, !Kernel.processExists(pid) else { continue }
            Kernel.unlink(directory.appending(name))
        }
    }

    /// Under Yama ptrace scope 1, names `target` as allowed to ptrace (and so `pidfd_getfd` from) us.
    /// `PR_SET_PTRACER` holds one pid per process: the latest pidfd share's target wins.
    private static func allowPull(by target: pid_t) throws(SocketShareError) {
        guard let scope = try? Kernel.readFile("/proc/sys/kernel/yama/ptrace_scope"),
              String(decoding: scope, as: UTF8.self).trimmingSpaces == "1" else { return }
        _ = try Kernel.retrying("prctl(PR_SET_PTRACER)") { cs_set_ptracer(target) }
    }
}

import CSocketShare
