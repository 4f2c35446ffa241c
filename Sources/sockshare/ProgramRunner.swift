import Glibc
import SocketShare
import SocketShareServer

/// Replaces this process with a program (`execvp(3)`), as `adopt` and `bind` do.
enum ProgramRunner {
    /// Execs `command`; returns only when that fails, with the reason.
    static func exec(_ command: [String]) -> SocketShareError {
        // Programs expect default signal handling; nothing of ours must leak into them.
        signal(SIGPIPE, SIG_DFL)
        let pointers = command.map { strdup($0) } + [nil]
        execvp(command[0], pointers)
        let error = errno
        for pointer in pointers { free(pointer) }
        let why = error == ENOENT ? "not found (is it on PATH?)" : String(cString: strerror(error))
        return SocketShareError(.system, operation: "exec", errno: .init(rawValue: error), detail: "\(command[0]): \(why)")
    }
}
