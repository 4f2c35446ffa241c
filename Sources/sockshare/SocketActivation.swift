import ArgumentParser
import Glibc
import SocketShare

/// What `adopt` and `bind` share: the socket goes to COMMAND at descriptor N with the systemd
/// socket-activation variables, and COMMAND replaces sockshare (same pid). Each command names the
/// socket for `LISTEN_FDNAMES` its own way.
struct SocketActivation: ParsableArguments {
    @Option(name: .customLong("fd"), help: ArgumentHelp("The descriptor number COMMAND gets the socket at.", valueName: "N"))
    var descriptor: Int32 = 3

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The program to run with the socket, and its arguments.", valueName: "COMMAND"))
    var command: [String] = []

    func validate() throws {
        guard descriptor >= 0 else { throw ValidationError("--fd \(descriptor): a descriptor is a number >= 0") }
        guard !command.isEmpty else { throw ValidationError("missing COMMAND: write it after --, as in `sockshare adopt TOKEN -- my-server`") }
    }

    /// Places `socket` at the descriptor, sets `LISTEN_FDS=1`, `LISTEN_PID`, `LISTEN_FDNAMES=name`
    /// (and `environment`), and execs COMMAND. Returns only by throwing: exit 127 when COMMAND is not
    /// found, 126 when it cannot run, 1 when the socket cannot be placed.
    func exec(_ socket: SocketDescriptor, name: String, environment: [String: String] = [:]) throws -> Never {
        let placed = try Terminal.run { () throws(SocketShareError) in try socket.place(at: descriptor) }
        if placed !== socket { try? socket.close() }
        setenv("LISTEN_FDS", "1", 1)
        setenv("LISTEN_PID", String(getpid()), 1)
        setenv("LISTEN_FDNAMES", name, 1)
        for (key, value) in environment { setenv(key, value, 1) }
        let failure = ProgramRunner.exec(command)
        try? placed.close()
        throw Terminal.fail(failure, exitCode: failure.errno?.rawValue == ENOENT ? 127 : 126)
    }
}

/// Checks names for LISTEN_FDNAMES as systemd does: 1 to 255 printable ASCII characters, no colon.
enum ListenNames {
    static func validate(_ name: String, option: String) throws {
        guard !name.isEmpty, name.utf8.count <= 255,
              name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }) else {
            throw ValidationError("\(option) \(name): a name is 1 to 255 printable ASCII characters without spaces or ':'")
        }
    }
}
