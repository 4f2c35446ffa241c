// docs/WORKERS.md, "In Swift": the whole file is the page's sample.
// docs: begin
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import SocketShareNIO

/// Answers every request with a greeting, keeping the connection alive when the client asks. It
/// knows nothing of reloads: `ConnectionServer` drains its connections without losing a request.
final class Greeter: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private var keepAlive = true

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let request):
            keepAlive = request.isKeepAlive
        case .body:
            break
        case .end:
            let body = ByteBuffer(string: "hello\n")
            var headers = HTTPHeaders()
            headers.add(name: "content-length", value: "\(body.readableBytes)")
            headers.add(name: "connection", value: keepAlive ? "keep-alive" : "close")
            let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: headers)
            context.write(Self.wrapOutboundOut(.head(head)), promise: nil)
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            let written = context.writeAndFlush(Self.wrapOutboundOut(.end(nil)))
            if !keepAlive {
                let channel = context.channel
                written.whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }
}

let logger = Logger(label: "worker")
let server = ConnectionServer(
    source: try ConnectionSource.fromEnvironment() ?? .bind(host: "127.0.0.1", port: 8080),
    logger: logger
) { channel in
    channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.configureHTTPServerPipeline()
        try channel.pipeline.syncOperations.addHandler(Greeter())
    }
}
let services = ServiceGroup(configuration: .init(
    // `stop` from the dispatcher ends the server: then the whole process shuts down.
    services: [.init(service: server, successTerminationBehavior: .gracefullyShutdownGroup)],
    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
try await services.run()
// docs: end
