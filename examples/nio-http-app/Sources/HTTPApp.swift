// http-app: the cookbook's SwiftNIO HTTP application (examples/nio-http-app/README.md).
//
// The same binary runs three ways, chosen by how it was started:
//   - handoff: $SOCKSHARE_WORKER_FD is set (`sockshare serve --mode handoff`): connections arrive
//     one by one over the worker channel and become NIO channels;
//   - shared: LISTEN_FDS/LISTEN_PID name this process (`sockshare serve --mode shared`, systemd,
//     `sockshare adopt`): every worker accepts on the same listeners;
//   - alone: `http-app --bind 127.0.0.1:8080` binds its own listener.

import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix
import SocketShare
import SocketShareNIO

@main
enum HTTPApp {
    static func main() async throws {
        signal(SIGPIPE, SIG_IGN)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        if let connections = try WorkerConnections.fromEnvironment() {
            try await serveHandedOff(connections, routes: Routes(mode: "handoff"), group: group)
        } else if case let listeners = try SystemdListeners.inherited(), !listeners.isEmpty {
            try await serveShared(listeners, routes: Routes(mode: "shared"), group: group)
        } else {
            try await serveAlone(Array(CommandLine.arguments.dropFirst()), group: group)
        }
        try await group.shutdownGracefully()
    }

    /// Sets up one connection's channel: NIO's HTTP/1.1 codec, then the app.
    static func initialize(_ channel: Channel, _ routes: Routes, listenerName: String?) -> EventLoopFuture<Void> {
        // Initializers run on the channel's event loop: set the pipeline up synchronously.
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(HTTPHandler(routes: routes, listenerName: listenerName))
        }
    }

    static func bootstrap(_ group: EventLoopGroup, _ routes: Routes, listenerName: String?) -> ClientBootstrap {
        ClientBootstrap(group: group).channelInitializer { initialize($0, routes, listenerName: listenerName) }
    }

    /// Handoff: register each connection the dispatcher sends with the event loop. When the
    /// dispatcher says stop (a reload or shutdown), finish the open connections, then exit.
    static func serveHandedOff(_ connections: WorkerConnections, routes: Routes, group: EventLoopGroup) async throws {
        try connections.serve { connection in
            bootstrap(group, routes, listenerName: connection.listenerName)
                .withConnectedSocket(adopting: connection).whenFailure { _ in }
        }
        try connections.ready()
        await connections.waitUntilStopped()
        await drain { connections.activeCount }
    }

    /// Shared: accept on the inherited listeners alongside the other workers; say READY=1; on
    /// SIGTERM stop accepting (queued connections go to the other holders) and finish what is open.
    static func serveShared(_ listeners: [(name: String, socket: SocketDescriptor)], routes: Routes, group: EventLoopGroup) async throws {
        var acceptors: [SharedListenerAcceptor] = []
        for (name, listener) in listeners {
            let acceptor = SharedListenerAcceptor(listener: listener) { bootstrap(group, routes, listenerName: name) }
            acceptors.append(acceptor)
            try DetachedThread.start { acceptor.run() }
        }
        try? SystemdNotifier.fromEnvironment()?.notify("READY=1\nSTATUS=http-app pid \(getpid()) accepting")
        await SignalPipe.waitForAny([SIGTERM, SIGINT])
        for acceptor in acceptors { acceptor.stop() }
        await drain { acceptors.reduce(0) { $0 + $1.activeCount } }
    }

    /// Alone: `--bind HOST:PORT`, for trying the app without sockshare.
    static func serveAlone(_ arguments: [String], group: EventLoopGroup) async throws {
        guard arguments.count == 2, arguments[0] == "--bind", let colon = arguments[1].lastIndex(of: ":"),
              let port = Int(arguments[1][arguments[1].index(after: colon)...]) else {
            let message = "http-app: no sockets: run me under `sockshare serve`, with LISTEN_FDS, or as http-app --bind HOST:PORT\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
            exit(64)
        }
        let host = String(arguments[1][..<colon].filter { $0 != "[" && $0 != "]" })
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { initialize($0, Routes(mode: "alone"), listenerName: nil) }
            .bind(host: host, port: port).get()
        try await channel.closeFuture.get()
    }

    /// Waits, at most 30 s, until `open()` is 0; answers given meanwhile close their connections.
    static func drain(open: () -> Int) async {
        Connections.draining.store(true, ordering: .relaxed)
        let deadline = ContinuousClock.now + .seconds(30)
        while open() > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }
}
