import Glibc
import SocketShareCore

/// Starts a detached POSIX thread, for a blocking loop that must run whatever the caller's threads
/// (or Swift's cooperative pool) are doing: the escrow holder's loop, a `SharedListenerAcceptor`-style
/// blocking `accept`.
package enum DetachedThread {
    private final class Box {
        package let body: @Sendable () -> Void
        package init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// Runs `body` on a new detached thread.
    ///
    /// - Throws: `SocketShareError` (`system`) when `pthread_create` fails; `body` is then not run.
    package static func start(_ body: @escaping @Sendable () -> Void) throws(SocketShareError) {
        let context = Unmanaged.passRetained(Box(body)).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, CInt(PTHREAD_CREATE_DETACHED))
        var thread = pthread_t()
        let result = pthread_create(&thread, &attributes, { context in
            Unmanaged<Box>.fromOpaque(context!).takeRetainedValue().body()
            return nil
        }, context)
        if result != 0 {
            Unmanaged<Box>.fromOpaque(context).release()
            throw SocketShareError.system("pthread_create", errno: result)
        }
    }
}
