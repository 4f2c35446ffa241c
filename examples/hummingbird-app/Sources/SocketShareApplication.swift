// What `Application.runService()` does, with connections from a SocketShare `ConnectionSource`
// instead of a listener Hummingbird binds itself.
//
// Hummingbird's own `run()` builds an `HTTP1Channel` from the application's responder and serves
// it with HummingbirdCore's `Server`, which always binds `configuration.address`. This builds the
// same channel, with the same request context, and serves it with SocketShareNIO's
// `ConnectionServer`, whose initializer and handler are exactly HummingbirdCore's `setup` and
// `handle`. The app's own services run alongside in one ServiceGroup, which also owns the signals.

import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import SocketShareNIO
import UnixSignals

extension ApplicationProtocol {
    /// Runs the application on the connections `source` gives, with the app's services, until
    /// SIGTERM or SIGINT (graceful shutdown: the requests in flight finish), or until `sockshare
    /// serve` retires this worker.
    func runService(
        connectionsFrom source: ConnectionSource, gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint]
    ) async throws {
        let responder = try await self.responder
        let logger = self.logger
        let serverName = self.configuration.serverName
        let http1 = HTTP1Channel(responder: { request, responseWriter, channel in
            var requestLogger = logger
            requestLogger[metadataKey: "hb.request.id"] = .stringConvertible(RequestID())
            let context = Self.Responder.Context(source: .init(channel: channel, logger: requestLogger))
            var response: Response
            do {
                response = try await responder.respond(to: request, context: context)
            } catch let error as HTTPParserError {
                throw error
            } catch {
                response = Response(status: .internalServerError)
            }
            if let serverName { response.headers[.server] = serverName }
            try await responseWriter.write(response: response.head, body: response.body)
        })
        let server = ConnectionServer(source: source, group: eventLoopGroup, logger: logger) { channel in
            http1.setup(channel: channel, logger: logger)
        } handler: { connection in
            await http1.handle(value: connection, logger: logger)
        }
        for process in processesRunBeforeServerStart { try await process() }
        let group = ServiceGroup(configuration: .init(
            // `sockshare serve` retiring this worker ends the server: then the whole app stops.
            services: services.map { .init(service: $0) }
                + [.init(service: server, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: gracefulShutdownSignals, logger: logger))
        try await group.run()
    }
}
