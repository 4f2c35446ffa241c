import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SocketShare
import SocketShareCore

/// Accepts on listeners that other processes accept on too, with a thread of its own, for builds
/// in which SwiftNIO's assertions are on.
///
/// When several processes wait on one listener, the kernel wakes more than one for a connection
/// and all but one find nothing to accept; SwiftNIO's server channel asserts that a wake-up always
/// reads something (`readResult == .some` in `BaseSocketChannel.readable0`, swift-nio#3500), so a
/// debug build of a shared-mode worker would crash. This intake runs one ``Reactor`` for all of the
/// process's listeners, each watched with `EPOLLEXCLUSIVE` (the kernel wakes one waiter): it
/// accepts until `EAGAIN`, then registers the batch with one hop per event loop. Release builds
/// use ``ListenerIntake`` instead, which is SwiftNIO's own accept path.
///
/// The listeners are made non-blocking (`O_NONBLOCK` belongs to the socket, so every holder sees
/// it; SwiftNIO's server channel does the same).
final class AcceptThread: ConnectionIntake {
    private let reactor: Reactor
    private let listeners: [(name: String, socket: SocketDescriptor)]
    private let registration: LoopRegistration
    private let logger: Logger
    /// Touched on the reactor's thread only.
    private let watches = NIOLockedValueBox<[Reactor.Watch]>([])

    private init(
        reactor: Reactor, listeners: [(name: String, socket: SocketDescriptor)], registration: LoopRegistration, logger: Logger
    ) {
        self.reactor = reactor
        self.listeners = listeners
        self.registration = registration
        self.logger = logger
    }

    /// Whether SwiftNIO's server channel would assert on a wake-up another process answered.
    static var assertionsEnabled: Bool {
        var enabled = false
        assert({ enabled = true; return true }())
        return enabled
    }

    /// Starts accepting on `listeners` (which it owns from now on), registering through `registration`.
    static func start(
        listeners: [(name: String, socket: SocketDescriptor)], registration: LoopRegistration, logger: Logger
    ) throws -> AcceptThread {
        let intake: AcceptThread
        do {
            for listener in listeners { try listener.socket.setNonBlocking(true) }
            intake = AcceptThread(
                reactor: try Reactor(name: "shared-accept"), listeners: listeners, registration: registration, logger: logger)
            try intake.reactor.start()
        } catch {
            for (_, socket) in listeners { try? socket.close() }
            throw error
        }
        let watching: Result<Void, SocketShareError>? = intake.reactor.sync {
            Result { () throws(SocketShareError) in try intake.watchListeners() }
        }
        if case .failure(let error)? = watching {
            intake.close()
            throw error
        }
        logger.debug("accepting on a thread (this build has assertions enabled)", metadata: ["listeners": "\(listeners.count)"])
        return intake
    }

    func stopTaking(_ done: @escaping @Sendable () -> Void) {
        reactor.stop()
        for (_, socket) in listeners { try? socket.close() }
        registration.registry.intakeEnded()
        done()
    }

    func close() {
        stopTaking {}
    }

    /// On the reactor's thread.
    private func watchListeners() throws(SocketShareError) {
        for index in listeners.indices {
            let watch = try reactor.watch(listeners[index].socket.rawValue, exclusive: true) { [unowned self] _ in
                acceptAll(index)
            }
            watches.withLockedValue { $0.append(watch) }
        }
    }

    /// On the reactor's thread: accepts until `EAGAIN`, then registers the batch.
    private func acceptAll(_ index: Int) {
        let listener = listeners[index]
        var accepted: [CInt] = []
        var names: [String] = []
        defer { registration.register(accepted, listeners: names) }
        while true {
            do throws(SocketShareError) {
                guard let fd = try Kernel.accept(listener.socket.rawValue, flags: Kernel.nonBlockingType) else { return }
                accepted.append(fd)
                names.append(listener.name)
            } catch {
                switch error.errno?.rawValue {
                case EMFILE?, ENFILE?, ENOBUFS?, ENOMEM?:
                    pause(index, because: error)
                case EPROTO?, EPERM?:
                    continue
                default:
                    logger.error("accept failed; accepting no more on it", metadata: ["listener": "\(listener.name)", "error": "\(error)"])
                    reactor.unwatch(watches.withLockedValue { $0[index] })
                }
                return
            }
        }
    }

    /// Out of descriptors (or memory): the listener stays readable, so it is left alone for 10 ms
    /// (removed and watched again) instead of being retried in a spin.
    private func pause(_ index: Int, because error: SocketShareError) {
        logger.warning("cannot accept now; trying again in 10 ms", metadata: ["error": "\(error)"])
        let watch = watches.withLockedValue { $0[index] }
        reactor.unwatch(watch)
        reactor.schedule(at: .now + .milliseconds(10)) { [unowned self] in
            guard let again = try? reactor.watch(listeners[index].socket.rawValue, exclusive: true, { [unowned self] _ in acceptAll(index) })
            else { return }
            watches.withLockedValue { $0[index] = again }
        }
    }
}
