import Glibc

/// Fault injection for the reliability tests: a process dies by `SIGKILL`, exactly as under
/// `kill -9`, when it reaches the step named in `SOCKSHARE_FAULT`.
///
/// Steps are the points between two actions of a protocol where a crash leaves the most to clean
/// up (see `docs/RELIABILITY.md` for each one and what the others do about it). With
/// `SOCKSHARE_FAULT_ONCE=PATH` only the first process to get there dies: it must remove the file
/// `PATH` to do so, which lets a test arm every worker of a pool and lose exactly one.
///
/// Unset (always, outside tests), a step costs one comparison with nil.
package enum FaultPoint {
    private static let armed: String? = getenv("SOCKSHARE_FAULT").map { String(cString: $0) }
    private static let once: String? = getenv("SOCKSHARE_FAULT_ONCE").map { String(cString: $0) }

    /// Dies here if this is the armed step.
    @inline(__always)
    package static func reached(_ step: StaticString) {
        guard let armed else { return }
        die(at: step, armed: armed)
    }

    private static func die(at step: StaticString, armed: String) {
        guard armed == step.description else { return }
        if let once, unlink(once) != 0 { return }
        kill(getpid(), SIGKILL)
    }
}
