import Glibc
import Logging
import SocketShare
import SocketShareCore

/// External workers (`sockshare serve --worker-socket PATH`): processes serve did not start — in
/// other containers, under other supervisors — that connect to a socket of serve's, are checked by
/// the kernel's word (`SO_PEERCRED` uid and gid), and then take handed-off connections over that
/// connection exactly as spawned workers do over theirs: acknowledgement, re-dispatch when one goes
/// away or stalls, readiness (none is sent connections before it says `ready`), drain on stop.
///
/// An admitted worker is still not trusted with clients until it proves itself: it is sent one
/// connection, and only while no other new worker of its uid has one, until it acknowledges it; a
/// worker that leaves a connection unacknowledged gets no more, and is disconnected at the stall
/// timeout, its connections going to proven workers only (`WorkerPool`). So workers that never
/// acknowledge hold at most one client of serve's per uid at a time, for one stall timeout. One
/// uid may connect at most ``ExternalWorkers/maximumPerUser`` workers.
///
/// Serve does not start, restart or reload them: a reload leaves them serving, and one that goes
/// away is simply gone (what it had not acknowledged goes to the others). In the dispatcher they are
/// workers of `WorkerPool.externalGeneration` with negative ids (they may have no pid serve can
/// see). Everything here runs on the supervisor's reactor thread.
extension Supervisor {
    /// Where external workers connect, and who may.
    public struct ExternalWorkers: Sendable, Codable, Hashable {
        /// The worker socket's path. Its directory is made private (0700), or enterable by `gid`
        /// only (0710) when a group is given; the socket is then 0660 for that group.
        public var path: String
        /// The uid a worker must run as (`SO_PEERCRED`); nil for serve's own.
        public var uid: uid_t?
        /// The primary gid a worker must run as; nil for any. Also the group the socket is opened to.
        public var gid: gid_t?
        /// The most external workers connected at once for one uid; more are refused.
        public var maximumPerUser: Int

        /// Workers connecting at `path`, as `uid` (default: serve's own) and `gid` (default: any), at
        /// most `maximumPerUser` at once per uid.
        public init(path: String, uid: uid_t? = nil, gid: gid_t? = nil, maximumPerUser: Int = 64) {
            self.path = path
            self.uid = uid
            self.gid = gid
            self.maximumPerUser = maximumPerUser
        }
    }

    /// An external worker, as the supervisor keeps it.
    package struct ExternalWorker {
        /// Its pid as serve sees it (0 when it is in a pid namespace serve cannot see).
        package var pid: pid_t
        package var uid: uid_t
        package var gid: gid_t
        package var connected: ContinuousClock.Instant
    }

    /// Prepares the worker socket's directory and binds the socket (nonblocking, close-on-exec).
    static func bindWorkerSocket(_ external: ExternalWorkers) throws(SocketShareError) -> SocketDescriptor {
        let path = external.path
        guard path.hasPrefix("/"), let slash = path.lastIndex(of: "/") else {
            throw SocketShareError(.invalidArgument, operation: "serve", detail: "worker socket \(path): not an absolute path")
        }
        if let uid = external.uid, uid != geteuid(), external.gid == nil {
            throw SocketShareError(
                .invalidArgument, operation: "serve",
                detail: "workers of uid \(uid) cannot enter a directory private to uid \(geteuid()): give their group too")
        }
        _ = try RuntimeDirectory(preparing: slash == path.startIndex ? "/" : String(path[..<slash]), group: external.gid)
        if let existing = try Kernel.linkStatus(path) {
            guard existing.st_mode & S_IFMT == S_IFSOCK else {
                throw SocketShareError(.invalidArgument, operation: "serve", detail: "worker socket \(path): something other than a socket is there")
            }
            if let probe = try? DescriptorChannel.connect(to: path) {
                try? probe.close()
                throw SocketShareError(.invalidArgument, operation: "serve", detail: "worker socket \(path): another serve answers there")
            }
            Kernel.unlink(path)
        }
        let socket = try SocketDescriptor.listening(on: .unix(path: path), kind: .seqpacket, backlog: 128)
        do throws(SocketShareError) {
            try socket.setNonBlocking(true)
            if let gid = external.gid {
                try Kernel.setSocketFile(path, user: geteuid(), group: gid, mode: 0o660)
            }
        } catch {
            try? socket.close()
            Kernel.unlink(path)
            throw error
        }
        return socket
    }

    /// Watches the worker socket (from the first round on the reactor).
    func watchWorkerSocket() {
        guard let workerSocket, workerSocketWatch == nil else { return }
        workerSocketWatch = try? reactor.watch(workerSocket.rawValue) { [unowned self] _ in acceptExternalWorkers() }
    }

    /// Takes the workers that connected: the admitted ones go to the dispatcher, which sends them
    /// connections once they say they are ready; the others are closed, and logged.
    func acceptExternalWorkers() {
        guard let workerSocket, let dispatcher, let external = configuration.externalWorkers else { return }
        // Forget the workers the dispatcher has dropped, so that they no longer count against their uid.
        _ = externalWorkerStatus(dispatcher.statistics)
        for _ in 0..<64 {
            guard let accepted = (try? workerSocket.accept()) ?? nil else { return }
            guard let peer = try? PeerProcess(of: accepted.rawValue) else {
                try? accepted.close()
                continue
            }
            let uid = external.uid ?? geteuid()
            let connected = externalWorkers.values.filter { $0.uid == peer.uid }.count
            let refusal = !(peer.uid == uid && external.gid.map({ peer.gid == $0 }) ?? true)
                ? "admits uid \(uid)\(external.gid.map { " gid \($0)" } ?? "") only"
                : connected >= external.maximumPerUser ? "its uid has \(external.maximumPerUser) workers connected, the most" : nil
            if let refusal {
                if let skipped = externalRefusalLog.admit(peer.uid, at: .now) {
                    logger.warning("refused an external worker", metadata: [
                        "pid": "\(peer.pid)", "uid": "\(peer.uid)", "gid": "\(peer.gid)", "why": "\(refusal)",
                        "refusedSinceLastLine": "\(skipped)",
                    ])
                }
                externalRefusals += 1
                try? accepted.close()
                continue
            }
            let id = nextExternalID
            nextExternalID -= 1
            externalWorkers[id] = ExternalWorker(pid: peer.pid, uid: peer.uid, gid: peer.gid, connected: .now)
            dispatcher.addWorker(
                DescriptorChannel(accepted), pid: id, generation: WorkerPool<Dispatcher.Pending>.externalGeneration, accepting: false,
                probationGroup: peer.uid)
            logger.info("external worker connected", metadata: ["worker": "\(-id)", "pid": "\(peer.pid)", "uid": "\(peer.uid)"])
        }
    }

    /// The external workers for `status`, from the dispatcher's view (those it dropped are forgotten).
    func externalWorkerStatus(_ statistics: Dispatcher.Statistics?) -> [ServeStatus.ExternalWorker] {
        let present = (statistics?.workers ?? []).filter { $0.generation == WorkerPool<Dispatcher.Pending>.externalGeneration }
        let known = Set(present.map(\.pid))
        for id in externalWorkers.keys where !known.contains(id) { externalWorkers.removeValue(forKey: id) }
        let now = ContinuousClock.now
        return present.sorted { $0.pid > $1.pid }.compactMap { seen in
            externalWorkers[seen.pid].map { worker in
                ServeStatus.ExternalWorker(
                    id: Int(-seen.pid), pid: worker.pid, uid: worker.uid, handled: seen.handled, inFlight: seen.inFlight,
                    unacknowledged: seen.unacknowledged, ready: seen.isReady,
                    connectedSeconds: Int((now - worker.connected).components.seconds))
            }
        }
    }

    /// Closes the worker socket and removes its path (when serve stops).
    func closeWorkerSocket() {
        if let workerSocketWatch { reactor.unwatch(workerSocketWatch) }
        workerSocketWatch = nil
        guard let workerSocket, let path = configuration.externalWorkers?.path else { return }
        try? workerSocket.close()
        Kernel.unlink(path)
    }
}
