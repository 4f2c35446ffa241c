import Glibc
import Synchronization

/// The connections a dispatcher hands to this worker process: an `AsyncSequence`, or a callback.
///
/// Each batch is acknowledged the moment it arrives, so the dispatcher can close its copies; until
/// then it would give them to another worker if this one died. Delivery ends when the dispatcher
/// asks the worker to stop (finish what you have, then exit) or goes away.
///
/// ```swift
/// guard let connections = try WorkerConnections.fromEnvironment() else { /* not under sockshare serve */ }
/// try connections.ready()
/// for await connection in connections {
///     serve(connection.descriptor)        // then close it
///     connection.finished()
/// }
/// ```
///
/// ``serve(_:)`` delivers on the receiving thread instead, without the hop through the sequence —
/// the faster choice for a server that only registers each connection with its event loop.
///
/// The worker tells the dispatcher how many connections it holds (received and not marked
/// ``AdoptedConnection/finished()``): with every acknowledgement, and otherwise at most every 2 ms.
/// The dispatcher uses it for least-loaded dispatch and to stop sending to a full worker.
public final class WorkerConnections: AsyncSequence, Sendable {
    /// The sequence's elements.
    public typealias Element = AdoptedConnection
    /// The environment variable that names the worker's end of the channel.
    public static let environmentVariable = "SOCKSHARE_WORKER_FD"
    /// How long a changed load may wait before it is reported.
    static let loadReportInterval: Duration = .milliseconds(2)

    private let channel: DescriptorChannel
    private let admit: @Sendable (ConnectionInfo) -> Bool
    private let state = State()
    private let stream: AsyncStream<AdoptedConnection>
    private let continuation: AsyncStream<AdoptedConnection>.Continuation

    private final class State: Sendable {
        let active = Atomic<Int>(0)
        let received = Atomic<Int>(0)
        let started = Atomic<Bool>(false)
        /// The load last sent, and when (nanoseconds of `CLOCK_MONOTONIC`).
        let reportedLoad = Atomic<Int>(-1)
        let reportedAt = Atomic<Int>(0)
        let ended = Locked<(done: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))
    }

    /// The channel named by `$SOCKSHARE_WORKER_FD`, or nil when the variable is not set (the process
    /// was not started by `sockshare serve --mode handoff`).
    ///
    /// The descriptor is made close-on-exec, so programs this worker starts do not inherit it.
    /// - Throws: ``SocketShareError`` with code `invalidArgument` when the variable does not name an
    ///   open `SOCK_SEQPACKET` Unix socket.
    public static func fromEnvironment(
        admitting admit: @escaping @Sendable (ConnectionInfo) -> Bool = { _ in true }
    ) throws(SocketShareError) -> WorkerConnections? {
        guard let text = RuntimeDirectory.environment(environmentVariable) else { return nil }
        guard let fd = CInt(text), fd >= 0, Kernel.descriptorFlags(fd) != nil else {
            throw SocketShareError(
                .invalidArgument, operation: "worker", detail: "\(environmentVariable)=\(text) is not an open descriptor")
        }
        let family = try? Kernel.socketOption(fd, SOL_SOCKET, SO_DOMAIN)
        let type = try? Kernel.socketOption(fd, SOL_SOCKET, SO_TYPE)
        guard family == AF_UNIX, type == Kernel.seqpacketType else {
            throw SocketShareError(
                .invalidArgument, operation: "worker",
                detail: "\(environmentVariable)=\(text) is not a SOCK_SEQPACKET Unix socket")
        }
        try Kernel.setCloseOnExec(fd, true)
        return WorkerConnections(channel: DescriptorChannel(SocketDescriptor(taking: fd)), admitting: admit)
    }

    /// Receives on `channel`, the worker's end of the dispatcher's channel.
    ///
    /// - Parameters:
    ///   - channel: The worker's end of the channel, which this object now owns.
    ///   - admit: Decides, before the worker touches a connection, whether to take it; refused ones
    ///     are closed here and the dispatcher gives them to another worker.
    public init(channel: DescriptorChannel, admitting admit: @escaping @Sendable (ConnectionInfo) -> Bool = { _ in true }) {
        self.channel = channel
        self.admit = admit
        (stream, continuation) = AsyncStream.makeStream(of: AdoptedConnection.self)
    }

    /// Tells the dispatcher this worker is ready to serve (a reload waits for it).
    public func ready() throws(SocketShareError) {
        try channel.send(WorkerMessage.ready.bytes, deadline: .now + .seconds(5))
    }

    /// How many connections this worker holds and has not marked finished.
    public var activeCount: Int { state.active.load(ordering: .relaxed) }

    /// How many connections this worker has received in all.
    public var receivedCount: Int { state.received.load(ordering: .relaxed) }

    /// An iterator over the connections (receiving starts with the first iterator).
    public func makeAsyncIterator() -> AsyncStream<AdoptedConnection>.Iterator {
        let continuation = self.continuation
        try? start { continuation.yield($0) }
        return stream.makeAsyncIterator()
    }

    /// Delivers each connection to `handler` on the receiving thread, from now on; returns at once.
    /// Use either this or the sequence, not both.
    public func serve(_ handler: @escaping @Sendable (AdoptedConnection) -> Void) throws(SocketShareError) {
        try start(handler)
    }

    /// Returns once delivery has ended: the dispatcher asked this worker to stop, or went away.
    public func waitUntilStopped() async {
        await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
            let done = state.ended.withLock { ended in
                if !ended.done { ended.waiters.append(waiter) }
                return ended.done
            }
            if done { waiter.resume() }
        }
    }

    private func start(_ deliver: @escaping @Sendable (AdoptedConnection) -> Void) throws(SocketShareError) {
        guard !state.started.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try DetachedThread.start { [self] in
            receive(deliver)
            continuation.finish()
            let waiters = state.ended.withLock { ended in
                ended.done = true
                return ended.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }

    private func receive(_ deliver: @Sendable (AdoptedConnection) -> Void) {
        while true {
            let message: ChannelMessage?
            do throws(SocketShareError) {
                let pending = state.reportedLoad.load(ordering: .relaxed) != state.active.load(ordering: .relaxed)
                message = try channel.receive(
                    maximumBytes: WorkerMessage.maximumLength, deadline: pending ? .now + Self.loadReportInterval : nil)
            } catch {
                guard error.code == .timedOut else { return }
                reportLoad(force: true)
                continue
            }
            guard let message, let decoded = try? WorkerMessage(bytes: message.bytes) else {
                message?.closeDescriptors()
                return
            }
            switch decoded {
            case .connections(let handed) where handed.count == message.descriptorCount:
                take(handed, message.takeDescriptors(), deliver)
            case .stop:
                message.closeDescriptors()
                return
            default:
                message.closeDescriptors()
            }
        }
    }

    private func take(_ handed: [HandedConnection], _ descriptors: [SocketDescriptor], _ deliver: @Sendable (AdoptedConnection) -> Void) {
        var taken: [AdoptedConnection] = []
        var refused: [UInt64] = []
        for (info, descriptor) in zip(handed, descriptors) {
            guard admit(ConnectionInfo(id: info.id, listenerName: info.listenerName, peerAddress: info.peerAddress)) else {
                try? descriptor.close()
                refused.append(info.id)
                continue
            }
            taken.append(AdoptedConnection(
                id: info.id, descriptor: descriptor, listenerName: info.listenerName,
                peerAddress: info.peerAddress, localAddress: info.localAddress,
                onFinish: { [self] in
                    state.active.subtract(1, ordering: .relaxed)
                    reportLoad(force: false)
                }))
        }
        FaultPoint.reached("worker.beforeAcknowledge")
        let now = state.active.add(taken.count, ordering: .relaxed).newValue
        state.received.add(taken.count, ordering: .relaxed)
        if !refused.isEmpty { try? channel.send(WorkerMessage.refused(refused).bytes, deadline: .now + .seconds(5)) }
        if !taken.isEmpty {
            try? channel.send(WorkerMessage.accepted(taken.map(\.id), active: UInt32(clamping: now)).bytes, deadline: .now + .seconds(5))
            noteReported(now)
        }
        for connection in taken { deliver(connection) }
    }

    /// Sends the load when it changed and the last report is old enough (or `force`); a change
    /// left unsent is sent by the receiving thread within ``loadReportInterval``.
    private func reportLoad(force: Bool) {
        let load = state.active.load(ordering: .relaxed)
        guard load != state.reportedLoad.load(ordering: .relaxed) else { return }
        let now = Self.monotonicNanoseconds
        guard force || now - state.reportedAt.load(ordering: .relaxed) >= 2_000_000 else { return }
        if (try? channel.send(WorkerMessage.load(active: UInt32(clamping: load)).bytes, deadline: .now)) != nil {
            noteReported(load)
        }
    }

    private func noteReported(_ load: Int) {
        state.reportedLoad.store(load, ordering: .relaxed)
        state.reportedAt.store(Self.monotonicNanoseconds, ordering: .relaxed)
    }

    private static var monotonicNanoseconds: Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return now.tv_sec * 1_000_000_000 + now.tv_nsec
    }
}
