// hello-worker: the example worker. An HTTP/1.1 server on SwiftNIO that answers every request with
// `200 OK` and `hello from <pid>\n`, honouring keep-alive and `Connection: close`.
//
// One `ConnectionServer` serves it whichever way it was started:
//   - handoff: $SOCKSHARE_WORKER_FD (sockshare serve --mode handoff) — connections handed over;
//   - external: $SOCKSHARE_WORKER_SOCKET (sockshare serve --worker-socket PATH) — it connects to
//     a serve that did not start it, and connections are handed over the same way;
//   - shared:  LISTEN_FDS/LISTEN_PID (sockshare serve --mode shared, systemd) — it accepts itself;
//   - alone:   hello-worker --bind HOST:PORT [--reuse-port] — its own listener.
// A ServiceGroup runs it: SIGTERM or SIGINT drains it (the group's signals, not the library's).

import Glibc
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import SocketShareNIO

/// Answers each request. It needs no drain logic of its own: while the server drains, the
/// connection server answers each keep-alive connection's next request with `Connection: close`
/// and closes it after (SocketShareNIO's `ConnectionServer`).
final class HelloHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let body = "hello from \(getpid())\n"

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let request) = Self.unwrapInboundIn(data) else { return }
        let keepAlive = request.isKeepAlive
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain")
        headers.add(name: "Content-Length", value: "\(Self.body.utf8.count)")
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let head = HTTPResponseHead(version: request.version, status: .ok, headers: headers)
        context.write(Self.wrapOutboundOut(.head(head)), promise: nil)
        context.write(Self.wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: Self.body)))), promise: nil)
        let written = context.writeAndFlush(Self.wrapOutboundOut(.end(nil)))
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
    static func main() async throws {
        signal(SIGPIPE, SIG_IGN)
        var logger = Logger(label: "hello-worker")
        logger.logLevel = .warning
        let source: ConnectionSource
        do {
            source = try ConnectionSource.fromEnvironment() ?? bindArguments(Array(CommandLine.arguments.dropFirst()))
        } catch {
            let message = "hello-worker: \(error)\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
            exit(64)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = ConnectionServer(
            source: source, group: group, configuration: .init(drainTimeout: .seconds(60)), logger: logger
        ) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: false)
                try channel.pipeline.syncOperations.addHandler(HelloHandler())
            }
        }
        let services = ServiceGroup(configuration: .init(
            services: [.init(service: server, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await services.run()
        } catch {
            let message = "hello-worker: \(error)\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
            exit(1)
        }
        try await group.shutdownGracefully()
    }

    /// `--bind HOST:PORT [--reuse-port]`; a usage error otherwise (or without arguments).
    static func bindArguments(_ arguments: [String]) throws -> ConnectionSource {
        guard arguments.count >= 2, arguments[0] == "--bind", let colon = arguments[1].lastIndex(of: ":"),
              let port = Int(arguments[1][arguments[1].index(after: colon)...]), arguments.count <= 3,
              arguments.count == 2 || arguments[2] == "--reuse-port"
        else {
            throw Usage(text: "usage: hello-worker [--bind HOST:PORT [--reuse-port]] (or start me under `sockshare serve`, or with LISTEN_FDS)")
        }
        let host = String(arguments[1][..<colon]).filter { $0 != "[" && $0 != "]" }
        return .bind(host: host, port: port, reusePort: arguments.count == 3)
    }

    struct Usage: Error, CustomStringConvertible {
        var text: String
        var description: String { text }
    }
}
