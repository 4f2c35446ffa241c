import NIOCore
import NIOHTTP1

/// Collects a request (head and body, at most 1 MiB), asks ``Routes`` and writes the response;
/// keeps the connection alive when the client asked for it (and NIO's pipelining handler, when the
/// server drains, turns that into `Connection: close`).
final class HTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let maximumBody = 1 << 20
    let routes: Routes
    let listenerName: String?
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    /// A request refused mid-body (413): the rest of its body is read and dropped, then the
    /// connection closes — closing with unread bytes would reset it before the client reads the 413.
    private var discarding = false

    init(routes: Routes, listenerName: String?) {
        self.routes = routes
        self.listenerName = listenerName
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.removeAll(keepingCapacity: true)
        case .body(var chunk):
            guard let head, !discarding else { return }
            if body.count + chunk.readableBytes > Self.maximumBody {
                discarding = true
                body = []
                respond(context, version: head.version, keepAlive: false, closing: false,
                        Response(413, "Content Too Large", "bodies are limited to 1 MiB\n"))
                return
            }
            body += chunk.readBytes(length: chunk.readableBytes) ?? []
        case .end:
            if discarding {
                context.close(promise: nil)
                return
            }
            guard let head else { return }
            self.head = nil
            let (path, query) = Routes.split(head.uri)
            let response = routes.answer(Request(
                method: head.method.rawValue, path: path, query: query, body: body, listenerName: listenerName))
            let keepAlive = head.isKeepAlive
            if response.delayMilliseconds > 0 {
                let version = head.version
                let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                context.eventLoop.scheduleTask(in: .milliseconds(Int64(response.delayMilliseconds))) {
                    let (handler, context) = loopBound.value
                    handler.respond(context, version: version, keepAlive: keepAlive, response)
                }
            } else {
                respond(context, version: head.version, keepAlive: keepAlive, response)
            }
        }
    }

    private func respond(
        _ context: ChannelHandlerContext, version: HTTPVersion, keepAlive: Bool, closing: Bool = true, _ response: Response
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let status = HTTPResponseStatus(statusCode: response.status, reasonPhrase: response.reason)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: response.body)))), promise: nil)
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive && closing {
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
