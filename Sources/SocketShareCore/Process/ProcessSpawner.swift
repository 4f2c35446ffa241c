import CSocketShare
import Glibc

/// Starts programs with exactly the descriptors they should have, at fixed numbers.
///
/// Foundation's `Process` and swift-subprocess cannot place extra descriptors in a child, and
/// `fork` is unsafe in a threaded Swift process, so this uses `posix_spawn(3)`:
/// each wanted descriptor is `dup2`'d to its number (which clears close-on-exec on that copy only),
/// every other descriptor from the lowest unused number up is closed
/// (`posix_spawn_file_actions_addclosefrom_np`), all signal dispositions are reset to their
/// defaults (`POSIX_SPAWN_SETSIGDEF`) and the signal mask is emptied.
package enum ProcessSpawner {
    /// Starts `executable` (a path, or a name looked up in `PATH`).
    ///
    /// - Parameters:
    ///   - executable: A path, or a name looked up in this process's `PATH`, as `posix_spawnp(3)` does.
    ///   - arguments: The arguments after the program name (`argv[1...]`).
    ///   - environment: The complete environment; nil passes this process's own.
    ///   - descriptors: Child descriptor number → this process's descriptor to place there. Numbers
    ///     0, 1 and 2 not named here are inherited as they are; every other descriptor is closed.
    /// - Returns: The running child. The caller's descriptors are untouched.
    package static func spawn(
        _ executable: String, arguments: [String] = [], environment: [String: String]? = nil,
        descriptors: [CInt: CInt] = [:]
    ) throws(SocketShareError) -> ChildProcess {
        guard !executable.isEmpty else {
            throw SocketShareError(.invalidArgument, operation: "spawn", detail: "no program given")
        }
        let highest = max(descriptors.keys.max() ?? 2, 2)
        // First move every source above all target numbers, so no dup2 overwrites a later source.
        var temporaries: [CInt: CInt] = [:]
        defer { for fd in temporaries.values { try? Kernel.close(fd) } }
        for (target, source) in descriptors {
            guard target >= 0 else {
                throw SocketShareError(.invalidArgument, operation: "spawn", detail: "descriptor number \(target) is negative")
            }
            temporaries[target] = try Kernel.duplicate(source, minimum: highest + 1)
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (target, temporary) in temporaries.sorted(by: { $0.key < $1.key }) {
            posix_spawn_file_actions_adddup2(&actions, temporary, target)
        }
        if highest > 2 {
            for gap in 3...highest where temporaries[gap] == nil { posix_spawn_file_actions_addclose(&actions, gap) }
        }
        cs_spawn_addclosefrom(&actions, highest + 1)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv = [executable] + arguments
        let envp = environment.map { $0.map { "\($0.key)=\($0.value)" } } ?? currentEnvironment()
        var pid: pid_t = 0
        let result = withCStrings(argv) { argvPointers in
            withCStrings(envp) { envpPointers in
                executable.contains("/")
                    ? posix_spawn(&pid, executable, &actions, &attributes, argvPointers, envpPointers)
                    : posix_spawnp(&pid, executable, &actions, &attributes, argvPointers, envpPointers)
            }
        }
        guard result == 0 else {
            throw SocketShareError.system("posix_spawn", errno: result, detail: executable)
        }
        return ChildProcess(pid: pid)
    }

    /// The path `posix_spawnp` would run for `name`: itself when it contains a `/`, else the first
    /// executable file of that name in `$PATH`; nil when there is none.
    package static func resolveExecutable(_ name: String) -> String? {
        func runnable(_ path: String) -> Bool {
            guard access(path, X_OK) == 0, let info = try? Kernel.linkStatus(path) else { return false }
            return info.st_mode & S_IFMT != S_IFDIR
        }
        if name.contains("/") { return runnable(name) ? name : nil }
        let path = RuntimeDirectory.environment("PATH") ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = (directory.isEmpty ? "." : String(directory)) + "/" + name
            if runnable(candidate) { return candidate }
        }
        return nil
    }

    /// This process's environment as `NAME=value` strings.
    package static func currentEnvironment() -> [String] {
        var entries: [String] = []
        var pointer = environ
        while let entry = pointer.pointee {
            entries.append(String(cString: entry))
            pointer += 1
        }
        return entries
    }

    /// This process's environment as a dictionary, to edit and pass to ``spawn(_:arguments:environment:descriptors:)``.
    package static var environment: [String: String] {
        var result: [String: String] = [:]
        for entry in currentEnvironment() {
            guard let equals = entry.firstIndex(of: "=") else { continue }
            result[String(entry[..<equals])] = String(entry[entry.index(after: equals)...])
        }
        return result
    }

    private static func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
        let pointers = strings.map { strdup($0) }
        defer { for pointer in pointers { free(pointer) } }
        return body(pointers + [nil])
    }
}

/// A process started by ``ProcessSpawner``.
package final class ChildProcess: Sendable {
    /// How a process ended.
    package enum Termination: Hashable, Sendable, CustomStringConvertible {
        /// It called `exit` with this status.
        case exited(CInt)
        /// A signal ended it.
        case signaled(CInt)

        /// `exit status 0`, `killed by signal 9`.
        package var description: String {
            switch self {
            case .exited(let code): "exit status \(code)"
            case .signaled(let signal): "killed by signal \(signal)"
            }
        }
    }

    /// The child's pid. It stays reserved for the child until ``wait(deadline:)`` reaps it.
    package let pid: pid_t
    /// A pidfd of the child, which polls readable once it has exited: what a wait with a deadline
    /// waits on. Nil where `pidfd_open` is refused (before Linux 5.3, or by a seccomp filter).
    private let pidfd: CInt?

    /// Wraps the child `pid`; opens a pidfd for it (a child's pid cannot be reused before it is reaped).
    package init(pid: pid_t) {
        self.pid = pid
        pidfd = try? Kernel.openProcess(pid)
    }

    deinit {
        if let pidfd { try? Kernel.close(pidfd) }
    }

    /// Sends a signal (`kill(2)`).
    package func signal(_ number: CInt) throws(SocketShareError) {
        try Kernel.signal(pid, number)
    }

    /// Waits for the child to end and reaps it.
    ///
    /// - Returns: How it ended, or nil when `deadline` passed first (the child is left running).
    /// - Throws: `SocketShareError`: `system` when `waitpid` fails, or when a deadline is given and
    ///   the child has no pidfd to wait on (without one, only a wait with no deadline is possible).
    package func wait(deadline: ContinuousClock.Instant? = nil) throws(SocketShareError) -> Termination? {
        while true {
            var status: CInt = 0
            let result = waitpid(pid, &status, deadline == nil ? 0 : WNOHANG)
            if result == pid {
                return status & 0x7F == 0 ? .exited((status >> 8) & 0xFF) : .signaled(status & 0x7F)
            }
            if result < 0 {
                if Glibc.errno == EINTR { continue }
                throw SocketShareError.system("waitpid", errno: Glibc.errno, detail: "pid \(pid)")
            }
            guard let deadline, ContinuousClock.now < deadline else { return nil }
            guard let pidfd else {
                throw SocketShareError(
                    .system, operation: "wait", detail: "pid \(pid) has no pidfd (pidfd_open was refused): it cannot be waited for with a deadline")
            }
            // Readable once the child has exited; then waitpid reaps it without blocking.
            var fds = [pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)]
            _ = try Kernel.poll(&fds, deadline: deadline)
        }
    }
}
