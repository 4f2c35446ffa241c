import Glibc
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer
@testable import SocketShareNIO

/// `ConnectionServer`: connections from a dispatcher (handed over on the worker channel, read on
/// the event loop through the doorbell), from listeners, or from its own; graceful shutdown,
/// drain deadline, cancellation; bad input; no descriptor left behind.
extension SocketShareTests {
    @Suite struct ConnectionServerTests {
        init() { TestEnvironment.prepare() }

        static let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

        /// A handoff worker's view of a dispatcher played by the test: every message the server
        /// sends, and the doorbell it gives, are checked one by one.
        @Test func aHandoffServerAcknowledgesThenServesAndLeavesWhenShutDown() async throws {
            let before = steadyDescriptors()
            let (dispatcher, worker) = try DescriptorChannel.pair()
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let address = try listener.socketDescription().localAddress
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let server = ConnectionServer(source: .handoff(channel: worker.socket), group: group, logger: Self.quiet) { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Greeter()) }
            }
            let services = ServiceGroup(services: [server], logger: Self.quiet)
            let running = Task { try await services.run() }

            // The worker gives its doorbell first, then says ready.
            let doorbellMessage = try #require(try dispatcher.receive(deadline: .now + .seconds(10)))
            #expect(try WorkerMessage(bytes: doorbellMessage.bytes) == .doorbell && doorbellMessage.descriptorCount == 1)
            let doorbell = try #require(doorbellMessage.takeDescriptors().first)
            #expect(try WorkerMessage(bytes: try #require(try dispatcher.receive(deadline: .now + .seconds(10))).bytes) == .ready)

            // Two connections in one message; the doorbell rung once.
            let clients = try (0..<2).map { _ in try SocketDescriptor.connected(to: address) }
            let accepted = try (0..<2).map { _ in try #require(try listener.accept()) }
            try dispatcher.send(WorkerMessage.connections([
                HandedConnection(id: 41, listenerName: "web", peerAddress: "p", localAddress: "l"),
                HandedConnection(id: 42, listenerName: "web", peerAddress: "p", localAddress: "l"),
            ]).bytes, descriptors: accepted.map(\.rawValue))
            _ = try doorbell.send([1])
            let acknowledgement = try WorkerMessage(bytes: try #require(try dispatcher.receive(deadline: .now + .seconds(10))).bytes)
            #expect(acknowledgement == .accepted([41, 42], active: 2))
            for connection in accepted { try connection.close() }   // the dispatcher's copies, once acknowledged
            for client in clients { #expect(try read(client) == "hello") }

            // Graceful shutdown: the worker says it is leaving, still takes what was on its way,
            // and stops taking once the dispatcher says stop.
            await services.triggerGracefulShutdown()
            #expect(try WorkerMessage(bytes: try #require(try dispatcher.receive(deadline: .now + .seconds(10))).bytes) == .leaving)
            let late = try SocketDescriptor.connected(to: address)
            let lateAccepted = try #require(try listener.accept())
            try dispatcher.send(WorkerMessage.connections([
                HandedConnection(id: 43, listenerName: "web", peerAddress: "p", localAddress: "l"),
            ]).bytes, descriptors: [lateAccepted.rawValue])
            try dispatcher.send(WorkerMessage.stop.bytes)
            _ = try doorbell.send([1])
            try lateAccepted.close()
            #expect(try read(late) == "hello", "a connection sent before stop is served")
            try await running.value
            // Load reports may follow the acknowledgements; then the worker closes its end.
            var rest: [WorkerMessage] = []
            while let message = try dispatcher.receive(deadline: .now + .seconds(10)) {
                rest.append(try WorkerMessage(bytes: message.bytes))
            }
            #expect(rest.first == .accepted([43], active: 1), "\(rest)")
            #expect(rest.dropFirst().allSatisfy { if case .load = $0 { true } else { false } }, "\(rest)")

            for socket in clients + [late, listener, doorbell] { try socket.close() }
            try dispatcher.close()
            try await group.shutdownGracefully()
            #expect(eventually { noneLeaked(since: before) }, "\(allOpenDescriptors()) vs \(before)")
        }

        /// The real dispatcher, in this process, handing connections to a server over a socketpair:
        /// many connections, each served once, acknowledged, none left with the dispatcher.
        @Test func theDispatcherAndAHandoffServerServeManyConnections() async throws {
            let before = steadyDescriptors()
            try await serveManyConnectionsThroughTheDispatcher()
            #expect(eventually { noneLeaked(since: before) }, "\(allOpenDescriptors()) vs \(before)")
        }

        private func serveManyConnectionsThroughTheDispatcher() async throws {
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0), backlog: 512)
            let address = try listener.socketDescription().localAddress
            let dispatcher = try Dispatcher(listeners: [.init(name: "web", socket: listener)], configuration: .init())
            try dispatcher.start()
            let (mine, theirs) = try DescriptorChannel.pair()
            dispatcher.addWorker(mine, pid: getpid(), generation: 1)
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
            let server = ConnectionServer(source: .handoff(channel: theirs.socket), group: group, logger: Self.quiet) { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(HTTPAnswer()) }
            }
            let services = ServiceGroup(services: [server], logger: Self.quiet)
            let running = Task { try await services.run() }
            #expect(eventually(timeout: .seconds(20)) { dispatcher.statistics.workers.first?.isReady == true })

            // The load runs on threads of its own: blocking calls must not hold Swift's small pool.
            let result = LoadClient(address: address, count: 1000, threads: 4).run()
            #expect(result.answered == 1000, "\(result)")
            #expect(eventually { dispatcher.isSettled && dispatcher.statistics.workers.first?.handled == 1000 })

            // The server says it is leaving; the dispatcher answers stop (without it run() would wait
            // for the drain timeout), then drops the worker, whose channel closes.
            let shutdown = ContinuousClock.now
            await services.triggerGracefulShutdown()
            try await running.value
            #expect(ContinuousClock.now - shutdown < .seconds(10))
            #expect(eventually { dispatcher.statistics.workers.isEmpty }, "the worker left")
            dispatcher.stop(deadline: .now + .seconds(5))
            try listener.close()
            try await group.shutdownGracefully()
        }

        /// A graceful shutdown lets a request in flight finish, and closes the connection after it.
        @Test func aGracefulShutdownFinishesTheRequestInFlight() async throws {
            let before = steadyDescriptors()
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let server = ConnectionServer(
                source: .bind(host: "127.0.0.1", port: 0), group: group, logger: Self.quiet
            ) { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(SlowEcho(delay: .milliseconds(300))) }
            }
            let services = ServiceGroup(services: [server], logger: Self.quiet)
            let running = Task { try await services.run() }
            #expect(eventually { !server.localAddresses.isEmpty })
            let port = try #require(server.localAddresses.first?.port)
            let client = try SocketDescriptor.connected(to: .ipv4(host: "127.0.0.1", port: UInt16(port)))
            try client.sendAll(Array("ping".utf8))
            #expect(eventually { server.openConnectionCount == 1 })
            await services.triggerGracefulShutdown()
            #expect(try read(client, until: .now + .seconds(5)) == "ping", "answered after the shutdown began")
            try await running.value
            #expect(server.openConnectionCount == 0)
            // The listener is closed: nothing answers on the port any more.
            #expect(throws: SocketShareError.self) { try SocketDescriptor.connected(to: .ipv4(host: "127.0.0.1", port: UInt16(port))) }
            try client.close()
            try await group.shutdownGracefully()
            #expect(eventually { noneLeaked(since: before) }, "\(allOpenDescriptors()) vs \(before)")
        }

        /// A connection that ignores the drain is closed at the drain deadline; `run()` returns.
        @Test func theDrainTimeoutClosesWhatIsStillOpen() async throws {
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let server = ConnectionServer(
                source: .bind(host: "127.0.0.1", port: 0), group: group,
                configuration: .init(drainTimeout: .milliseconds(300)), logger: Self.quiet
            ) { channel in channel.eventLoop.makeSucceededVoidFuture() }
            let services = ServiceGroup(services: [server], logger: Self.quiet)
            let running = Task { try await services.run() }
            #expect(eventually { !server.localAddresses.isEmpty })
            let port = try #require(server.localAddresses.first?.port)
            let client = try SocketDescriptor.connected(to: .ipv4(host: "127.0.0.1", port: UInt16(port)))
            #expect(eventually { server.openConnectionCount == 1 })
            let started = ContinuousClock.now
            await services.triggerGracefulShutdown()
            try await running.value
            let took = ContinuousClock.now - started
            #expect(took >= .milliseconds(250) && took < .seconds(5), "\(took)")
            #expect(try read(client, until: .now + .seconds(5)) == "", "closed by the server")
            try client.close()
            try await group.shutdownGracefully()
        }

        /// Cancelling `run()` closes every connection at once.
        @Test func cancellationClosesEverythingAtOnce() async throws {
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let server = ConnectionServer(
                source: .bind(host: "127.0.0.1", port: 0), group: group,
                configuration: .init(drainTimeout: .seconds(60)), logger: Self.quiet
            ) { channel in channel.eventLoop.makeSucceededVoidFuture() }
            let running = Task { try await server.run() }
            #expect(eventually { !server.localAddresses.isEmpty })
            let port = try #require(server.localAddresses.first?.port)
            let client = try SocketDescriptor.connected(to: .ipv4(host: "127.0.0.1", port: UInt16(port)))
            #expect(eventually { server.openConnectionCount == 1 })
            running.cancel()
            try await running.value
            #expect(try read(client, until: .now + .seconds(5)) == "")
            try client.close()
            try await group.shutdownGracefully()
        }

        /// Each connection's output goes to the handler in a task of its own (the async style).
        @Test func asyncHandlersServeNIOAsyncChannels() async throws {
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let server = ConnectionServer(
                source: .bind(host: "127.0.0.1", port: 0), group: group, logger: Self.quiet
            ) { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
            } handler: { connection in
                try? await connection.executeThenClose { inbound, outbound in
                    for try await chunk in inbound {
                        try await outbound.write(ByteBuffer(string: "echo " + String(buffer: chunk)))
                        return
                    }
                }
            }
            let services = ServiceGroup(services: [server], logger: Self.quiet)
            let running = Task { try await services.run() }
            #expect(eventually { !server.localAddresses.isEmpty })
            let port = try #require(server.localAddresses.first?.port)
            for _ in 0..<20 {
                let client = try SocketDescriptor.connected(to: .ipv4(host: "127.0.0.1", port: UInt16(port)))
                try client.sendAll(Array("x".utf8))
                #expect(try read(client) == "echo x")
                try client.close()
            }
            await services.triggerGracefulShutdown()
            try await running.value
            try await group.shutdownGracefully()
        }

        /// A listener given to the server keeps its backlog: SwiftNIO re-`listen`s with the one asked for.
        @Test func anAdoptedListenerKeepsItsBacklogForEveryHolder() async throws {
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0), backlog: 1000)
            let address = try listener.socketDescription().localAddress
            let holder = try listener.duplicate()   // another holder of the same socket, as in shared mode
            #expect(ListenBacklog.current(of: holder.rawValue) == 1000)
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let server = ConnectionServer(
                source: .listeners([listener], sharedWithOtherProcesses: false), group: group, logger: Self.quiet
            ) { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Greeter()) }
            }
            let services = ServiceGroup(services: [server], logger: Self.quiet)
            let running = Task { try await services.run() }
            #expect(eventually { !server.localAddresses.isEmpty }, "accepting")
            #expect(ListenBacklog.current(of: holder.rawValue) == 1000, "kept for every holder")
            let client = try SocketDescriptor.connected(to: address)
            #expect(try read(client) == "hello")
            await services.triggerGracefulShutdown()
            try await running.value
            // Stopping closed the server's descriptor only: the socket still listens through the other.
            let queued = try SocketDescriptor.connected(to: address)
            #expect(try holder.accept() != nil)
            for socket in [client, queued, holder] { try socket.close() }
            try await group.shutdownGracefully()
        }

        /// A listener other processes accept on too: with assertions on (this test build), a thread
        /// accepts, with EPOLLEXCLUSIVE; several processes' spurious wake-ups crash nothing.
        @Test func aSharedListenerIsAcceptedWithoutSwiftNIOsServerChannelInDebugBuilds() async throws {
            let before = steadyDescriptors()
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let address = try listener.socketDescription().localAddress
            let other = try listener.duplicate()   // the other holder, which accepts too
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let server = ConnectionServer(source: .listeners([listener], names: ["web"]), group: group, logger: Self.quiet) { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Greeter()) }
            }
            let services = ServiceGroup(services: [server], logger: Self.quiet)
            let running = Task { try await services.run() }
            #expect(AcceptThread.assertionsEnabled)
            for _ in 0..<50 {
                let client = try SocketDescriptor.connected(to: address)
                #expect(try read(client) == "hello")
                try client.close()
            }
            await services.triggerGracefulShutdown()
            try await running.value
            #expect(try other.socketDescription().isListening, "the other holder keeps the socket")
            try other.close()
            try await group.shutdownGracefully()
            #expect(eventually { noneLeaked(since: before) }, "\(allOpenDescriptors()) vs \(before)")
        }

        /// Garbage from the dispatcher ends the intake (the connections it carried are closed, not
        /// leaked); the open connections drain and `run()` returns.
        @Test func aMalformedDispatcherMessageEndsTakingWithoutALeak() async throws {
            let before = steadyDescriptors()
            let (dispatcher, worker) = try DescriptorChannel.pair()
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let server = ConnectionServer(source: .handoff(channel: worker.socket), group: group, logger: Self.quiet) { channel in
                channel.eventLoop.makeSucceededVoidFuture()
            }
            let running = Task { try await server.run() }
            let doorbell = try #require(try dispatcher.receive(deadline: .now + .seconds(10))?.takeDescriptors().first)
            _ = try dispatcher.receive(deadline: .now + .seconds(10))   // ready
            let (a, b) = try SocketDescriptor.pair()
            // A connections message that claims two connections and carries one descriptor.
            try dispatcher.send([1, 0x21, 0, 2] + Array(repeating: 0, count: 22), descriptors: [a.rawValue])
            _ = try doorbell.send([1])
            try await running.value
            #expect(try dispatcher.receive(deadline: .now + .seconds(10)) == nil, "the worker closed its end")
            for socket in [a, b, doorbell] { try socket.close() }
            try dispatcher.close()
            try await group.shutdownGracefully()
            #expect(eventually { noneLeaked(since: before) }, "\(allOpenDescriptors()) vs \(before)")
        }

        /// With `namesListeners`, each pipeline starts with the name of the listener the connection
        /// came from: from the dispatcher's message, and from the names of given listeners.
        @Test func listenerNamesTravelWithConnectionsWhenAskedFor() async throws {
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            func namedServer(_ source: ConnectionSource) -> ConnectionServer<Void> {
                ConnectionServer(source: source, group: group, configuration: .init(namesListeners: true), logger: Self.quiet) { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(NameGreeter()) }
                }
            }
            // Handoff: the name comes in the dispatcher's message.
            let (dispatcher, worker) = try DescriptorChannel.pair()
            let handoff = namedServer(.handoff(channel: worker.socket))
            let shared = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let sharedAddress = try shared.socketDescription().localAddress
            let alone = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let aloneAddress = try alone.socketDescription().localAddress
            // The dispatcher's stop ends the handoff server: then the group shuts down gracefully.
            let services = ServiceGroup(configuration: .init(services: [
                .init(service: handoff, successTerminationBehavior: .gracefullyShutdownGroup),
                .init(service: namedServer(.listeners([shared], names: ["api"]))),
                .init(service: namedServer(.listeners([alone], names: ["admin"], sharedWithOtherProcesses: false))),
            ], logger: Self.quiet))
            let running = Task { try await services.run() }

            let doorbell = try #require(try dispatcher.receive(deadline: .now + .seconds(10))?.takeDescriptors().first)
            _ = try dispatcher.receive(deadline: .now + .seconds(10))   // ready
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            let client = try SocketDescriptor.connected(to: try listener.socketDescription().localAddress)
            let accepted = try #require(try listener.accept())
            try dispatcher.send(WorkerMessage.connections([
                HandedConnection(id: 1, listenerName: "web", peerAddress: "p", localAddress: "l"),
            ]).bytes, descriptors: [accepted.rawValue])
            _ = try doorbell.send([1])
            #expect(try WorkerMessage(bytes: try #require(try dispatcher.receive(deadline: .now + .seconds(10))).bytes) == .accepted([1], active: 1))
            try accepted.close()   // the dispatcher's copy, once acknowledged
            #expect(try read(client) == "hello web")
            #expect(try read(try SocketDescriptor.connected(to: sharedAddress)) == "hello api")
            #expect(eventually { (try? SocketDescriptor.connected(to: aloneAddress)).map { (try? read($0)) == "hello admin" } == true })

            try dispatcher.send(WorkerMessage.stop.bytes)
            _ = try doorbell.send([1])
            try await running.value
            for socket in [doorbell, listener, client] { try socket.close() }
            try await group.shutdownGracefully()
        }

        /// What the environment names is checked, and a missing source is a clear error.
        @Test func badEnvironmentsAreClearErrors() throws {
            let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            defer { unsetenv("SOCKSHARE_WORKER_FD") }
            for (value, expected) in [("999", "is not an open descriptor"), ("x", "is not an open descriptor"),
                                      ("\(listener.rawValue)", "is not a SOCK_SEQPACKET Unix socket")] {
                setenv("SOCKSHARE_WORKER_FD", value, 1)
                #expect { try ConnectionSource.fromEnvironment() } throws: { error in
                    (error as? SocketShareError)?.detail == "SOCKSHARE_WORKER_FD=\(value) \(expected)"
                }
            }
            unsetenv("SOCKSHARE_WORKER_FD")
            #expect(try ConnectionSource.fromEnvironment() == nil, "nothing set: nil, for the caller's fallback")
            #expect("\(try ConnectionSource.fromEnvironment() ?? .bind(host: "::1", port: 80))" == "bind [::1]:80")
            try listener.close()
        }

        /// The worker-side decoder takes ids (and listener names when asked) and refuses what does
        /// not add up.
        @Test func theWorkerSideDecoderIsStrict() throws {
            let good = WorkerMessage.connections([
                HandedConnection(id: 1, listenerName: "web", peerAddress: "127.0.0.1:1", localAddress: "127.0.0.1:2"),
                HandedConnection(id: 2, listenerName: "", peerAddress: "", localAddress: ""),
            ]).bytes
            for names in [false, true] {
                let decoded = try good.withUnsafeBytes { (bytes) throws(SocketShareError) in
                    try WorkerChannel.decode(bytes, descriptors: 2, listenerNames: names)
                }
                guard case .connections(let ids, let listeners, _)? = decoded else {
                    Issue.record("not connections")
                    return
                }
                #expect(ids == [1, 2])
                #expect(listeners == (names ? ["web", ""] : nil))
            }
            let bad: [([UInt8], Int, String)] = [
                (good, 1, "2 connections came with 1 descriptors"),
                (Array(good.dropLast()), 2, "input ends"),
                (good + [0], 2, "1 unexpected bytes"),
                ([1], 0, "1 bytes"), ([2, 0x21], 0, "protocol version 2"), ([1, 0x99], 0, "153 is not a message type"),
                ([1, 0x21, 0, 65], 65, "65 connections; at most 64"),
            ]
            for (bytes, descriptors, expected) in bad {
                #expect { try bytes.withUnsafeBytes { try WorkerChannel.decode($0, descriptors: descriptors) } } throws: { error in
                    (error as? SocketShareError)?.detail.contains(expected) == true
                }
            }
            let stop = try [UInt8]([1, 0x22]).withUnsafeBytes { (bytes) throws(SocketShareError) in try WorkerChannel.decode(bytes, descriptors: 0) }
            #expect(stop.map { if case .stop = $0 { true } else { false } } == true)
        }
    }
}

/// Every descriptor this process has open, of every kind (`openDescriptors()` leaves out the
/// epoll and eventfd kinds libdispatch opens lazily; the shared-listener acceptor opens those too).
private func allOpenDescriptors() -> [CInt] {
    Kernel.directoryEntries("/proc/self/fd").compactMap { CInt($0) }.filter { Kernel.descriptorFlags($0) != nil }.sorted()
}

/// The open descriptors once they have stopped changing for 200 ms (what earlier tests left
/// closing has closed), at most 5 s.
private func steadyDescriptors() -> Set<CInt> {
    var last = allOpenDescriptors()
    var same = 0
    let deadline = ContinuousClock.now + .seconds(5)
    while same < 10, ContinuousClock.now < deadline {
        var pause = timespec(tv_sec: 0, tv_nsec: 20_000_000)
        nanosleep(&pause, nil)
        let now = allOpenDescriptors()
        same = now == last ? same + 1 : 0
        last = now
    }
    return Set(last)
}

/// Whether every descriptor open now was open at `before` (something may have closed meanwhile).
private func noneLeaked(since before: Set<CInt>) -> Bool {
    Set(allOpenDescriptors()).isSubset(of: before)
}

/// What a peer sends until it closes, or until `deadline`.
private func read(_ socket: SocketDescriptor, until deadline: ContinuousClock.Instant = .now + .seconds(10)) throws -> String {
    var text = ""
    while try socket.waitUntilReadable(deadline: deadline) {
        let chunk = try socket.receive()
        if chunk.isEmpty { break }
        text += String(decoding: chunk, as: UTF8.self)
    }
    return text
}

/// Writes "hello" as soon as a connection is active, then closes it.
private final class Greeter: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        context.writeAndFlush(NIOAny(context.channel.allocator.buffer(string: "hello"))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}

/// Answers the first bytes it reads as an HTTP server would (`hello from PID`), then closes.
private final class HTTPAnswer: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let body = "hello from \(getpid())\n"
        let response = "HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        let channel = context.channel
        context.writeAndFlush(NIOAny(channel.allocator.buffer(string: response))).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// Writes "hello NAME", NAME from the pipeline's ``ListenerName``, then closes.
private final class NameGreeter: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        let name = (try? context.pipeline.syncOperations.handler(type: ListenerName.self).name) ?? "nobody"
        let channel = context.channel
        context.writeAndFlush(NIOAny(channel.allocator.buffer(string: "hello \(name)"))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}

/// Echoes what it reads after `delay`, then closes; ignores the drain (it finishes by itself).
private final class SlowEcho: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let delay: TimeAmount

    init(delay: TimeAmount) { self.delay = delay }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = Self.unwrapInboundIn(data)
        let channel = context.channel
        context.eventLoop.scheduleTask(in: delay) {
            channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
