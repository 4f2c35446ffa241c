import NIOCore
import NIOHTTP1

/// How a ``ConnectionServer`` drains a connection without losing a request: it never closes a
/// connection while its client may be sending on it.
///
/// The standard quiesce closes an idle keep-alive connection at once (SwiftNIO's
/// `HTTPServerPipelineHandler`, Hummingbird's connection handler, Vapor's): a client that has just
/// sent its next request on it gets the end of the connection instead of an answer — nginx's and
/// HAProxy's reload losses. A connection that is idle when the drain starts is the one case that
/// needs care; the draining server cannot tell the client "no more" on it except in a response. So:
///
/// - **HTTP/1** (a `HTTPRequestDecoder` in the pipeline; SwiftNIO's HTTP server pipeline,
///   Hummingbird and Vapor alike): ``HTTPConnectionDrain`` sits right after the decoder and takes
///   the quiesce upon itself. A connection with a request in progress answers it with
///   `Connection: close` and closes after the response. An idle one stays open until its next
///   request, which is answered the same way, and then closes; one that sends nothing is closed at
///   the drain deadline (``ConnectionServer/Configuration/drainTimeout``). A connection that was
///   upgraded (`101 Switching Protocols`) is the app's again: the quiesce goes on to it.
/// - **Any other protocol**: ``ConnectionQuiesceGate`` sits first in the pipeline. A connection
///   that received bytes since it last wrote some (a request in progress) is told to quiesce at
///   once; an idle one is told right after its next read has gone through the pipeline.
enum ConnectionDrain {
    /// Installs the drain handler that fits `channel`'s pipeline, once the app's initializer has
    /// set it up.
    static func install(on channel: any Channel) throws {
        let pipeline = channel.pipeline.syncOperations
        if let decoder = try? pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self) {
            try pipeline.addHandler(HTTPConnectionDrain(), position: .after(decoder))
        } else {
            try pipeline.addHandler(ConnectionQuiesceGate(), position: .first)
        }
    }
}

/// The decisions of ``HTTPConnectionDrain``, apart from its I/O: a pure value, tested without a channel.
struct HTTPDrainState: Equatable {
    /// Requests whose head arrived and whose response has not ended (pipelined ones count too).
    private(set) var requestsPending = 0
    /// Whether the server is draining: every response from now on says `Connection: close`, and
    /// the connection closes once none is pending.
    private(set) var draining = false
    /// Whether the connection switched protocols: the app handles the quiesce itself.
    private(set) var upgraded = false

    /// What to do with a quiesce event.
    enum QuiesceAction: Equatable {
        /// Keep the connection: it closes after its next response (or at the drain deadline).
        case drainAfterResponse
        /// Hand the event on to the app (an upgraded connection).
        case forward
    }

    /// The server starts draining.
    mutating func quiesce() -> QuiesceAction {
        if upgraded { return .forward }
        draining = true
        return .drainAfterResponse
    }

    /// A request's head arrived.
    mutating func requestHead() {
        requestsPending += 1
    }

    /// A response head with `status` is written: whether it must say `Connection: close` (the
    /// server drains; not for an informational `1xx` head, which another head follows).
    mutating func responseHead(status: HTTPResponseStatus) -> Bool {
        if status == .switchingProtocols {
            upgraded = true
            return false
        }
        return draining && status.code >= 200
    }

    /// A response ended: whether the connection is to close once it is written (the server drains
    /// and no other request is pending).
    mutating func responseEnd() -> Bool {
        requestsPending = max(0, requestsPending - 1)
        return draining && !upgraded && requestsPending == 0
    }
}

/// Drains an HTTP/1 connection without a lost request (``ConnectionDrain``): placed right after the
/// request decoder, it sees every request and response part.
final class HTTPConnectionDrain: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private var state = HTTPDrainState()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = Self.unwrapInboundIn(data) { state.requestHead() }
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else { return context.fireUserInboundEventTriggered(event) }
        switch state.quiesce() {
        case .forward:
            context.fireUserInboundEventTriggered(event)
        case .drainAfterResponse:
            // The app does not hear of it: its own quiesce would close an idle connection at once.
            break
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch Self.unwrapOutboundIn(data) {
        case .head(var head):
            if state.responseHead(status: head.status) {
                head.headers.replaceOrAdd(name: "connection", value: "close")
                context.write(Self.wrapOutboundOut(.head(head)), promise: promise)
            } else {
                context.write(data, promise: promise)
            }
        case .body:
            context.write(data, promise: promise)
        case .end:
            guard state.responseEnd() else { return context.write(data, promise: promise) }
            let loopBound = context.loopBound
            context.writeAndFlush(data).always { _ in loopBound.value.close(promise: nil) }.cascade(to: promise)
        }
    }
}

/// Drains a connection of any protocol (``ConnectionDrain``): placed first in the pipeline, it
/// tells a busy connection to quiesce at once and an idle one right after its next read.
final class ConnectionQuiesceGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny

    /// Whether bytes arrived since the connection last wrote: a request is in progress.
    private var readSinceWrite = false
    /// Whether a quiesce waits for the next read.
    private var held = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        readSinceWrite = true
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
        if held {
            held = false
            context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent, !readSinceWrite {
            held = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        readSinceWrite = false
        context.write(data, promise: promise)
    }
}
