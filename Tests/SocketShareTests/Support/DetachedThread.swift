import Glibc
import SocketShareCore

/// Starts a detached POSIX thread, for a test's blocking loop (a load client, a blocking claim) that
/// must run whatever Swift's cooperative pool is doing. The library itself runs on `Reactor`s.
enum DetachedThread {
    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// Runs `body` on a new detached thread.
    ///
    /// - Throws: `SocketShareError` (`system`) when `pthread_create` fails; `body` is then not run.
    static func start(_ body: @escaping @Sendable () -> Void) throws(SocketShareError) {
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
