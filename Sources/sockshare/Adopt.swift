import ArgumentParser
import Glibc
import SocketShare
import SocketShareServer

struct Adopt: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Claim a shared socket and run a command with it, systemd socket-activation style.",
        discussion: """
            Claims the share that TOKEN (or one line of stdin, for `-`) names, or with --name the broker's \
            share of that name, places the socket at descriptor N (default 3, not close-on-exec), sets \
            LISTEN_FDS=1, LISTEN_PID=<this pid> and LISTEN_FDNAMES, and execs COMMAND with the same pid.

            A token is made for one pid: start `sockshare adopt` first, then share to its pid. A named \
            share needs no pid: the broker (--broker PATH, else $SOCKSHARE_BROKER, else broker.sock in the \
            runtime directory) hands it to whoever its policy admits, across pid namespaces and containers. \
            --wait SECONDS waits for a name not deposited yet. Names are scoped by depositor: --name looks \
            at your own shares, then root's, then the broker user's; --from-uid U claims U's share of that \
            name only. A share another user deposited under the same name is never taken for one of those.

            LISTEN_FDNAMES is --fd-name, else the share's name, else `shared`. With a TOKEN, --name is \
            accepted as the older spelling of --fd-name. Only the first line of stdin is read; COMMAND \
            inherits the rest.

            Examples:
              sockshare adopt - -- python3 -m http.server --help < token.txt
              sockshare adopt --name web --wait 30 -- my-server
            Exit status: COMMAND's own once it runs; 1 when the claim fails (2 when no share of that name is \
            held for this process: none exists, or its policy does not admit it — the broker's log says \
            which); 127 when COMMAND is not found.
            """
    )

    @Argument(help: ArgumentHelp("The token, or - to read one line of stdin; omit it with --name.", valueName: "TOKEN|-"))
    var token: String?

    @Option(help: ArgumentHelp("Claim the broker's share of this name instead of a token.", valueName: "NAME"))
    var name: String?

    @Option(help: ArgumentHelp("With --name: seconds to wait for the name to be deposited (fractions allowed).", valueName: "SECONDS"))
    var wait: Double = 0

    @Option(name: .customLong("from-uid"), help: ArgumentHelp(
        "With --name: claim the share this user (name or number) deposited (default: yours, else root's, else the broker user's).",
        valueName: "U"))
    var fromUser: String?

    @Option(name: .customLong("broker"), help: ArgumentHelp("With --name: the broker's socket.", valueName: "PATH"))
    var brokerPath: String?

    @Option(name: .customLong("fd-name"), help: ArgumentHelp("The name put in LISTEN_FDNAMES.", valueName: "NAME"))
    var fdName: String?

    @OptionGroup var activation: SocketActivation

    func validate() throws {
        switch (token, name) {
        case (nil, nil): throw ValidationError("missing TOKEN or --name NAME: say which share to claim")
        case (nil, let name?):
            if let problem = ShareName.problem(name) { throw ValidationError("--name \(name): \(problem)") }
        default: break
        }
        guard wait.isFinite, wait >= 0, wait <= 86400 else {
            throw ValidationError("--wait \(wait): expected a number of seconds from 0 to 86400")
        }
        if token != nil, wait > 0 { throw ValidationError("--wait \(wait): only a claim by --name waits") }
        if token != nil, fromUser != nil { throw ValidationError("--from-uid: only a claim by --name names a depositor") }
        if let fromUser, Share.userID(fromUser) == nil { throw ValidationError("--from-uid \(fromUser): no such user") }
        if token != nil, brokerPath != nil { throw ValidationError("--broker: a token names its own holder; use --broker with --name") }
        if let brokerPath, !brokerPath.hasPrefix("/") { throw ValidationError("--broker \(brokerPath): expected an absolute path") }
        if let fdName { try ListenNames.validate(fdName, option: "--fd-name") }
        if token != nil, let name { try ListenNames.validate(name, option: "--name") }
    }

    func run() throws {
        if let token {
            let socket = try Terminal.run { () throws(SocketShareError) in
                try SocketShare.adopt(try Terminal.token(from: token))
            }
            try activation.exec(socket, name: fdName ?? name ?? "shared")
        }
        let shareName = name!
        let client = BrokerClient(socketPath: brokerPath)
        let socket: SocketDescriptor
        do throws(SocketShareError) {
            socket = try client.claim(
                named: shareName, from: fromUser.flatMap(Share.userID), waitingUpTo: .milliseconds(Int64(wait * 1000)))
        } catch {
            throw Terminal.fail(error.within("adopt"), exitCode: error.code == .notFound ? 2 : 1)
        }
        try activation.exec(socket, name: fdName ?? shareName)
    }
}
