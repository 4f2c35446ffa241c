import ArgumentParser
import SocketShare
import SocketShareServer

struct Revoke: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Revoke a share held by the broker: its duplicate is closed and its token refused.",
        discussion: """
            Takes the token (or - to read it from stdin), the share's id as `sockshare status` lists it, \
            or --name NAME for a named share (yours; as root, --from-uid U for another user's). Only the \
            depositor's uid, or root, may revoke a share.

            Examples:
              sockshare revoke - < token.txt
              sockshare revoke --name web
            """
    )

    @Argument(help: ArgumentHelp("The token, - for one line of stdin, or a share id; omit it with --name.", valueName: "TOKEN|-|ID"))
    var share: String?

    @Option(help: ArgumentHelp("Revoke the named share of this name.", valueName: "NAME"))
    var name: String?

    @Option(name: .customLong("from-uid"), help: ArgumentHelp("With --name: the user whose share it is (root only; default: yours).", valueName: "U"))
    var fromUser: String?

    @Option(name: .customLong("broker"), help: ArgumentHelp("The broker's socket.", valueName: "PATH"))
    var brokerPath: String?

    func validate() throws {
        switch (share, name) {
        case (nil, nil): throw ValidationError("missing TOKEN, ID or --name NAME: say which share to revoke")
        case (_?, _?): throw ValidationError("--name: give a share or a name, not both")
        case (nil, let name?):
            if let problem = ShareName.problem(name) { throw ValidationError("--name \(name): \(problem)") }
        default: break
        }
        if fromUser != nil, name == nil { throw ValidationError("--from-uid: only with --name") }
        if let fromUser, Share.userID(fromUser) == nil { throw ValidationError("--from-uid \(fromUser): no such user") }
    }

    func run() throws {
        try Terminal.run { () throws(SocketShareError) in
            var path = brokerPath
            if let name {
                let id = try BrokerClient(socketPath: path).revoke(named: name, from: fromUser.flatMap(Share.userID))
                try Terminal.line("revoked share \(id) (\(name))")
                return
            }
            let share = share!
            let id: UInt64
            if let number = UInt64(share) {
                id = number
            } else {
                let token = try Terminal.token(from: share)
                guard token.mechanism == .broker else {
                    throw SocketShareError(
                        .invalidArgument, operation: "revoke",
                        detail: "this token's share is held by a \(token.mechanism), not a broker; stop its `sockshare share` to revoke it")
                }
                id = token.shareID
                if brokerPath == nil { path = token.endpoint }
            }
            try BrokerClient(socketPath: path).revoke(shareID: id)
            try Terminal.line("revoked share \(id)")
        }
    }
}
