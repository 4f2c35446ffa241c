import Glibc
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// This process's open descriptors, from /proc/self/fd, leaving out libdispatch's own (an epoll, an
/// eventfd and timerfds it opens lazily whenever it first needs them; SocketShare never makes those).
func openDescriptors() -> [CInt] {
    let runtime: Set<String> = ["anon_inode:[eventpoll]", "anon_inode:[eventfd]", "anon_inode:[timerfd]"]
    return Kernel.directoryEntries("/proc/self/fd").compactMap { CInt($0) }
        .filter { Kernel.descriptorFlags($0) != nil && !runtime.contains(Kernel.readLink("/proc/self/fd/\($0)") ?? "") }
        .sorted()
}

/// Whether this build runs under a sanitizer (`swift test --sanitize=…`), whose shadow memory and
/// quarantine make resident-memory bounds meaningless; descriptor counts still hold.
let underSanitizer: Bool = {
    guard let handle = dlopen(nil, RTLD_NOW) else { return false }
    defer { dlclose(handle) }
    return dlsym(handle, "__asan_init") != nil || dlsym(handle, "__tsan_init") != nil
}()

/// Waits until `condition` holds or `timeout` passes; returns whether it held.
func eventually(timeout: Duration = .seconds(5), _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try condition() { return true }
        var pause = timespec(tv_sec: 0, tv_nsec: 5_000_000)
        nanosleep(&pause, nil)
    }
    return try condition()
}

/// Hex, as the helper's send/recv commands carry bytes.
func hex(_ text: String) -> String {
    Array(text.utf8).map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
}

func unhex(_ text: String) -> String {
    var bytes: [UInt8] = []
    var index = text.startIndex
    while let next = text.index(index, offsetBy: 2, limitedBy: text.endIndex), index < text.endIndex {
        bytes.append(UInt8(text[index..<next], radix: 16) ?? 0)
        index = next
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Test-wide setup: a private runtime directory, so tests never touch /run/sockshare.
enum TestEnvironment {
    /// A fresh directory for this test run, holding the runtime directory and brokers' directories.
    static let root: String = {
        var template = Array("/tmp/sockshare-tests-XXXXXX".utf8CString)
        let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        setenv("SOCKSHARE_RUNTIME_DIR", path + "/run", 1)
        signal(SIGPIPE, SIG_IGN)
        return path
    }()

    static var runtimeDirectory: String { root + "/run" }

    static func prepare() { _ = root }
}

/// Runs each body on its own POSIX thread (not the cooperative pool, which blocking calls would
/// starve) and returns their results once all have finished.
func onThreads<T: Sendable>(_ bodies: [@Sendable () -> T]) -> [T] {
    let slots = bodies.map { _ in ResultSlot<T>() }
    var threads: [pthread_t] = []
    for (body, slot) in zip(bodies, slots) {
        let context = Unmanaged.passRetained(ThreadBody { slot.value = body() }).toOpaque()
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, context)
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
    return slots.map { $0.value! }
}

private final class ResultSlot<T>: @unchecked Sendable { var value: T? }

private final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
