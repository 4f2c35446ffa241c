import ArgumentParser
import SocketShare

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
        subcommands: [Demo.self, Share.self, Adopt.self, Inspect.self, Bind.self]
    )
}
