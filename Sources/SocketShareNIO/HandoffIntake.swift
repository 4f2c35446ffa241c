import Glibc
import Logging
import NIOCore
import NIOPosix
import SocketShare
import Synchronization
import SocketShareCore

/// Takes the connections `sockshare serve --mode handoff` hands over, on an event loop.
///
/// SwiftNIO cannot wait on a socket it does not read itself, and reading the dispatcher's channel
/// as a byte stream would drop the descriptors its messages carry. So the worker gives the
/// dispatcher a doorbell (``WorkerMessage/doorbell``, a socketpair): the dispatcher writes a byte
/// to it after each message, SwiftNIO reads the doorbell like any socket, and this intake then
/// receives every waiting message on the same event loop — no thread of its own, no hop per
/// connection. Each batch is acknowledged before its connections are touched, then registered in
/// one go (``LoopRegistration``).
///
/// A graceful stop tells the dispatcher `leaving`; connections already on their way are still
/// taken, until the dispatcher's `stop` says the last one has been sent.
final class HandoffIntake: ConnectionIntake {
    private enum Phase {
        case taking
        /// `leaving` sent; waiting for the dispatcher's `stop`.
        case leaving
        case ended
    }

    /// The state only the intake's event loop touches.
    private final class State {
        let worker: WorkerChannel
        var phase = Phase.taking
        var doorbell: (any Channel)?
        var done: [@Sendable () -> Void] = []
        var flushScheduled = false
        var reportedLoad = -1

        init(worker: WorkerChannel) { self.worker = worker }
    }

    /// How long a changed load may wait before it is reported to the dispatcher.
    static let loadReportDelay = TimeAmount.milliseconds(2)

    let loop: any EventLoop
    private let state: NIOLoopBound<State>
    private let registration: LoopRegistration
    private let logger: Logger
    private let loadReportPending = Atomic<Bool>(false)

    /// Runs on `loop`.
    private init(loop: any EventLoop, channel: SocketDescriptor, registration: LoopRegistration, logger: Logger) {
        self.loop = loop
        self.state = NIOLoopBound(State(worker: WorkerChannel(socket: channel)), eventLoop: loop)
        self.registration = registration
        self.logger = logger
    }

    /// Starts taking connections on `channel` (the worker's end, which the intake now owns): makes
    /// the doorbell, registers it with one of `registration`'s event loops, and says `ready` when
    /// `announce` is set.
    static func start(
        channel: SocketDescriptor, registration: LoopRegistration, announce: Bool, logger: Logger
    ) async throws -> HandoffIntake {
        let doorbell: SocketDescriptor
        do {
            doorbell = try WorkerChannel.makeDoorbell(on: channel, deadline: .now + .seconds(5))
        } catch {
            try? channel.close()
            if [EPIPE, ECONNRESET].contains(error.errno?.rawValue ?? 0) {
                throw SocketShareError(
                    .holderGone, operation: "serve connections", errno: error.errno,
                    detail: "sockshare serve closed this worker's channel before it started (serve refused this "
                        + "worker's uid or gid, has as many of its workers as it takes, or stopped)")
            }
            throw error
        }
        let loop = registration.group.next()
        let intake = try await loop.submit {
            HandoffIntake(loop: loop, channel: channel, registration: registration, logger: logger)
        }.get()
        do {
            let bell = try await ClientBootstrap(group: loop)
                .channelInitializer { bell in
                    bell.eventLoop.makeCompletedFuture { try bell.pipeline.syncOperations.addHandler(Doorbell(intake: intake)) }
                }
                .withConnectedSocket(doorbell.release()).get()
            try await loop.submit {
                let state = intake.state.value
                state.doorbell = bell
                if announce { state.worker.send(.ready) }
                // The dispatcher rings once when it learns of the doorbell; what it sent before that is waiting.
                intake.receive()
            }.get()
        } catch {
            loop.execute { intake.end() }
            throw error
        }
        registration.registry.onOpenCountChange { [weak intake] in intake?.loadChanged() }
        return intake
    }

    func stopTaking(_ done: @escaping @Sendable () -> Void) {
        loop.execute { [self] in
            let state = state.value
            switch state.phase {
            case .taking:
                logger.debug("telling the dispatcher this worker is leaving")
                state.phase = .leaving
                state.done.append(done)
                if !state.worker.send(.leaving) { end() }
                scheduleFlushIfNeeded()
            case .leaving:
                state.done.append(done)
            case .ended:
                done()
            }
        }
    }

    func close() {
        loop.execute { [self] in end() }
    }

    /// Receives every waiting message: acknowledges and registers connections, notes `stop`. When
    /// the dispatcher took back what this worker had not acknowledged (`takenBack`: it stalled, and
    /// other workers have those connections now), every connection read with it is closed unserved.
    private func receive() {
        let state = state.value
        guard state.phase != .ended else { return }
        var deliveries: [WorkerChannel.Delivery] = []
        let open: Bool
        do {
            open = try state.worker.receiveWaiting(listenerNames: registration.registry.namesListeners) { deliveries.append($0) }
        } catch {
            logger.error("the dispatcher's channel failed; taking no more connections", metadata: ["error": "\(error)"])
            end()
            return
        }
        let takenBack = deliveries.contains { if case .takenBack = $0 { true } else { false } }
        var stopped = takenBack
        for delivery in deliveries {
            guard case .connections(let ids, let listeners, let descriptors) = delivery else {
                if case .stop = delivery { stopped = true }
                continue
            }
            if takenBack {
                for fd in descriptors { try? Kernel.close(fd) }
                continue
            }
            FaultPoint.reached("worker.beforeAcknowledge")
            let active = registration.registry.openCount + descriptors.count
            if !state.worker.send(.accepted(ids, active: UInt32(clamping: active))) { stopped = true }
            state.reportedLoad = active
            registration.register(descriptors, listeners: listeners)
        }
        if takenBack {
            logger.warning("the dispatcher took back the connections this worker had not acknowledged (it stalled)")
        }
        if stopped || !open {
            logger.debug(stopped ? "the dispatcher asked this worker to stop" : "the dispatcher closed the channel")
            end()
        } else {
            scheduleFlushIfNeeded()
        }
    }

    /// The doorbell closed: the dispatcher is gone. What it sent before that is still taken.
    private func dispatcherGone() {
        receive()
        end()
    }

    private func end() {
        let state = state.value
        guard state.phase != .ended else { return }
        state.phase = .ended
        state.doorbell?.close(promise: nil)
        state.doorbell = nil
        try? state.worker.socket.close()
        let done = state.done
        state.done = []
        registration.registry.intakeEnded()
        for body in done { body() }
    }

    /// Messages wait in the outbox (the dispatcher's queue was full): try again in a moment.
    private func scheduleFlushIfNeeded() {
        let state = state.value
        guard state.worker.hasPending, !state.flushScheduled else { return }
        state.flushScheduled = true
        loop.scheduleTask(in: .milliseconds(1)) { [self] in
            let state = self.state.value
            state.flushScheduled = false
            guard state.phase != .ended else { return }
            if !state.worker.flush() { end() } else { scheduleFlushIfNeeded() }
        }
    }

    /// A connection opened or closed somewhere: report the load within ``loadReportDelay``.
    private func loadChanged() {
        guard !loadReportPending.exchange(true, ordering: .acquiringAndReleasing) else { return }
        loop.execute { [self] in
            loop.scheduleTask(in: Self.loadReportDelay) { [self] in
                loadReportPending.store(false, ordering: .releasing)
                let state = state.value
                guard state.phase != .ended else { return }
                let load = registration.registry.openCount
                guard load != state.reportedLoad else { return }
                state.reportedLoad = load
                if !state.worker.send(.load(active: UInt32(clamping: load))) { end() }
                scheduleFlushIfNeeded()
            }
        }
    }

    /// Reads the doorbell's bytes (their count does not matter) and receives what waits.
    private final class Doorbell: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let intake: HandoffIntake

        init(intake: HandoffIntake) { self.intake = intake }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

        func channelReadComplete(context: ChannelHandlerContext) {
            intake.receive()
        }

        func channelInactive(context: ChannelHandlerContext) {
            intake.dispatcherGone()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
