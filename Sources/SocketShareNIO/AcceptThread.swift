import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SocketShare

/// Accepts on listeners that other processes accept on too, with a thread of its own, for builds
/// in which SwiftNIO's assertions are on.
///
/// When several processes wait on one listener, the kernel wakes more than one for a connection
/// and all but one find nothing to accept; SwiftNIO's server channel asserts that a wake-up always
/// reads something (`readResult == .some` in `BaseSocketChannel.readable0`, swift-nio#3500), so a
/// debug build of a shared-mode worker would crash. This intake has one thread for all of the
/// process's listeners: `epoll_wait` with `EPOLLEXCLUSIVE` (the kernel wakes one waiter), then
/// `accept4` until `EAGAIN`, then one hop per event loop for the whole batch. Release builds use
/// ``ListenerIntake`` instead, which is SwiftNIO's own accept path.
///
/// The listeners are made non-blocking (`O_NONBLOCK` belongs to the socket, so every holder sees
/// it; SwiftNIO's server channel does the same).
final class AcceptThread: ConnectionIntake {
    private let epoll: CInt
    private let wake: CInt
    private let listeners: [(name: String, socket: SocketDescriptor)]
    private let state = NIOLockedValueBox<(running: Bool, done: [@Sendable () -> Void])>((true, []))

    private init(epoll: CInt, wake: CInt, listeners: [(name: String, socket: SocketDescriptor)]) {
        self.epoll = epoll
        self.wake = wake
        self.listeners = listeners
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
        let epoll: CInt, wake: CInt
        do {
            epoll = try Kernel.epollCreate()
            do {
                wake = try Kernel.eventDescriptor()
            } catch {
                Glibc.close(epoll)
                throw error
            }
        } catch {
            for (_, socket) in listeners { try? socket.close() }
            throw error
        }
        let intake = AcceptThread(epoll: epoll, wake: wake, listeners: listeners)
        do {
            try Kernel.epollAdd(epoll, wake, data: Self.stopTag)
            for (index, listener) in listeners.enumerated() {
                try listener.socket.setNonBlocking(true)
                try Kernel.epollAdd(epoll, listener.socket.rawValue, data: UInt64(index), exclusive: true)
            }
            try DetachedThread.start { intake.run(registration: registration, logger: logger) }
        } catch {
            intake.release()
            throw error
        }
        logger.debug("accepting on a thread (this build has assertions enabled)", metadata: ["listeners": "\(listeners.count)"])
        return intake
    }

    func stopTaking(_ done: @escaping @Sendable () -> Void) {
        let running = state.withLockedValue { state -> Bool in
            if state.running { state.done.append(done) }
            return state.running
        }
        guard running else { return done() }
        Kernel.signal(eventDescriptor: wake)
    }

    func close() {
        stopTaking {}
    }

    /// The epoll tag of the stop signal (listeners are tagged with their index).
    private static let stopTag = UInt64(UInt32.max)

    private func run(registration: LoopRegistration, logger: Logger) {
        var stopping = false
        var pausedForDescriptors = false
        while !stopping {
            if pausedForDescriptors {
                // Out of descriptors: wait for the stop signal only, for a moment, then try again.
                pausedForDescriptors = false
                var wait = [pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
                if poll(&wait, 1, 10) > 0 { break }
            }
            let ready: [UInt64]
            do throws(SocketShareError) {
                ready = try Kernel.epollWait(epoll, milliseconds: -1)
            } catch {
                logger.error("waiting for connections failed; accepting no more", metadata: ["error": "\(error)"])
                break
            }
            var accepted: [CInt] = []
            var names: [String] = []
            for tag in ready {
                if tag == Self.stopTag {
                    stopping = true
                    continue
                }
                let listener = listeners[Int(tag)]
                while true {
                    do throws(SocketShareError) {
                        guard let fd = try Kernel.accept(listener.socket.rawValue, flags: Kernel.nonBlockingType) else { break }
                        accepted.append(fd)
                        names.append(listener.name)
                    } catch {
                        switch error.errno?.rawValue {
                        case EMFILE?, ENFILE?, ENOBUFS?, ENOMEM?:
                            pausedForDescriptors = true
                        case EPROTO?, EPERM?:
                            continue
                        default:
                            logger.error("accept failed; accepting no more", metadata: ["listener": "\(listener.name)", "error": "\(error)"])
                            stopping = true
                        }
                        break
                    }
                }
            }
            registration.register(accepted, listeners: names)
        }
        let done = state.withLockedValue { state -> [@Sendable () -> Void] in
            state.running = false
            defer { state.done = [] }
            return state.done
        }
        release()
        registration.registry.intakeEnded()
        for body in done { body() }
    }

    private func release() {
        for (_, socket) in listeners { try? socket.close() }
        Glibc.close(wake)
        Glibc.close(epoll)
    }
}
