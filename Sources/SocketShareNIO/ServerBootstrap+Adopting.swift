import Glibc
import NIOCore
import NIOPosix
import SocketShare

extension ServerBootstrap {
    /// Serves on a listening socket this process adopted — from `LISTEN_FDS`, a share, or
    /// `sockshare serve --mode shared` — keeping the socket's listen backlog.
    ///
    /// SwiftNIO's `bind(_:)` re-`listen`s an adopted socket with a backlog of 128, and the backlog
    /// belongs to the socket, so every holder would get the smaller queue. This restores it: to
    /// `backlog` when given, else to what the kernel reports the socket had (`TCP_INFO`, for TCP
    /// listeners), else to `SOMAXCONN`.
    ///
    /// SwiftNIO also sets `O_NONBLOCK`, which every holder of the socket shares: fine for event-loop
    /// servers; a worker that `accept`s in blocking mode on the same listener would see `EAGAIN`.
    ///
    /// - Parameters:
    ///   - listener: Ownership passes to SwiftNIO, which closes it with the server channel.
    ///   - backlog: The listen backlog to keep; nil keeps the socket's own.
    ///   - childChannelInitializer: Sets up each accepted connection's channel.
    @available(macOS 10.15, *)
    public func bind<Output: Sendable>(
        adopting listener: SocketDescriptor, backlog: Int32? = nil,
        childChannelInitializer: @escaping @Sendable (Channel) -> EventLoopFuture<Output>
    ) async throws -> NIOAsyncChannel<Output, Never> {
        let wanted = backlog ?? ListenBacklog.current(of: listener.rawValue) ?? ListenBacklog.systemMaximum
        let fd = listener.release()
        let channel = try await self.bind(fd, childChannelInitializer: childChannelInitializer)
        try ListenBacklog.restore(fd, to: wanted)
        return channel
    }

    /// The `EventLoopFuture` form of ``bind(adopting:backlog:childChannelInitializer:)``.
    public func withBoundSocket(adopting listener: SocketDescriptor, backlog: Int32? = nil) -> EventLoopFuture<Channel> {
        let wanted = backlog ?? ListenBacklog.current(of: listener.rawValue) ?? ListenBacklog.systemMaximum
        let fd = listener.release()
        return self.withBoundSocket(fd).flatMapThrowing { channel in
            try ListenBacklog.restore(fd, to: wanted)
            return channel
        }
    }
}

extension ClientBootstrap {
    /// Registers a connection a worker received (`AdoptedConnection`) as a SwiftNIO channel, using
    /// this bootstrap's channel initializer. Ownership of the descriptor passes to SwiftNIO;
    /// `AdoptedConnection.finished()` is called when the channel closes (or registration fails).
    public func withConnectedSocket(adopting connection: AdoptedConnection) -> EventLoopFuture<Channel> {
        let future = self.withConnectedSocket(connection.descriptor.release())
        future.whenComplete { result in
            switch result {
            case .success(let channel): channel.closeFuture.whenComplete { _ in connection.finished() }
            case .failure: connection.finished()
            }
        }
        return future
    }

    /// Turns a connection a worker received (`AdoptedConnection`) into a SwiftNIO channel.
    /// Ownership of the descriptor passes to SwiftNIO; `AdoptedConnection.finished()` is called
    /// when the channel closes.
    @available(macOS 10.15, *)
    public func withConnectedSocket<Output: Sendable>(
        adopting connection: AdoptedConnection,
        channelInitializer: @escaping @Sendable (Channel) -> EventLoopFuture<Output>
    ) async throws -> Output {
        let fd = connection.descriptor.release()
        do {
            return try await self.withConnectedSocket(fd) { channel in
                channel.closeFuture.whenComplete { _ in connection.finished() }
                return channelInitializer(channel)
            }
        } catch {
            connection.finished()
            throw error
        }
    }
}

/// A listening socket's backlog, read from the kernel and set again.
public enum ListenBacklog {
    /// `/proc/sys/net/core/somaxconn`, or 4096 (its default since Linux 5.4).
    public static var systemMaximum: Int32 {
        let text = (try? String(decoding: readAll("/proc/sys/net/core/somaxconn"), as: UTF8.self)) ?? ""
        return Int32(text.filter(\.isNumber)) ?? 4096
    }

    /// The backlog a TCP listener has now (`TCP_INFO`'s `tcpi_sacked` holds `sk_max_ack_backlog`
    /// for a listening socket); nil for other sockets.
    public static func current(of fd: CInt) -> Int32? {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(fd, CInt(IPPROTO_TCP), TCP_INFO, &info, &length) == 0, info.tcpi_state == 10 /* TCP_LISTEN */ else {
            return nil
        }
        return Int32(clamping: info.tcpi_sacked)
    }

    /// Calls `listen(2)` again, which on Linux changes the backlog of a listening socket.
    public static func restore(_ fd: CInt, to backlog: Int32) throws {
        guard listen(fd, backlog) == 0 else {
            throw SocketShareError(.system, operation: "listen", errno: .init(rawValue: errno), detail: "restoring backlog \(backlog)")
        }
    }

    private static func readAll(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = read(fd, &buffer, buffer.count)
        return count > 0 ? Array(buffer[0..<count]) : []
    }
}
