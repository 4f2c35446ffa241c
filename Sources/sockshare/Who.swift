import ArgumentParser
import Glibc
import SocketShare
import SocketShareServer

struct Who: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the processes holding a socket, and which one holds its event registration.",
        discussion: """
            Name the socket by a descriptor of this process (--fd, inherited from the caller), its inode \
            (--inode, as /proc/PID/fd shows socket:[INODE]), or a token (--token). Processes of other users \
            are listed only when run as root.

            Example:
              sockshare who --fd 3 3<>/dev/tcp/127.0.0.1/8080
              sockshare who --inode 40211 --json
            """
    )

    @Option(name: .customLong("fd"), help: ArgumentHelp("A descriptor of this process.", valueName: "N"))
    var descriptor: Int32?

    @Option(help: ArgumentHelp("The socket's inode.", valueName: "INODE"))
    var inode: UInt64?

    @Option(help: ArgumentHelp("A token (or - for one line of stdin).", valueName: "TOKEN|-"))
    var token: String?

    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        guard [descriptor != nil, inode != nil, token != nil].filter({ $0 }).count == 1 else {
            throw ValidationError("name the socket with exactly one of --fd, --inode or --token")
        }
        if let descriptor, descriptor < 0 { throw ValidationError("--fd \(descriptor): a descriptor is a number >= 0") }
    }

    func run() throws {
        let found = try Terminal.run { () throws(SocketShareError) -> UInt64 in
            if let inode { return inode }
            if let token { return try Terminal.token(from: token).socketInode }
            do throws(SocketShareError) {
                return try SocketIdentity(of: descriptor!).inode
            } catch {
                throw SocketShareError(error.code, operation: "who", errno: error.errno, detail: "--fd \(descriptor!): \(error.detail)")
            }
        }
        var holders = SocketHolders(inode: found)
        // sockshare itself holds --fd's socket: leave it out, it is only looking.
        holders.holders.removeAll { $0.pid == getpid() }
        let output: String
        if json {
            output = Terminal.json(HolderReport(
                inode: found,
                holders: holders.holders.map { .init(pid: $0.pid, command: $0.command, descriptors: $0.descriptors) },
                registrations: holders.registrations.map {
                    .init(pid: $0.pid, events: "\($0.events)", cooperative: $0.cooperative)
                }))
        } else {
            var lines = ["socket:[\(found)]: \(holders.holders.count) process\(holders.holders.count == 1 ? "" : "es")"]
            lines.append("PID      COMMAND          DESCRIPTORS  EVENTS")
            for holder in holders.holders {
                let registration = holders.registrations.filter { $0.pid == holder.pid }
                    .map { "\($0.events)\($0.cooperative ? " (cooperative)" : "")" }.joined(separator: ", ")
                lines.append(
                    holder.pid.description.padding(8) + " " + holder.command.padding(16) + " "
                        + holder.descriptors.map(String.init).joined(separator: ",").padding(12) + " "
                        + (registration.isEmpty ? "-" : registration))
            }
            if holders.registrations.isEmpty { lines.append("no event registration") }
            output = lines.joined(separator: "\n")
        }
        try Terminal.run { () throws(SocketShareError) in try Terminal.line(output) }
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

/// `sockshare who --json`.
struct HolderReport: Encodable {
    struct Holder: Encodable {
        var pid: Int32
        var command: String
        var descriptors: [Int32]
    }

    struct Registration: Encodable {
        var pid: Int32
        var events: String
        var cooperative: Bool
    }

    var inode: UInt64
    var holders: [Holder]
    var registrations: [Registration]
}
