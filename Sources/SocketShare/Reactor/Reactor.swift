import CSocketShare
import Glibc
import SocketShareCore

/// One thread, one `epoll`: descriptor callbacks, timers, tasks handed in from other threads, and
/// a stop that joins the thread. A long-running component runs on one instead of a thread, a
/// self-pipe and a `poll` loop of its own.
///
/// Everything registered runs on the reactor's thread, one callback at a time, so the state those
/// callbacks touch needs no lock. Other threads talk to the reactor with `execute(_:)` (fire and
/// forget) or `sync(_:)` (wait for the answer). Descriptor callbacks are level-triggered: a
/// callback that leaves data unread is called again on the next round.
///
/// `@unchecked Sendable`: what other threads touch is behind a lock; the rest (watches, timers) is
/// only touched on the reactor's thread, which every method that reaches it says.
package final class Reactor: @unchecked Sendable {
    /// A descriptor being watched.
    package struct Watch: Hashable, Sendable {
        package let tag: UInt64
    }

    /// A timer that has not fired yet.
    package struct Timer: Hashable, Sendable {
        package let id: UInt64
    }

    private struct Shared {
        package var tasks: [@Sendable () -> Void] = []
        /// What answers each `sync(_:)` still waiting, should the reactor stop first.
        package var abandoned: [UInt64: @Sendable () -> Void] = [:]
        package var nextWaiter: UInt64 = 0
        package var started = false
        package var stopping = false
        package var finished = false
        /// Whether the epoll and eventfd are closed (by a `Reactor.stop()` that joined the thread).
        package var closed = false
        package var thread: pthread_t?
        package var running: pthread_t?
    }

    private let epoll: CInt
    private let wake: CInt
    private let shared = Locked(Shared())
    private let name: String

    // Touched on the reactor's thread only.
    private var watches: [UInt64: (descriptor: CInt, handler: (UInt32) -> Void)] = [:]
    private var nextTag: UInt64 = 1
    private var timers = TimerQueue()

    /// The tag of the wake-up eventfd in the epoll set.
    private static let wakeTag: UInt64 = 0

    /// A reactor named `name` (for errors); nothing runs until `start()`.
    package init(name: String) throws(SocketShareError) {
        self.name = name
        epoll = try Kernel.epollCreate()
        do {
            wake = try Kernel.eventDescriptor()
        } catch {
            Glibc.close(epoll)
            throw error
        }
        do {
            try Kernel.epollAdd(epoll, wake, data: Self.wakeTag)
        } catch {
            Glibc.close(wake)
            Glibc.close(epoll)
            throw error
        }
    }

    deinit {
        if !shared.withLock({ $0.closed }) {
            Glibc.close(wake)
            Glibc.close(epoll)
        }
    }

    /// Starts the reactor's thread.
    package func start() throws(SocketShareError) {
        shared.withLock { $0.started = true }
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { context in
            Unmanaged<Reactor>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        if result != 0 {
            Unmanaged<Reactor>.fromOpaque(context).release()
            shared.withLock { $0.started = false }
            throw SocketShareError.system("pthread_create", errno: result, detail: "reactor \(name)")
        }
        shared.withLock { $0.thread = thread }
    }

    /// Whether the caller runs on the reactor's thread.
    package var inReactor: Bool {
        shared.withLock { inReactor($0) }
    }

    /// Runs `task` on the reactor's thread, soon; from any thread. Dropped once the reactor stopped.
    package func execute(_ task: @escaping @Sendable () -> Void) {
        // The wake-up is written under the lock, so that it never reaches an eventfd already closed.
        shared.withLock { shared in
            guard !shared.stopping else { return }
            shared.tasks.append(task)
            Kernel.signal(eventDescriptor: wake)
        }
    }

    /// Runs `body` on the reactor's thread and returns its result, waiting for it; nil when the
    /// reactor stops first. On the reactor's own thread, runs it at once.
    package func sync<T: Sendable>(_ body: @escaping @Sendable () -> T) -> T? {
        if inReactor { return body() }
        return wait { answer in answer(body()) }
    }

    /// Runs `body` on the reactor's thread and waits until it (or something it set up, a timer or
    /// a callback) calls `answer`; returns what it answered, or nil when the reactor stops first
    /// (or was never started). Must not be called on the reactor's thread.
    package func wait<T: Sendable>(for body: @escaping @Sendable (_ answer: @escaping @Sendable (T) -> Void) -> Void) -> T? {
        precondition(!inReactor, "Reactor.wait(for:) on the reactor's own thread would never return")
        let completion = Completion<T?>()
        let accepted = shared.withLock { shared -> Bool in
            guard shared.started, !shared.stopping else { return false }
            let waiter = shared.nextWaiter
            shared.nextWaiter += 1
            shared.abandoned[waiter] = { completion.complete(nil) }
            shared.tasks.append { [shared = self.shared] in
                body { value in
                    shared.withLock { _ = $0.abandoned.removeValue(forKey: waiter) }
                    completion.complete(value)
                }
            }
            Kernel.signal(eventDescriptor: wake)
            return true
        }
        guard accepted else { return nil }
        return completion.wait()
    }

    /// Ends the loop after the current round; tasks not yet run are dropped (a `sync(_:)` still
    /// waiting gets nil). From another thread, waits for the reactor's thread to end and closes its
    /// epoll and eventfd; from a callback, they close when the reactor goes away. Idempotent.
    package func stop() {
        let thread = shared.withLock { shared -> pthread_t? in
            if !shared.stopping {
                shared.stopping = true
                Kernel.signal(eventDescriptor: wake)
            }
            defer { shared.thread = nil }
            guard !inReactor(shared) else {
                // Nobody will join a thread that stops itself: let it go when it ends.
                if let thread = shared.thread { pthread_detach(thread) }
                return nil
            }
            return shared.thread
        }
        guard let thread else { return }
        pthread_join(thread, nil)
        shared.withLock { shared in
            guard !shared.closed else { return }
            shared.closed = true
            Glibc.close(wake)
            Glibc.close(epoll)
        }
    }

    private func inReactor(_ shared: Shared) -> Bool {
        guard let running = shared.running else { return false }
        return pthread_equal(running, pthread_self()) != 0
    }

    // MARK: On the reactor's thread

    /// Calls `handler` with the `epoll` events whenever `descriptor` is readable (and on errors and
    /// hang-ups). The caller keeps owning the descriptor and must `unwatch(_:)` it before closing.
    /// With `exclusive` (`EPOLLEXCLUSIVE`, for a listener other processes wait on too), the kernel
    /// wakes one of the waiters for an event instead of all of them; such a watch cannot be
    /// switched off with `setReadable(_:_:)`, only removed.
    package func watch(
        _ descriptor: CInt, readable: Bool = true, exclusive: Bool = false, _ handler: @escaping (UInt32) -> Void
    ) throws(SocketShareError) -> Watch {
        let tag = nextTag
        nextTag += 1
        try Kernel.epollAdd(epoll, descriptor, data: tag, events: readable ? EPOLLIN.rawValue : 0, exclusive: exclusive)
        watches[tag] = (descriptor, handler)
        return Watch(tag: tag)
    }

    /// Calls `handler` with the `epoll` events whenever `descriptor` has one of `events` (`EPOLLIN`,
    /// `EPOLLOUT`, `EPOLLPRI`, `EPOLLRDHUP`; errors and hang-ups always come). The bits are those of
    /// `poll(2)`. The caller keeps owning the descriptor and must ``unwatch(_:)`` it before closing.
    package func watch(_ descriptor: CInt, events: UInt32, _ handler: @escaping (UInt32) -> Void) throws(SocketShareError) -> Watch {
        let tag = nextTag
        nextTag += 1
        try Kernel.epollAdd(epoll, descriptor, data: tag, events: events)
        watches[tag] = (descriptor, handler)
        return Watch(tag: tag)
    }

    /// Changes the events a watched descriptor is watched for.
    package func setEvents(_ watch: Watch, _ events: UInt32) {
        guard let entry = watches[watch.tag] else { return }
        try? Kernel.epollModify(epoll, entry.descriptor, data: watch.tag, events: events)
    }

    /// Turns readability events for a watched descriptor on or off (errors and hang-ups still come).
    package func setReadable(_ watch: Watch, _ readable: Bool) {
        guard let entry = watches[watch.tag] else { return }
        try? Kernel.epollModify(epoll, entry.descriptor, data: watch.tag, events: readable ? EPOLLIN.rawValue : 0)
    }

    /// Stops watching; safe from the descriptor's own callback.
    package func unwatch(_ watch: Watch) {
        guard let entry = watches.removeValue(forKey: watch.tag) else { return }
        Kernel.epollRemove(epoll, entry.descriptor)
    }

    /// Runs `body` at `deadline` (or on the first round after it).
    @discardableResult
    package func schedule(at deadline: ContinuousClock.Instant, _ body: @escaping () -> Void) -> Timer {
        Timer(id: timers.insert(deadline: deadline, body))
    }

    /// Cancels a timer that has not fired.
    package func cancel(_ timer: Timer) {
        timers.cancel(timer.id)
    }

    private func run() {
        shared.withLock { $0.running = pthread_self() }
        _ = cs_name_thread(name)
        while true {
            let tasks = shared.withLock { shared -> [@Sendable () -> Void]? in
                guard !shared.stopping else { return nil }
                defer { shared.tasks.removeAll(keepingCapacity: true) }
                return shared.tasks
            }
            guard let tasks else { break }
            for task in tasks { task() }
            for body in timers.popDue(.now) { body() }
            let idle = shared.withLock { $0.tasks.isEmpty && !$0.stopping }
            let timeout = idle ? timers.earliest.map { Kernel.milliseconds(until: $0) } ?? -1 : 0
            guard let events = try? Kernel.epollWaitEvents(epoll, milliseconds: timeout) else { break }
            for (tag, mask) in events {
                if tag == Self.wakeTag {
                    var counter: UInt64 = 0
                    _ = Glibc.read(wake, &counter, 8)
                } else if let handler = watches[tag]?.handler {
                    handler(mask)
                }
            }
        }
        watches.removeAll()
        timers = TimerQueue()
        let abandoned = shared.withLock { shared -> [@Sendable () -> Void] in
            shared.stopping = true
            shared.finished = true
            shared.tasks.removeAll()
            defer { shared.abandoned.removeAll() }
            return Array(shared.abandoned.values)
        }
        for answer in abandoned { answer() }
    }
}

/// Timers of a `Reactor`: a min-heap of deadlines; cancelled ones are skipped when they come up.
package struct TimerQueue {
    private var heap = DeadlineQueue()
    private var bodies: [UInt64: () -> Void] = [:]
    private var nextID: UInt64 = 1

    /// The earliest deadline of a timer still pending (possibly a cancelled one's).
    package var earliest: ContinuousClock.Instant? { heap.earliest }

    package mutating func insert(deadline: ContinuousClock.Instant, _ body: @escaping () -> Void) -> UInt64 {
        let id = nextID
        nextID += 1
        bodies[id] = body
        heap.insert(deadline, id: id)
        return id
    }

    package mutating func cancel(_ id: UInt64) {
        bodies[id] = nil
    }

    /// Takes the bodies of the timers due at `now`, earliest first.
    package mutating func popDue(_ now: ContinuousClock.Instant) -> [() -> Void] {
        heap.popDue(now).compactMap { bodies.removeValue(forKey: $0) }
    }
}

/// A value one thread waits for and another provides, once.
package final class Completion<Value: Sendable>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var value: Value?
    private var done = false

    package init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Provides the value (the first call wins).
    package func complete(_ value: Value) {
        pthread_mutex_lock(mutex)
        if !done {
            self.value = value
            done = true
            pthread_cond_broadcast(condition)
        }
        pthread_mutex_unlock(mutex)
    }

    /// Waits until the value is provided.
    package func wait() -> Value {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while !done { pthread_cond_wait(condition, mutex) }
        return value!
    }
}
