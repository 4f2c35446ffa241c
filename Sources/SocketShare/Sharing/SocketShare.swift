import Glibc

/// Share live sockets between processes, the way Windows' `WSADuplicateSocket` does.
///
/// A source *duplicates* a socket for a target process and gets a ``ShareToken`` (Winsock's
/// `WSAPROTOCOL_INFO`). It passes the token to the target over any IPC. The target *adopts* it and
/// gets its own descriptor of the same underlying socket (Winsock's `WSASocket(FROM_PROTOCOL_INFO)`).
///
/// ```swift
/// // Source
/// let token = try SocketShare.duplicate(listener, for: workerPID)
/// try pipe.write(token.text + "\n")
/// try listener.close()               // DuplicateAndClose: the share stays claimable
///
/// // Target (the process whose pid is workerPID)
/// let listener = try SocketShare.adopt(try ShareToken(text: line))
/// ```
///
/// Both descriptors refer to one socket: options set through one are seen through the other,
/// `O_NONBLOCK` is common to both, and the socket closes when its last descriptor closes.
public enum SocketShare {
    /// The process's sharer, started on first use and stopped once idle.
    private static let sharer = Locked<EscrowHolder?>(nil)

    /// How long an idle sharer waits for new shares before it removes its socket and stops.
    static let sharerLinger: Duration = .seconds(5)

    /// Duplicates `descriptor` for the process `target` and returns the token that redeems it.
    ///
    /// The caller still owns `descriptor` and may close it as soon as this returns: the holder keeps
    /// its own duplicate until the target claims it, the share expires, the target exits, or it is
    /// revoked (`.NET`'s `DuplicateAndClose`). With the sharer or pidfd, that holder is this process,
    /// so the share lives only as long as this process does; the broker lets the source exit.
    ///
    /// - Parameters:
    ///   - descriptor: An open socket of family inet, inet6 or unix, type stream, dgram or seqpacket.
    ///   - target: The pid of the only process that may adopt the share. It must be running.
    ///   - options: Who holds the share, and for how long.
    /// - Throws: ``SocketShareError``: `invalidArgument` when the descriptor is not such a socket or
    ///   the target does not exist; `permissionDenied` when the runtime directory is unsafe.
    public static func duplicate(
        _ descriptor: CInt, for target: pid_t, options: ShareOptions = ShareOptions()
    ) throws(SocketShareError) -> ShareToken {
        try duplicate(descriptor, to: try ShareTarget.resolve(pid: target), options: options)
    }

    /// Duplicates the socket behind `descriptor`; see ``duplicate(_:for:options:)-(CInt,pid_t,_)``.
    public static func duplicate(
        _ descriptor: SocketDescriptor, for target: pid_t, options: ShareOptions = ShareOptions()
    ) throws(SocketShareError) -> ShareToken {
        try duplicate(descriptor.rawValue, for: target, options: options)
    }

    /// Duplicates for an exact process: `target`'s pid must still belong to the process that
    /// started at `target.startTime`.
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` when that process has exited
    ///   (its pid may now name another process).
    public static func duplicate(
        _ descriptor: CInt, for target: ProcessIdentity, options: ShareOptions = ShareOptions()
    ) throws(SocketShareError) -> ShareToken {
        try duplicate(descriptor, to: try ShareTarget.resolve(pid: target.pid, expected: target), options: options)
    }

    /// The common path, for a target resolved while it runs.
    static func duplicate(_ descriptor: CInt, to target: ShareTarget, options: ShareOptions) throws(SocketShareError) -> ShareToken {
        guard options.timeToLive > .zero else {
            throw SocketShareError(.invalidArgument, operation: "duplicate", detail: "time to live must be positive")
        }
        guard Kernel.descriptorFlags(descriptor) != nil else {
            throw SocketShareError(.invalidArgument, operation: "duplicate", detail: "descriptor \(descriptor) is not open")
        }
        let description = try SocketDescription(of: descriptor)
        if options.via == .broker || options.via == .auto {
            let client = BrokerClient()
            do throws(SocketShareError) {
                return try client.deposit(descriptor, for: target.identity, timeToLive: options.timeToLive)
            } catch where options.via == .auto && error.code == .holderGone {
                // No broker answers: the sharer holds the share instead.
            }
        }
        if options.via == .pidfd { try allowPull(by: target.identity.pid) }
        let mechanism: ShareMechanism = options.via == .pidfd ? .pidfd : .sharer
        // A sharer that is stopping refuses deposits; start a fresh one and try once more.
        for attempt in 0..<2 {
            let holder = try runningSharer(replacing: attempt > 0)
            let held = try Kernel.duplicate(descriptor)
            do throws(SocketShareError) {
                return try holder.deposit(
                    SocketDescriptor(taking: held), description: description, target: target, mechanism: mechanism,
                    timeToLive: options.timeToLive, depositor: .current, depositorUID: geteuid())
            } catch where error.code == .holderGone && attempt == 0 {
                continue
            }
        }
        throw SocketShareError(.holderGone, operation: "duplicate", detail: "the sharer stopped twice in a row")
    }

    /// Adopts a share: returns this process's own descriptor of the shared socket (close-on-exec).
    ///
    /// The descriptor is checked before it is returned: it must be a socket with the token's inode,
    /// family and type. It shares everything with the source's descriptor, `O_NONBLOCK` included.
    ///
    /// - Throws: ``SocketShareError``: `expired`, `refused` (this process is not the target),
    ///   `alreadyClaimed`, `revoked`, `notFound`, `holderGone` (the holder exited), `permissionDenied`
    ///   (pidfd without ptrace rights), `verificationFailed`, `timedOut`, `limitReached` (this process
    ///   has no descriptor to spare; the share stays claimable).
    public static func adopt(_ token: ShareToken, timeout: Duration = .seconds(10)) throws(SocketShareError) -> SocketDescriptor {
        if token.isExpired {
            let ago = (ShareTime.nowMilliseconds - token.expiresAtMilliseconds) / 1000
            throw SocketShareError(.expired, operation: "adopt", detail: "the token expired \(ago) s ago")
        }
        do throws(SocketShareError) {
            switch token.redemption {
            case .escrow(let secret):
                return try ShareClaim.claim(token, secret: secret, deadline: .now + timeout)
            case .pidfd(let descriptor):
                return try ShareClaim.pull(token, descriptor: descriptor, deadline: .now + timeout)
            }
        } catch where error.code == .limitReached && (error.errno.map { [EMFILE, ENFILE].contains($0.rawValue) } == true
                                                       || error.detail.contains("MSG_CTRUNC")) {
            // Out of descriptors here: nothing was handed over for good, so the share is still there.
            var limit = rlimit()
            getrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit)
            throw SocketShareError(
                .limitReached, operation: "adopt", errno: error.errno,
                detail: "this process is at its descriptor limit (RLIMIT_NOFILE \(limit.rlim_cur)); close a descriptor "
                    + "and adopt again: the share stays claimable until it expires (\(error.detail))")
        }
    }

    /// Waits until the share made with `token` by this process ends, and returns how.
    ///
    /// For a share held by another process (the broker), returns ``ShareOutcome/holderStopped`` at once.
    public static func outcome(of token: ShareToken) async -> ShareOutcome {
        guard let holder = sharer.withLock({ $0 }), holder.configuration.endpoint == token.endpoint else {
            return .holderStopped
        }
        return await holder.outcome(of: token.shareID)
    }

    /// Revokes a share this process made: its held duplicate is closed and later claims are refused.
    ///
    /// - Returns: false when the share had already ended (or is held by another process).
    @discardableResult
    public static func revoke(_ token: ShareToken) -> Bool {
        guard let holder = sharer.withLock({ $0 }), holder.configuration.endpoint == token.endpoint else { return false }
        return holder.revoke(token.shareID)
    }

    /// Stops this process's sharer now: unclaimed shares end with ``ShareOutcome/holderStopped``,
    /// their duplicates are closed and the rendezvous socket is removed. Returns when that is done.
    public static func stopSharing() {
        guard let holder = sharer.withLock({ $0 }) else { return }
        holder.stop()
        while !holder.hasStopped {
            var pause = timespec(tv_sec: 0, tv_nsec: 1_000_000)
            nanosleep(&pause, nil)
        }
    }

    /// The number of shares this process's sharer holds now.
    public static var heldShareCount: Int { sharer.withLock { $0?.heldCount ?? 0 } }

    private static func runningSharer(replacing: Bool) throws(SocketShareError) -> EscrowHolder {
        let result: Result<EscrowHolder, SocketShareError> = sharer.withLock { current in
            if let holder = current, !holder.isStopping, !replacing { return .success(holder) }
            do throws(SocketShareError) {
                let directory = try RuntimeDirectory.standard()
                sweepStaleSharers(in: directory)
                let name = "sharer-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16)).sock"
                let holder = try EscrowHolder(configuration: .init(
                    endpoint: directory.appending(name), mechanism: .sharer, lingerWhenIdle: sharerLinger))
                try holder.start()
                current = holder
                return .success(holder)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Removes rendezvous sockets left by sharers whose processes died without cleaning up.
    private static func sweepStaleSharers(in directory: RuntimeDirectory) {
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
