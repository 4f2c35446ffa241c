import Glibc

/// A value behind a lock: ``withLock(_:)`` gives one thread at a time access to it.
///
/// Built on `pthread_mutex_t` rather than `Synchronization.Mutex`: on Linux the latter locks
/// through raw futex calls that ThreadSanitizer cannot follow, so it reports every access a `Mutex`
/// guards as a race (`docs/RELIABILITY.md` shows a 15-line reproduction). With this lock the
/// sanitizer checks the project's locking for real. Uncontended, both cost the same two atomic
/// operations.
///
/// Sendable only when its value is: a lock makes access exclusive, it does not make a non-Sendable
/// value safe to hand to another thread.
package final class Locked<Value> {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    /// A lock around `value`.
    package init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value; do not block or re-enter the lock in it.
    package func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

extension Locked: @unchecked Sendable where Value: Sendable {}
