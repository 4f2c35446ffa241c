import Glibc
import SocketShareCore

/// Runs a blocking call on a thread of its own and awaits its result, so that an async caller
/// blocks no thread of the cooperative pool while a call waits in the kernel (a claim the broker
/// holds until its name is deposited, say). Cancelling is the caller's: make the call return early
/// (shut its socket down), as ``BrokerClient``'s async claim does.
package enum BlockingCall {
    /// Runs `body` on a new detached POSIX thread and returns what it returns, or throws what it throws.
    ///
    /// - Throws: What `body` throws; `SocketShareError` (`system`) when no thread can be started.
    package static func run<T: Sendable>(_ body: @escaping @Sendable () throws(SocketShareError) -> T) async throws(SocketShareError) -> T {
        let result: Result<T, SocketShareError> = await withCheckedContinuation { continuation in
            let work = Work {
                do throws(SocketShareError) {
                    continuation.resume(returning: .success(try body()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
            let context = Unmanaged.passRetained(work).toOpaque()
            var thread = pthread_t()
            let started = pthread_create(&thread, nil, { context in
                Unmanaged<Work>.fromOpaque(context!).takeRetainedValue().body()
                return nil
            }, context)
            if started == 0 {
                pthread_detach(thread)
            } else {
                Unmanaged<Work>.fromOpaque(context).release()
                continuation.resume(returning: .failure(SocketShareError.system("pthread_create", errno: started, detail: "blocking call")))
            }
        }
        return try result.get()
    }

    private final class Work: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
}
