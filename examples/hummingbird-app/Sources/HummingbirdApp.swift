// hummingbird-app: a Hummingbird 2 router served behind `sockshare serve`
// (examples/hummingbird-app/README.md).
//
// Hummingbird's `Application` binds its own listener, so this program does not use it. It uses
// the two public pieces underneath: the router's responder, and HummingbirdCore's `HTTP1Channel`,
// which sets up and serves one connection's channel. SocketShareNIO turns each socket sockshare
// gives us into such a channel:
//   - handoff ($SOCKSHARE_WORKER_FD): every connection sockshare accepted and handed to us;
//   - shared (LISTEN_FDS/LISTEN_PID): connections we accept on the listeners every worker shares.

import Glibc
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import SocketShare
import SocketShareNIO

@main
enum HummingbirdApp {
    static func main() async throws {
        signal(SIGPIPE, SIG_IGN)
        let logger = { var logger = Logger(label: "hummingbird-app"); logger.logLevel = .notice; return logger }()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        if let connections = try WorkerConnections.fromEnvironment() {
            let server = ConnectionServer(group: group, mode: "handoff", logger: logger)
            try connections.serve { connection in
                server.bootstrap().withConnectedSocket(adopting: connection).whenFailure { _ in }
            }
            try connections.ready()
            await connections.waitUntilStopped()
            await drain { connections.activeCount }
        } else if case let listeners = try SystemdListeners.inherited(), !listeners.isEmpty {
            let server = ConnectionServer(group: group, mode: "shared", logger: logger)
            var acceptors: [SharedListenerAcceptor] = []
            for (_, listener) in listeners {
                let acceptor = SharedListenerAcceptor(listener: listener) { server.bootstrap() }
                acceptors.append(acceptor)
                try DetachedThread.start { acceptor.run() }
            }
            try? SystemdNotifier.fromEnvironment()?.notify("READY=1\nSTATUS=hummingbird-app pid \(getpid()) accepting")
            await SignalPipe.waitForAny([SIGTERM, SIGINT])
            for acceptor in acceptors { acceptor.stop() }
            let stopped = acceptors
            await drain { stopped.reduce(0) { $0 + $1.activeCount } }
        } else {
            let message = "hummingbird-app: no sockets: run me under `sockshare serve` (handoff or shared mode) or with LISTEN_FDS\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
            exit(64)
        }
        try await group.shutdownGracefully()
    }

    /// Waits, at most 30 s, until `open()` is 0.
    static func drain(open: @Sendable () -> Int) async {
        let deadline = ContinuousClock.now + .seconds(30)
        while open() > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }
}

/// Serves connections with Hummingbird: `HTTP1Channel` sets each channel's pipeline up, then a task
/// runs Hummingbird's request loop on it until it closes.
struct ConnectionServer: Sendable {
    let group: EventLoopGroup
    let http1: HTTP1Channel
    let logger: Logger

    init(group: EventLoopGroup, mode: String, logger: Logger) {
        let responder = Self.router(mode: mode).buildResponder()
        self.group = group
        self.logger = logger
        self.http1 = HTTP1Channel(responder: { request, responseWriter, channel in
            let context = BasicRequestContext(source: .init(channel: channel, logger: logger))
            let response: Response
            do {
                response = try await responder.respond(to: request, context: context)
            } catch {
                response = Response(status: .internalServerError)
            }
            try await responseWriter.write(response: response.head, body: response.body)
        })
    }

    /// The application's routes: ordinary Hummingbird.
    static func router(mode: String) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/") { _, _ in "hello from pid \(getpid()) (hummingbird, \(mode) mode)\n" }
        router.get("/healthz") { _, _ in "ok\n" }
        router.get("/hello/:name") { _, context in
            let name = try context.parameters.require("name")
            return "hello, \(name), from pid \(getpid())\n"
        }
        router.post("/echo") { request, _ in
            Response(status: .ok, body: .init(asyncSequence: request.body))
        }
        router.get("/slow") { request, _ in
            guard let ms = request.uri.queryParameters.get("ms", as: Int.self), (0...10_000).contains(ms) else {
                throw HTTPError(.badRequest, message: "slow?ms=N needs N between 0 and 10000")
            }
            try await Task.sleep(for: .milliseconds(ms))
            return "slept \(ms) ms in pid \(getpid())\n"
        }
        return router
    }

    /// A bootstrap (one per use: bootstraps are not `Sendable`) whose channels Hummingbird serves.
    func bootstrap() -> ClientBootstrap {
        let http1 = self.http1, logger = self.logger
        return ClientBootstrap(group: group).channelInitializer { channel in
            http1.setup(channel: channel, logger: logger).map { value in
                Task { await http1.handle(value: value, logger: logger) }
            }
        }
    }
}
