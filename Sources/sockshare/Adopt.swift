import ArgumentParser
import Glibc
import SocketShare
import SocketShareServer

struct Adopt: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Claim a shared socket and run a command with it, systemd socket-activation style.",
        discussion: """
            Claims the share that TOKEN (or one line of stdin, for `-`) names, places the socket at \
            descriptor N (default 3, not close-on-exec), sets LISTEN_FDS=1, LISTEN_PID=<this pid> and \
            LISTEN_FDNAMES=NAME, and execs COMMAND. The pid stays the same, and it is the pid the token \
            was made for: start `sockshare adopt` first, then share to its pid.

            Only the first line of stdin is read; COMMAND inherits the rest.

            Example:
              sockshare adopt - -- python3 -m http.server --help < token.txt
            Exit status: COMMAND's own once it runs; 1 when the claim fails; 127 when COMMAND is not found.
            """
    )

    @Argument(help: ArgumentHelp("The token, or - to read one line of stdin.", valueName: "TOKEN|-"))
    var token: String

    @Option(name: .customLong("fd"), help: ArgumentHelp("The descriptor number COMMAND gets the socket at.", valueName: "N"))
    var descriptor: Int32 = 3

    @Option(help: ArgumentHelp("The name put in LISTEN_FDNAMES.", valueName: "NAME"))
    var name: String = "shared"

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The program to run with the socket, and its arguments.", valueName: "COMMAND"))
    var command: [String] = []

    func validate() throws {
        guard descriptor >= 0 else { throw ValidationError("--fd \(descriptor): a descriptor is a number >= 0") }
        guard !command.isEmpty else { throw ValidationError("missing COMMAND: write it after --, as in `sockshare adopt TOKEN -- my-server`") }
        try ListenNames.validate(name, option: "--name")
    }

    func run() throws {
        let socket = try Terminal.run { () throws(SocketShareError) in
            try SocketShare.adopt(try Terminal.token(from: token))
        }
        let placed = try Terminal.run { () throws(SocketShareError) in
            try socket.place(at: descriptor)
        }
        setenv("LISTEN_FDS", "1", 1)
        setenv("LISTEN_PID", String(getpid()), 1)
        setenv("LISTEN_FDNAMES", name, 1)
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
