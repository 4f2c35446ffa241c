import Glibc
import NIOCore
import NIOPosix
import SocketShare
import Synchronization

/// Accepts on a listening socket that other processes accept on too, and hands each connection to
/// SwiftNIO as a channel.
///
/// When several processes wait on one listener, the kernel may wake more than one for a single
/// connection; all but one then find nothing to accept. SwiftNIO's own server channel treats that as
/// impossible — debug builds assert (`readResult == .some` in `BaseSocketChannel.readable0`,
/// swift-nio#3500) — and it sets `O_NONBLOCK` on the socket, for every holder. This acceptor does
/// neither: a dedicated thread calls `accept4(2)`, which wakes one waiter per connection, and
/// registers each accepted socket with `ClientBootstrap.withConnectedSocket`.
///
/// ``stop()`` ends accepting without disturbing the socket for its other holders: the thread's
/// blocking `accept` is interrupted with `SIGURG` (whose handler does nothing), so a connection is
/// either accepted and served, or left in the queue for another process — never dropped.
///
/// Use it for listeners of `sockshare serve --mode shared` (or any socket-activated listener shared
/// by several workers); `ServerBootstrap.bind(adopting:backlog:childChannelInitializer:)` suits a
/// listener this process accepts on alone.
public final class SharedListenerAcceptor: Sendable {
    private let listener: SocketDescriptor
    private let makeBootstrap: @Sendable () -> ClientBootstrap
    private let state = Locked<(thread: pthread_t?, stopping: Bool, running: Bool)>((nil, false, false))
    /// Connections accepted whose channels are not registered and active yet.
    private let registering = Atomic<Int>(0)
    /// Connections accepted whose channels have not closed (or whose registration failed).
    private let active = Atomic<Int>(0)

    /// Prepares to accept on `listener`, initialising each connection with the channel initializer
    /// of the bootstrap `makeBootstrap` returns (called once, on the accepting thread). The acceptor
    /// owns `listener`.
    public init(listener: SocketDescriptor, bootstrap makeBootstrap: @escaping @Sendable () -> ClientBootstrap) {
        self.listener = listener
        self.makeBootstrap = makeBootstrap
    }

    /// Accepts on the calling thread until ``stop()`` (or the listener fails); each connection
    /// becomes a channel. A failed registration closes that connection; `EMFILE`/`ENFILE` pause
    /// briefly instead of spinning.
    public func run() {
        Self.installInterruptHandler()
        // Threads started from libdispatch's workers inherit their mask, which blocks signals.
        var interrupt = sigset_t()
        sigemptyset(&interrupt)
        sigaddset(&interrupt, SIGURG)
        pthread_sigmask(SIG_UNBLOCK, &interrupt, nil)
        let go = state.withLock { state -> Bool in
            if state.stopping { return false }
            state.thread = pthread_self()
            state.running = true
            return true
        }
        guard go else { return }
        defer { state.withLock { $0.running = false } }
        let bootstrap = makeBootstrap()
        while !state.withLock({ $0.stopping }) {
            do throws(SocketShareError) {
                guard let connection = try listener.accept(interruptible: true) else {
                    // The socket is non-blocking (another holder set O_NONBLOCK): wait for the next one.
                    _ = try listener.waitUntilReadable(deadline: .now + .milliseconds(100))
                    continue
                }
                registering.add(1, ordering: .relaxed)
                active.add(1, ordering: .relaxed)
                bootstrap.withConnectedSocket(connection.release()).whenComplete { [self] result in
                    switch result {
                    case .success(let channel): channel.closeFuture.whenComplete { [self] _ in active.subtract(1, ordering: .relaxed) }
                    case .failure: active.subtract(1, ordering: .relaxed)
                    }
                    registering.subtract(1, ordering: .relaxed)
                }
            } catch {
                switch error.errno?.rawValue {
                case EINTR?, EPROTO?, EPERM?: continue
                case EMFILE?, ENFILE?, ENOBUFS?, ENOMEM?: usleep(10_000)
                default: return
                }
            }
        }
    }

    /// How many connections this acceptor took whose channels have not closed yet: after ``stop()``,
    /// a draining worker waits for it to reach 0 (as `WorkerConnections.activeCount` in handoff mode).
    public var activeCount: Int { active.load(ordering: .relaxed) }

    /// Stops accepting and returns once ``run()`` has returned and every connection it accepted is
    /// an active channel (so a caller that then waits for open channels to close misses none).
    /// Connections still queued are left to the listener's other holders.
    public func stop() {
        while true {
            let (thread, running) = state.withLock { state -> (pthread_t?, Bool) in
                state.stopping = true
                return (state.thread, state.running)
            }
            guard running, let thread else { break }
            pthread_kill(thread, SIGURG)
            usleep(1_000)
        }
        while registering.load(ordering: .relaxed) > 0 { usleep(1_000) }
    }

    private static let handlerInstalled = Locked(false)

    /// A `SIGURG` handler that does nothing, installed without `SA_RESTART`, so the signal makes a
    /// blocked `accept` return `EINTR`. (`SIGURG` is otherwise ignored; the kernel sends it only to a
    /// socket's owner set with `F_SETOWN`.)
    private static func installInterruptHandler() {
        handlerInstalled.withLock { installed in
            guard !installed else { return }
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { _ in }
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0
            sigaction(SIGURG, &action, nil)
            installed = true
        }
    }
}
