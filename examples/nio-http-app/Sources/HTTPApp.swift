// http-app: the cookbook's SwiftNIO HTTP application (examples/nio-http-app/README.md).
//
// The same binary runs three ways; `ConnectionSource.fromEnvironment` picks the way it was started:
//   - handoff: $SOCKSHARE_WORKER_FD is set (`sockshare serve --mode handoff`): connections are
//     handed over on the worker channel;
//   - shared: LISTEN_FDS/LISTEN_PID name this process (`sockshare serve --mode shared`, systemd,
//     `sockshare adopt`): every worker accepts on the same listeners;
//   - alone: `http-app --bind 127.0.0.1:8080` binds its own listener.
// Either way a `ConnectionServer` serves it, in a ServiceGroup: SIGTERM drains it.

import Glibc
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import SocketShareNIO

@main
enum HTTPApp {
    static func main() async throws {
        signal(SIGPIPE, SIG_IGN)
        var logger = Logger(label: "http-app")
        logger.logLevel = .notice
        let source: ConnectionSource
        do {
            source = try ConnectionSource.fromEnvironment() ?? bind(Array(CommandLine.arguments.dropFirst()))
        } catch {
            let message = "http-app: \(error)\nusage: http-app [--bind HOST:PORT] (or run me under `sockshare serve`, or with LISTEN_FDS)\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
            exit(64)
        }
        let routes = Routes(mode: "\(source)".hasPrefix("bind") ? "alone" : "\(source)")
        // namesListeners: each connection's pipeline starts with a ListenerName (`--listen web=…`).
        let server = ConnectionServer(source: source, configuration: .init(namesListeners: true), logger: logger) { channel in
            // Initializers run on the channel's event loop: set the pipeline up synchronously.
            channel.eventLoop.makeCompletedFuture {
                let listener = try? channel.pipeline.syncOperations.handler(type: ListenerName.self).name
                // NIO's HTTP/1.1 codec; its pipelining handler also answers the server's drain
                // (ChannelShouldQuiesceEvent): the request in flight finishes with `Connection: close`.
                try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                try channel.pipeline.syncOperations.addHandler(HTTPHandler(routes: routes, listenerName: listener))
            }
        }
        let services = ServiceGroup(configuration: .init(
            services: [.init(service: server, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await services.run()
    }

    /// `--bind HOST:PORT`, for trying the app without sockshare; a usage error otherwise.
    static func bind(_ arguments: [String]) throws -> ConnectionSource {
        guard arguments.count == 2, arguments[0] == "--bind", let colon = arguments[1].lastIndex(of: ":"),
              let port = Int(arguments[1][arguments[1].index(after: colon)...])
        else { throw Usage(text: arguments.isEmpty ? "no sockets given" : "unknown arguments: \(arguments.joined(separator: " "))") }
        return .bind(host: String(arguments[1][..<colon].filter { $0 != "[" && $0 != "]" }), port: port)
    }

    struct Usage: Error, CustomStringConvertible {
        var text: String
        var description: String { text }
    }
}
