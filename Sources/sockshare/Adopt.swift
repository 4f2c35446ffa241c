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

    @OptionGroup var activation: SocketActivation

    func run() throws {
        let socket = try Terminal.run { () throws(SocketShareError) in
            try SocketShare.adopt(try Terminal.token(from: token))
        }
        try activation.exec(socket, defaultName: "shared")
    }
}
