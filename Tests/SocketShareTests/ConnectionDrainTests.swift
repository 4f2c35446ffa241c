import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
@testable import SocketShareNIO

/// Draining a connection without losing a request (`ConnectionDrain`): the decisions as a value,
/// then the handlers in a SwiftNIO pipeline on an `EmbeddedChannel` — no socket, no thread.
extension SocketShareTests {
    @Suite struct ConnectionDrainTests {
        @Test func anIdleConnectionWaitsForItsNextRequestAndABusyOneClosesAfterItsResponse() {
            var idle = HTTPDrainState()
            let idleQuiesce = idle.quiesce()
            idle.requestHead()
            let informational = idle.responseHead(status: .continue)
            let idleHead = idle.responseHead(status: .ok)
            let idleEnd = idle.responseEnd()
            #expect(idleQuiesce == .drainAfterResponse && !informational, "an informational head is left alone")
            #expect(idleHead && idleEnd, "the next response says Connection: close, and the connection closes after it")

            var busy = HTTPDrainState()
            busy.requestHead()
            let busyQuiesce = busy.quiesce()
            let busyHead = busy.responseHead(status: .ok)
            let busyEnd = busy.responseEnd()
            #expect(busyQuiesce == .drainAfterResponse && busyHead && busyEnd)

            var pipelined = HTTPDrainState()
            pipelined.requestHead()
            pipelined.requestHead()
            _ = pipelined.quiesce()
            let firstHead = pipelined.responseHead(status: .ok)
            let firstEnd = pipelined.responseEnd()
            let secondHead = pipelined.responseHead(status: .ok)
            let secondEnd = pipelined.responseEnd()
            #expect(firstHead && !firstEnd, "another request waits for its answer")
            #expect(secondHead && secondEnd)

            var upgraded = HTTPDrainState()
            upgraded.requestHead()
            let upgradeHead = upgraded.responseHead(status: .switchingProtocols)
            let upgradeEnd = upgraded.responseEnd()
            let upgradedQuiesce = upgraded.quiesce()
            #expect(!upgradeHead && !upgradeEnd && upgradedQuiesce == .forward, "an upgraded connection is the app's to quiesce")

            var untouched = HTTPDrainState()
            untouched.requestHead()
            let untouchedHead = untouched.responseHead(status: .ok)
            let untouchedEnd = untouched.responseEnd()
            #expect(!untouchedHead && !untouchedEnd, "no drain, no change")
        }

        /// Answers every request at once, in `channelRead`, keeping the connection alive when the
        /// request asks: the plain handler of SwiftNIO's examples, which knows nothing of draining.
        final class PlainHandler: ChannelInboundHandler {
            typealias InboundIn = HTTPServerRequestPart
            typealias OutboundOut = HTTPServerResponsePart

            func channelRead(context: ChannelHandlerContext, data: NIOAny) {
                guard case .end = Self.unwrapInboundIn(data) else { return }
                var headers = HTTPHeaders()
                headers.add(name: "content-length", value: "2")
                headers.add(name: "connection", value: "keep-alive")
                context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
                context.write(Self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "ok")))), promise: nil)
                context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
            }
        }

        static func channel(pipelining: Bool) throws -> EmbeddedChannel {
            let channel = EmbeddedChannel()
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: pipelining)
            try channel.pipeline.syncOperations.addHandler(PlainHandler())
            try ConnectionDrain.install(on: channel)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            return channel
        }

        static func request(_ channel: EmbeddedChannel) throws -> String {
            try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
            var text = ""
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
            return text.lowercased()
        }

        @Test(arguments: [false, true])
        func theStandardPipelineAnswersTheNextRequestWithConnectionCloseInsteadOfClosingAnIdleConnection(pipelining: Bool) throws {
            let channel = try Self.channel(pipelining: pipelining)
            #expect(try Self.request(channel).contains("connection: keep-alive"))
            // The drain starts while the connection is idle: it stays open...
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            #expect(channel.isActive, "an idle keep-alive connection is not closed under a client that may be sending")
            // ...its next request is answered, saying close, and then it closes.
            let answer = try Self.request(channel)
            #expect(answer.hasPrefix("http/1.1 200 ok") && answer.contains("connection: close") && answer.hasSuffix("ok"), "\(answer)")
            #expect(!channel.isActive)
        }

        @Test func anyOtherProtocolIsToldToQuiesceAfterItsNextRead() throws {
            final class Recorder: ChannelInboundHandler, @unchecked Sendable {
                typealias InboundIn = ByteBuffer
                var events: [String] = []
                func channelRead(context: ChannelHandlerContext, data: NIOAny) { events.append("read") }
                func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
                    if event is ChannelShouldQuiesceEvent { events.append("quiesce") }
                }
            }
            let recorder = Recorder()
            let channel = EmbeddedChannel(handler: recorder)
            try ConnectionDrain.install(on: channel)
            try channel.writeOutbound(ByteBuffer(string: "greeting"))
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            #expect(recorder.events.isEmpty, "idle: held")
            try channel.writeInbound(ByteBuffer(string: "next"))
            #expect(recorder.events == ["read", "quiesce"], "told right after its next read")
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            #expect(recorder.events == ["read", "quiesce", "quiesce"], "busy (read since it wrote): told at once")
        }
    }
}
