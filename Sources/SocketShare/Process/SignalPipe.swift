import Glibc
import SocketShareCore

/// Turns signals into bytes on a pipe, so a poll loop or a waiting thread can react to SIGTERM,
/// SIGINT or SIGHUP at a point of its choosing instead of in a signal handler.
///
/// The handler only writes the signal number to the pipe (async-signal-safe). Dispositions are
/// process-wide; `ProcessSpawner` resets them to the default in children.
package enum SignalPipe {
    nonisolated(unsafe) private static var writeEnd: CInt = -1
    nonisolated(unsafe) private static var readEnd: CInt = -1

    /// Routes `signals` to the pipe and returns its read end: each byte read is a signal number.
    ///
    /// Call it once, early, from one thread; later calls add signals to the same pipe.
    package static func install(_ signals: [CInt]) throws(SocketShareError) -> CInt {
        if readEnd < 0 {
            let (read, write) = try Kernel.pipe()
            try Kernel.setNonBlocking(write, true)
            readEnd = read
            writeEnd = write
        }
        for number in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { number in
                var byte = UInt8(truncatingIfNeeded: number)
                let saved = Glibc.errno
                _ = Glibc.write(SignalPipe.writeEnd, &byte, 1)
                Glibc.errno = saved
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            guard sigaction(number, &action, nil) == 0 else {
                throw SocketShareError.system("sigaction", errno: Glibc.errno, detail: "signal \(number)")
            }
        }
        return readEnd
    }

    /// Calls `handler` on a background thread with each of `signals` as it arrives.
    package static func handle(_ signals: [CInt], _ handler: @escaping @Sendable (CInt) -> Void) throws(SocketShareError) {
        _ = try install(signals)
        try DetachedThread.start {
            while true {
                if let number = try? next(deadline: nil) { handler(number) }
            }
        }
    }

    /// Waits until the first of `signals` arrives (for a server: `[SIGTERM, SIGINT]`); returns at
    /// once when the signals cannot be routed, so a caller never waits forever on a failed install.
    package static func waitForAny(_ signals: [CInt]) async {
        let resumed = Locked(false)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            do throws(SocketShareError) {
                try handle(signals) { _ in
                    let first = resumed.withLock { done in
                        defer { done = true }
                        return !done
                    }
                    if first { continuation.resume() }
                }
            } catch {
                continuation.resume()
            }
        }
    }

    /// Reads one signal number, waiting until `deadline`; nil when none arrived.
    package static func next(deadline: ContinuousClock.Instant?) throws(SocketShareError) -> CInt? {
        guard readEnd >= 0 else { return nil }
        var fds = [pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)]
        guard try Kernel.poll(&fds, deadline: deadline) > 0 else { return nil }
        var byte: UInt8 = 0
        let count = try withUnsafeMutableBytes(of: &byte) { (buffer) throws(SocketShareError) in
            try Kernel.read(readEnd, into: buffer)
        }
        return count == 1 ? CInt(byte) : nil
    }
}
