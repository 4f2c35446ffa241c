// Vapor's `Server`, on the connections a SocketShare `ConnectionSource` gives instead of a listener
// Vapor binds itself: `let server = HandoffVaporServer(application: app, source: source)`, then
// `app.servers.use { _ in server }` (one instance: Vapor asks for `app.server` again to stop it).
//
// Vapor's own HTTP channel handlers are internal to Vapor, so this adapter has a small one of its
// own: NIO's HTTP/1.1 codec, then each request collected (at most `maximumBodySize`), answered by
// the application's responder — routes, middleware, errors, as usual — and its response written
// with a Content-Length (streamed response bodies are collected first). Vapor's `serve` command
// owns the signals: on SIGTERM it calls `shutdown()`, which drains (requests in flight finish).

import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import SocketShareNIO
import Vapor

final class HandoffVaporServer: Server, Sendable {
    let application: Application
    let source: ConnectionSource
    let maximumBodySize: Int
    private let running = NIOLockedValueBox<(group: ServiceGroup, task: Task<Void, Never>, stopped: EventLoopPromise<Void>)?>(nil)

    /// A server for `application` on the connections `source` gives.
    init(application: Application, source: ConnectionSource, maximumBodySize: Int = 1 << 20) {
        self.application = application
        self.source = source
        self.maximumBodySize = maximumBodySize
    }

    /// Succeeds once the server has stopped (at once if it never started).
    var onShutdown: EventLoopFuture<Void> {
        running.withLockedValue { $0?.stopped.futureResult } ?? application.eventLoopGroup.next().makeSucceededVoidFuture()
    }

    /// Starts serving; returns once connections are taken, or throws why they cannot be.
    func start(address: BindAddress?) async throws {
        let application = self.application, maximumBodySize = self.maximumBodySize
        let stopped = application.eventLoopGroup.next().makePromise(of: Void.self)
        if address != nil {
            application.logger.warning("the address is ignored: connections come from \(source)")
        }
        let (serving, servingContinuation) = AsyncStream.makeStream(of: (any Error)?.self)
        let server = ConnectionServer(
            source: source, group: application.eventLoopGroup,
            configuration: .init(onServing: { _ in servingContinuation.yield(nil) }), logger: application.logger
        ) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                try channel.pipeline.syncOperations.addHandler(
                    VaporBridge(application: application, maximumBodySize: maximumBodySize))
            }
        }
        // No signals here: Vapor's serve command has them, and calls shutdown().
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: server, successTerminationBehavior: .gracefullyShutdownGroup)],
            logger: application.logger))
        let task = Task {
            do {
                try await group.run()
            } catch {
                servingContinuation.yield(error)
            }
            servingContinuation.finish()
            // Ended by itself (`sockshare serve` retired this worker): the application stops.
            application.running?.stop()
            stopped.succeed(())
        }
        running.withLockedValue { $0 = (group, task, stopped) }
        for await outcome in serving {
            if let outcome { throw outcome }
            return
        }
    }

    @available(*, noasync, message: "Use the async start(address:).")
    func start(address: BindAddress?) throws {
        let started = application.eventLoopGroup.next().makePromise(of: Void.self)
        started.completeWithTask { try await self.start(address: address) }
        try started.futureResult.wait()
    }

    /// Drains: no new connections, the requests in flight finish, then the server stops.
    func shutdown() async {
        guard let (group, task, _) = running.withLockedValue({ $0 }) else { return }
        await group.triggerGracefulShutdown()
        await task.value
    }

    @available(*, noasync, message: "Use the async shutdown().")
    func shutdown() {
        let done = application.eventLoopGroup.next().makePromise(of: Void.self)
        done.completeWithTask { await self.shutdown() }
        try? done.futureResult.wait()
    }
}

/// One connection's requests, answered by the application's responder.
final class VaporBridge: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let application: Application
    let maximumBodySize: Int
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    /// A request refused mid-body (413): the rest is read and dropped, then the connection closes.
    private var discarding = false

    init(application: Application, maximumBodySize: Int) {
        self.application = application
        self.maximumBodySize = maximumBodySize
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body = nil
        case .body(var chunk):
            guard let head, !discarding else { return }
            if (body?.readableBytes ?? 0) + chunk.readableBytes > maximumBodySize {
                discarding = true
                body = nil
                write(context, Response(status: .payloadTooLarge), version: head.version, keepAlive: false, isHead: false)
                return
            }
            if body == nil { body = chunk } else { body!.writeBuffer(&chunk) }
        case .end:
            if discarding {
                context.close(promise: nil)
                return
            }
            guard let head else { return }
            self.head = nil
            let request = Request(
                application: application, method: head.method, url: URI(string: head.uri), version: head.version,
                headersNoUpdate: head.headers, collectedBody: body, remoteAddress: context.channel.remoteAddress,
                logger: application.logger, byteBufferAllocator: context.channel.allocator, on: context.eventLoop)
            body = nil
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            application.responder.respond(to: request).flatMap { response in
                response.body.collect(on: context.eventLoop).map { (response, $0) }
            }.whenComplete { result in
                let (handler, context) = loopBound.value
                switch result {
                case .success(let (response, collected)):
                    handler.write(context, response, body: collected, version: head.version, keepAlive: head.isKeepAlive,
                                  isHead: head.method == .HEAD)
                case .failure:
                    handler.write(context, Response(status: .internalServerError), version: head.version, keepAlive: false, isHead: false)
                }
            }
        }
    }

    private func write(
        _ context: ChannelHandlerContext, _ response: Response, body: ByteBuffer? = nil, version: HTTPVersion,
        keepAlive: Bool, isHead: Bool
    ) {
        var headers = response.headers
        headers.replaceOrAdd(name: .contentLength, value: "\(body?.readableBytes ?? 0)")
        headers.replaceOrAdd(name: .connection, value: keepAlive ? "keep-alive" : "close")
        context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: version, status: response.status, headers: headers))), promise: nil)
        if let body, !isHead, body.readableBytes > 0 {
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let written = context.writeAndFlush(Self.wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
