// hello-worker: the example worker. An HTTP/1.1 server on SwiftNIO that answers every request with
// `200 OK` and `hello from <pid>\n`, honouring keep-alive and `Connection: close`.
//
// It finds its sockets the way it was started:
//   - handoff: $SOCKSHARE_WORKER_FD (sockshare serve --mode handoff) — connections arrive one by one;
//   - shared:  LISTEN_FDS/LISTEN_PID (sockshare serve --mode shared, systemd) — it accepts itself;
//   - alone:   hello-worker --bind HOST:PORT [--reuse-port] — binds its own listener.

import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix
import SocketShare
import SocketShareNIO
import Synchronization

/// Whether the worker is draining (then each answer closes its connection).
enum Connections {
    static let draining = Atomic<Bool>(false)
}

/// Answers each request; closes after the response when the request asked for it, or when the
/// worker is draining.
final class HelloHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let body = "hello from \(getpid())\n"

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let request) = unwrapInboundIn(data) else { return }
        let keepAlive = request.isKeepAlive && !Connections.draining.load(ordering: .relaxed)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain")
        headers.add(name: "Content-Length", value: "\(Self.body.utf8.count)")
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let head = HTTPResponseHead(version: request.version, status: .ok, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: Self.body)))), promise: nil)
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

@main
enum HelloWorker {
    static func initialize(_ channel: Channel) -> EventLoopFuture<Void> {
        channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
            channel.pipeline.addHandler(HelloHandler())
        }
    }

    /// Waits (at most `limit`) until the open connections have finished: `open()` counts them,
    /// from the moment they were taken (not only once their channel is active).
    static func drain(limit: Duration, open: () -> Int) async {
        Connections.draining.store(true, ordering: .relaxed)
        let deadline = ContinuousClock.now + limit
        while open() > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    static func main() async throws {
        signal(SIGPIPE, SIG_IGN)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        if let connections = try WorkerConnections.fromEnvironment() {
            try await serveHandedOff(connections, group: group)
        } else {
            let listeners = try SystemdListeners.inherited()
            if !listeners.isEmpty {
                try await serveShared(listeners.map(\.socket), group: group)
            } else {
                try await serveAlone(Array(CommandLine.arguments.dropFirst()), group: group)
            }
        }
        try await group.shutdownGracefully()
    }

    /// Handoff: each connection the dispatcher sends becomes a channel, registered straight from
    /// the receiving thread; when the dispatcher asks us to stop, the open connections finish.
    static func serveHandedOff(_ connections: WorkerConnections, group: EventLoopGroup) async throws {
        try connections.serve { connection in
            ClientBootstrap(group: group).channelInitializer(initialize)
                .withConnectedSocket(adopting: connection).whenFailure { _ in }
        }
        try connections.ready()
        await connections.waitUntilStopped()
        // Received and not finished: finished() runs when a connection's channel closes.
        await drain(limit: .seconds(60)) { connections.activeCount }
    }

    /// Shared: accept on the listeners we were given, which the other workers accept on too. Says
    /// READY=1 to $NOTIFY_SOCKET once accepting; on SIGTERM stops accepting (what is queued goes to
    /// the other holders) and finishes the open connections.
    static func serveShared(_ listeners: [SocketDescriptor], group: EventLoopGroup) async throws {
        var acceptors: [SharedListenerAcceptor] = []
        for listener in listeners {
            let acceptor = SharedListenerAcceptor(listener: listener) {
                ClientBootstrap(group: group).channelInitializer(initialize)
            }
            acceptors.append(acceptor)
            try DetachedThread.start { acceptor.run() }
        }
        try? SystemdNotifier.fromEnvironment()?.notify("READY=1\nSTATUS=hello-worker accepting")
        await SignalPipe.waitForAny([SIGTERM, SIGINT])
        for acceptor in acceptors { acceptor.stop() }
        await drain(limit: .seconds(60)) { acceptors.reduce(0) { $0 + $1.activeCount } }
    }

    static func serveAlone(_ arguments: [String], group: EventLoopGroup) async throws {
        guard arguments.count >= 2, arguments[0] == "--bind", let colon = arguments[1].lastIndex(of: ":"),
              let port = Int(arguments[1][arguments[1].index(after: colon)...]) else {
            let message = "hello-worker: no sockets: start me under `sockshare serve`, with LISTEN_FDS, or as hello-worker --bind HOST:PORT [--reuse-port]\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
            exit(64)
        }
        let host = String(arguments[1][..<colon]).trimmingCharacters(in: ["[", "]"])
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer(initialize)
        if arguments.contains("--reuse-port") {
            bootstrap = bootstrap.serverChannelOption(ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_REUSEPORT)), value: 1)
        }
        let channel = try await bootstrap.bind(host: host, port: port).get()
        try await channel.closeFuture.get()
    }
}

extension String {
    func trimmingCharacters(in set: Set<Character>) -> String {
        var text = Substring(self)
        while let first = text.first, set.contains(first) { text.removeFirst() }
        while let last = text.last, set.contains(last) { text.removeLast() }
        return String(text)
    }
}
