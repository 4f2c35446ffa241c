import NIOCore
import SocketShareCore

/// The name of the listener a connection came from — `--listen NAME=ADDR` of `sockshare serve`,
/// systemd's `FileDescriptorName=` (`LISTEN_FDNAMES`) — at the front of the connection's pipeline
/// when ``ConnectionServer/Configuration/namesListeners`` is set. It passes everything through.
///
/// ```swift
/// let name = try channel.pipeline.syncOperations.handler(type: ListenerName.self).name
/// ```
public final class ListenerName: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    /// What it passes through, untouched.
    public typealias InboundIn = NIOAny
    /// The listener's name.
    public let name: String

    /// A handler naming `name`.
    public init(_ name: String) {
        self.name = name
    }
}
