import ArgumentParser
import SocketShare
import SocketShareServer

struct Revoke: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Revoke a share held by the broker: its duplicate is closed and its token refused.",
        discussion: """
            Takes the token (or - to read it from stdin), or the share's id as `sockshare status` lists it. \
            Only the depositor's uid, or root, may revoke a share.

            Example:
              sockshare revoke - < token.txt
            """
    )

    @Argument(help: ArgumentHelp("The token, - for one line of stdin, or a share id.", valueName: "TOKEN|-|ID"))
    var share: String

    @Option(name: .customLong("broker"), help: ArgumentHelp("The broker's socket.", valueName: "PATH"))
    var brokerPath: String?

    func run() throws {
        try Terminal.run { () throws(SocketShareError) in
            var path = brokerPath ?? BrokerClient.defaultSocketPath
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
