import ArgumentParser
import Glibc
import SocketShare
import SocketShareServer

struct Bind: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bind a listening socket and run a command with it, systemd socket-activation style.",
        discussion: """
            Creates a socket bound to ADDR (listening, for stream and seqpacket), places it at descriptor N \
            (default 3), sets LISTEN_FDS=1, LISTEN_PID=<this pid>, LISTEN_FDNAMES=NAME and \
            SOCKSHARE_BOUND=<the bound address, port filled in>, and execs COMMAND. Handy to give a shell \
            pipeline a socket to share.

            ADDR: tcp://HOST:PORT, tcp://[IPv6]:PORT, udp://HOST:PORT, unix:///PATH, unix-dgram:///PATH, \
            unix-seqpacket:///PATH. Port 0 picks a free port.

            Example:
              sockshare bind tcp://127.0.0.1:0 --print -- sockshare share --fd 3 --to "$TARGET_PID"
            """
    )

    @Argument(help: ArgumentHelp("The address to bind.", valueName: "ADDR"))
    var address: String

    @Option(help: ArgumentHelp("The listen(2) backlog.", valueName: "N"))
    var backlog: Int32 = 511

    @Flag(help: "Print the bound address (port filled in) on stdout before running COMMAND.")
    var print = false

    @Option(help: ArgumentHelp("The name put in LISTEN_FDNAMES (default: listener).", valueName: "NAME"))
    var name: String?

    @OptionGroup var activation: SocketActivation

    func validate() throws {
        guard backlog > 0 else { throw ValidationError("--backlog \(backlog): expected a number > 0") }
        if let name { try ListenNames.validate(name, option: "--name") }
        do {
            _ = try SocketEndpoint(parsing: address)
        } catch {
            throw ValidationError("ADDR \(error.detail)")
        }
    }

    func run() throws {
        let (socket, bound) = try Terminal.run { () throws(SocketShareError) in
            let endpoint = try SocketEndpoint(parsing: address)
            let socket = try SocketDescriptor.listening(on: endpoint.address, kind: endpoint.kind, backlog: backlog)
            return (socket, SocketEndpoint(address: try socket.socketDescription().localAddress, kind: endpoint.kind))
        }
        if print {
            try Terminal.run { () throws(SocketShareError) in try Terminal.line(bound.description) }
        }
        try activation.exec(socket, name: name ?? "listener", environment: ["SOCKSHARE_BOUND": bound.description])
    }
}
