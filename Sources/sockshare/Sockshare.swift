import ArgumentParser
import Glibc
import SocketShare
import SocketShareServer

@main
struct Sockshare: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sockshare",
        abstract: "Share live sockets between processes, as Windows' WSADuplicateSocket does.",
        discussion: """
            A source process duplicates a socket for a target pid and gets a token; the token travels \
            over any IPC (pipe, file, environment variable, HTTP); the target adopts it and gets its own \
            descriptor of the same socket.

            Start with `sockshare demo`. Errors go to stderr as `sockshare: <operation> failed: <cause>` \
            with a non-zero exit status; usage errors exit with 64.
            """,
        version: "0.1.0",
        subcommands: [Demo.self, Share.self, Adopt.self, Inspect.self, Bind.self, BrokerCommand.self, Status.self, Revoke.self, Serve.self, Reload.self, Upgrade.self, Who.self]
    )

    /// Parses and runs the command, printing usage errors as one line:
    /// `sockshare: <command> failed: <what is wrong> (see sockshare <command> --help)`, exit status 64.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            if code == .success || code == .failure && message(for: error).isEmpty {
                exit(withError: error)
            }
            if error is ExitCode { exit(withError: error) }
            let name = arguments.first { word in configuration.subcommands.contains { $0._commandName == word } }
            let what = message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid usage"
            let help = name.map { "sockshare \($0) --help" } ?? "sockshare --help"
            let text = what.replacingPrefix("Error: ", with: "")
            Terminal.note(name.map { "sockshare: \($0) failed: \(text) (see \(help))" } ?? "sockshare: \(text) (see \(help))")
            Glibc.exit(code.rawValue)
        }
    }
}

extension String {
    func replacingPrefix(_ prefix: String, with replacement: String) -> String {
        hasPrefix(prefix) ? replacement + dropFirst(prefix.count) : self
    }
}
