import Glibc
import NIOCore
import NIOPosix
import SocketShare

/// Accepts on a listening socket that other processes accept on too, and hands each connection to
/// SwiftNIO as a channel.
///
/// When several processes wait on one listener, the kernel may wake more than one for a single
/// connection; all but one then find nothing to accept. SwiftNIO's own server channel treats that as
/// impossible — debug builds assert (`readResult == .some` in `BaseSocketChannel.readable0`,
/// swift-nio#3500) — and it sets `O_NONBLOCK` on the socket, for every holder. This acceptor does
/// neither: a dedicated thread calls `accept4(2)`, which wakes one waiter per connection, and
/// registers each accepted socket with `ClientBootstrap.withConnectedSocket`.
///
/// Use it for listeners of `sockshare serve --mode shared` (or any socket-activated listener shared
/// by several workers); ``ServerBootstrap/bind(adopting:backlog:childChannelInitializer:)`` suits a
/// listener this process accepts on alone.
public final class SharedListenerAcceptor: Sendable {
    private let listener: SocketDescriptor
    private let makeBootstrap: @Sendable () -> ClientBootstrap

    /// Prepares to accept on `listener`, initialising each connection with the channel initializer
    /// of the bootstrap `makeBootstrap` returns (called once, on the accepting thread). The acceptor
    /// owns `listener`.
    public init(listener: SocketDescriptor, bootstrap makeBootstrap: @escaping @Sendable () -> ClientBootstrap) {
        self.listener = listener
        self.makeBootstrap = makeBootstrap
    }

    /// Accepts on the calling thread until the listener fails; each connection becomes a channel.
    ///
    /// A failed registration closes that connection; `EMFILE`/`ENFILE` pause briefly instead of
    /// spinning.
    public func run() {
        let bootstrap = makeBootstrap()
        while true {
            do throws(SocketShareError) {
                guard let connection = try listener.accept() else {
                    // The socket is non-blocking (another holder set O_NONBLOCK): wait for the next one.
                    _ = try listener.waitUntilReadable(deadline: nil)
                    continue
                }
                bootstrap.withConnectedSocket(connection.release()).whenFailure { _ in }
            } catch {
                switch error.errno?.rawValue {
                case EPROTO?, EPERM?: continue
                case EMFILE?, ENFILE?, ENOBUFS?, ENOMEM?: usleep(10_000)
                default: return
                }
            }
        }
    }
}
