import Synchronization

/// A connection a worker received from the dispatcher: its own descriptor of the accepted socket,
/// already acknowledged, with where it came from.
///
/// Call ``finished()`` once you are done with it (after closing the descriptor, or once the library
/// you handed it to has closed it), so the load the worker reports stays true.
public final class AdoptedConnection: Sendable {
    /// The dispatcher's id for this connection.
    public let id: UInt64
    /// The connected socket (close-on-exec); yours to serve and close.
    public let descriptor: SocketDescriptor
    /// The name of the listener that accepted it (`--listen NAME=ADDR`).
    public let listenerName: String
    /// The peer's address as text, as the dispatcher saw it (`127.0.0.1:50312`).
    public let peerAddress: String
    /// The local address as text (`127.0.0.1:8080`).
    public let localAddress: String
    private let done: Atomic<Bool>
    private let onFinish: @Sendable () -> Void

    init(
        id: UInt64, descriptor: SocketDescriptor, listenerName: String, peerAddress: String, localAddress: String,
        onFinish: @escaping @Sendable () -> Void
    ) {
        self.id = id
        self.descriptor = descriptor
        self.listenerName = listenerName
        self.peerAddress = peerAddress
        self.localAddress = localAddress
        self.done = Atomic(false)
        self.onFinish = onFinish
    }

    /// Marks the connection as finished: the worker reports one fewer open connection. Calling it
    /// more than once has no further effect.
    public func finished() {
        if !done.exchange(true, ordering: .acquiringAndReleasing) { onFinish() }
    }
}

/// What a worker knows of a connection before it takes it (for ``WorkerConnections``' admission check).
public struct ConnectionInfo: Sendable, Hashable {
    /// The dispatcher's id for the connection.
    public var id: UInt64
    /// The name of the listener that accepted it.
    public var listenerName: String
    /// The peer's address as text.
    public var peerAddress: String
}
