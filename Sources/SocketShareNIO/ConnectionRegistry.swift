import Logging
import NIOConcurrencyHelpers
import NIOCore
import SocketShareCore

/// The channels a ``ConnectionServer`` has taken and not yet seen close, and the server's phase:
/// taking, draining, closed. It tells the server when a drain is over (no connection left, and the
/// intake will deliver none).
///
/// Every intake calls ``initialize(_:)`` for each new channel before the channel is active (from
/// the channel initializer), so a connection is counted from the moment SwiftNIO has it.
/// Descriptors on their way to an event loop are counted too (``willRegister(_:)``), so a drain
/// cannot end while one is in flight.
final class ConnectionRegistry: Sendable {
    enum Phase: Sendable {
        /// Taking connections.
        case taking
        /// Taking no new ones; the open ones finish (they were asked to, with `ChannelShouldQuiesceEvent`).
        case draining
        /// Everything is closed or closing; new channels are refused.
        case closed
    }

    private struct State {
        var phase = Phase.taking
        var open: [ObjectIdentifier: any Channel] = [:]
        /// Descriptors handed to an event loop and not registered yet.
        var inFlight = 0
        /// Whether the intake said it will deliver no more.
        var intakeEnded = false
        var finished = false
        var onFinish: (@Sendable () -> Void)?
        var onOpenCountChange: (@Sendable () -> Void)?
        var onDrain: (@Sendable () -> Void)?
    }

    let logger: Logger
    /// Whether each channel gets a ``ListenerName`` handler first.
    let namesListeners: Bool
    private let initializer: @Sendable (any Channel) -> EventLoopFuture<Void>
    private let state = NIOLockedValueBox(State())

    /// - Parameter setUp: The server's channel initializer (and whatever it does with the result).
    init(logger: Logger, namesListeners: Bool = false, setUp: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>) {
        self.logger = logger
        self.namesListeners = namesListeners
        self.initializer = setUp
    }

    /// Calls `body` once the drain is over (at once if it is).
    func onFinish(_ body: @escaping @Sendable () -> Void) {
        let now = state.withLockedValue { state -> Bool in
            if state.finished { return true }
            state.onFinish = body
            return false
        }
        if now { body() }
    }

    /// How many connections are open (taken and not closed), counting those on their way to a loop.
    var openCount: Int { state.withLockedValue { $0.open.count + $0.inFlight } }

    var phase: Phase { state.withLockedValue { $0.phase } }

    /// Whether the drain is over: nothing open, nothing more coming.
    var isFinished: Bool { state.withLockedValue { $0.finished } }

    /// `count` descriptors are on their way to an event loop.
    func willRegister(_ count: Int) {
        state.withLockedValue { $0.inFlight += count }
    }

    /// One of them has been registered (or failed to be).
    func didRegister() {
        let finish = state.withLockedValue { state -> (@Sendable () -> Void)? in
            state.inFlight -= 1
            return Self.finishIfDone(&state)
        }
        finish?()
    }

    /// Calls `body` (on any thread) when the drain starts: on ``beginDrain()``, or when the intake
    /// ends while the server was taking (the dispatcher said `stop`).
    func onDrain(_ body: @escaping @Sendable () -> Void) {
        state.withLockedValue { $0.onDrain = body }
    }

    /// Calls `body` (on any thread) whenever a channel closes, for load reports.
    func onOpenCountChange(_ body: @escaping @Sendable () -> Void) {
        state.withLockedValue { $0.onOpenCountChange = body }
    }

    /// Counts a new channel and sets it up (``track(_:)``, then ``setUp(_:listener:)``); refuses it
    /// when the server is closed.
    func initialize(_ channel: any Channel, listener: String?) -> EventLoopFuture<Void> {
        guard track(channel) else { return channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
        return setUp(channel, listener: listener)
    }

    /// Counts a new channel until it closes. Returns false, counting nothing, when the server is
    /// closed: the caller closes the channel.
    func track(_ channel: any Channel) -> Bool {
        let id = ObjectIdentifier(channel)
        let taken = state.withLockedValue { state -> Bool in
            guard state.phase != .closed else { return false }
            state.open[id] = channel
            return true
        }
        guard taken else { return false }
        channel.closeFuture.whenComplete { [self] _ in
            let (finish, changed) = state.withLockedValue { state -> ((@Sendable () -> Void)?, (@Sendable () -> Void)?) in
                state.open[id] = nil
                return (Self.finishIfDone(&state), state.onOpenCountChange)
            }
            changed?()
            finish?()
        }
        return true
    }

    /// Runs the server's initializer on a tracked channel, after a ``ListenerName`` handler when
    /// the server names listeners; while draining, the channel is then asked to quiesce.
    func setUp(_ channel: any Channel, listener: String?) -> EventLoopFuture<Void> {
        if namesListeners, let listener {
            do {
                try channel.pipeline.syncOperations.addHandler(ListenerName(listener))
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }
        let future = initializer(channel)
        if phase == .draining {
            future.whenSuccess { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        }
        return future
    }

    /// Starts draining: every open channel is asked to quiesce (`ChannelShouldQuiesceEvent`, which
    /// SwiftNIO's HTTP server pipeline, Hummingbird and Vapor answer by finishing the request in
    /// flight and closing). Returns false when the server was already draining or closed.
    @discardableResult
    func beginDrain() -> Bool {
        drain(intakeEnded: false)
    }

    /// The intake will deliver no more connections; when that ends the taking phase (the
    /// dispatcher said `stop`, or went away), the drain starts.
    func intakeEnded() {
        drain(intakeEnded: true)
    }

    @discardableResult
    private func drain(intakeEnded: Bool) -> Bool {
        let started = state.withLockedValue { state -> (channels: [any Channel], hook: (@Sendable () -> Void)?, finish: (@Sendable () -> Void)?) in
            if intakeEnded { state.intakeEnded = true }
            guard state.phase == .taking else { return ([], nil, Self.finishIfDone(&state)) }
            state.phase = .draining
            return (Array(state.open.values), state.onDrain ?? {}, Self.finishIfDone(&state))
        }
        for channel in started.channels {
            channel.eventLoop.execute { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        }
        started.hook?()
        started.finish?()
        return started.hook != nil
    }

    /// Closes every open channel and refuses new ones (cancellation, or a drain past its deadline).
    /// Returns how many were closed.
    @discardableResult
    func closeAll() -> Int {
        let (channels, finish) = state.withLockedValue { state -> ([any Channel], (@Sendable () -> Void)?) in
            state.phase = .closed
            return (Array(state.open.values), Self.finishIfDone(&state))
        }
        for channel in channels { channel.close(promise: nil) }
        finish?()
        return channels.count
    }

    private static func finishIfDone(_ state: inout State) -> (@Sendable () -> Void)? {
        guard !state.finished, state.phase != .taking, state.intakeEnded, state.open.isEmpty, state.inFlight == 0 else {
            return nil
        }
        state.finished = true
        defer { state.onFinish = nil }
        return state.onFinish ?? {}
    }
}
