import Glibc
import Synchronization

/// The connections a dispatcher hands to this worker process, as an `AsyncSequence`.
///
/// Each batch is acknowledged the moment it arrives, so the dispatcher can close its copies; until
/// then it would give them to another worker if this one died. The sequence ends when the
/// dispatcher asks the worker to stop (finish what you have, then exit) or goes away.
///
/// ```swift
/// guard let connections = try WorkerConnections.fromEnvironment() else { /* not under sockshare serve */ }
/// try connections.ready()
/// for await connection in connections {
///     serve(connection.descriptor)        // then close it
///     connection.finished()
/// }
/// ```
public final class WorkerConnections: AsyncSequence, Sendable {
    /// The sequence's elements.
    public typealias Element = AdoptedConnection
    /// The environment variable that names the worker's end of the channel.
    public static let environmentVariable = "SOCKSHARE_WORKER_FD"

    private let channel: DescriptorChannel
    private let stream: AsyncStream<AdoptedConnection>
    private let counters = Counters()

    private final class Counters: Sendable {
        let active = Atomic<Int>(0)
        let received = Atomic<Int>(0)
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
        return try WorkerConnections(channel: DescriptorChannel(SocketDescriptor(taking: fd)), admitting: admit)
    }

    /// Starts receiving on `channel` (a reader thread acknowledges each batch as it arrives).
    ///
    /// - Parameters:
    ///   - admit: Decides, before the worker touches a connection, whether to take it; refused ones
    ///     are closed here and the dispatcher gives them to another worker.
    public init(
        channel: DescriptorChannel, admitting admit: @escaping @Sendable (ConnectionInfo) -> Bool = { _ in true }
    ) throws(SocketShareError) {
        self.channel = channel
        let (stream, continuation) = AsyncStream.makeStream(of: AdoptedConnection.self)
        self.stream = stream
        try DetachedThread.start { [channel, counters] in
            Self.receive(on: channel, counters: counters, admit: admit, into: continuation)
        }
    }

    /// Tells the dispatcher this worker is ready to serve (a reload waits for it).
    public func ready() throws(SocketShareError) {
        try channel.send(WorkerMessage.ready.bytes, deadline: .now + .seconds(5))
    }

    /// How many connections this worker holds and has not marked finished.
    public var activeCount: Int { counters.active.load(ordering: .relaxed) }

    /// How many connections this worker has received in all.
    public var receivedCount: Int { counters.received.load(ordering: .relaxed) }

    /// An iterator over the connections.
    public func makeAsyncIterator() -> AsyncStream<AdoptedConnection>.Iterator {
        stream.makeAsyncIterator()
    }

    private static func receive(
        on channel: DescriptorChannel, counters: Counters,
        admit: @Sendable (ConnectionInfo) -> Bool, into continuation: AsyncStream<AdoptedConnection>.Continuation
    ) {
        defer { continuation.finish() }
        while true {
            guard let message = try? channel.receive(maximumBytes: WorkerMessage.maximumLength) else { return }
            guard let decoded = try? WorkerMessage(bytes: message.bytes) else {
                message.closeDescriptors()
                return
            }
            switch decoded {
            case .connections(let handed) where handed.count == message.descriptors.count:
                var taken: [AdoptedConnection] = []
                var refused: [UInt64] = []
                for (info, descriptor) in zip(handed, message.descriptors) {
                    guard admit(ConnectionInfo(id: info.id, listenerName: info.listenerName, peerAddress: info.peerAddress)) else {
                        try? descriptor.close()
                        refused.append(info.id)
                        continue
                    }
                    taken.append(AdoptedConnection(
                        id: info.id, descriptor: descriptor, listenerName: info.listenerName,
                        peerAddress: info.peerAddress, localAddress: info.localAddress,
                        onFinish: { [channel] in
                            let now = counters.active.subtract(1, ordering: .relaxed).newValue
                            try? channel.send(WorkerMessage.load(active: UInt32(clamping: now)).bytes, deadline: .now)
                        }))
                }
                let now = counters.active.add(taken.count, ordering: .relaxed).newValue
                counters.received.add(taken.count, ordering: .relaxed)
                if !refused.isEmpty { try? channel.send(WorkerMessage.refused(refused).bytes, deadline: .now + .seconds(5)) }
                if !taken.isEmpty {
                    try? channel.send(
                        WorkerMessage.accepted(taken.map(\.id), active: UInt32(clamping: now)).bytes, deadline: .now + .seconds(5))
                }
                for connection in taken { continuation.yield(connection) }
            case .stop:
                message.closeDescriptors()
                return
            default:
                message.closeDescriptors()
            }
        }
    }
}
