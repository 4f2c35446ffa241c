import ArgumentParser
import SocketShare
import SocketShareServer

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Decode a token and show what it shares, without claiming it.",
        discussion: """
            Shows the socket's family, type and state, the source and target processes, how the share is \
            redeemed and when it expires. The secret is never shown.

            Example:
              sockshare inspect --json - < token.txt
            """
    )

    @Argument(help: ArgumentHelp("The token, or - to read one line of stdin.", valueName: "TOKEN|-"))
    var token: String

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    func run() throws {
        let decoded = try Terminal.run { () throws(SocketShareError) in try Terminal.token(from: token) }
        let report = TokenReport(decoded)
        try Terminal.run { () throws(SocketShareError) in
            try Terminal.line(json ? Terminal.json(report) : report.text)
        }
    }
}

/// A token's public fields, in the order `inspect` prints them. The secret is not among them.
struct TokenReport: Encodable {
    var version: Int
    var mechanism: String
    var family: String
    var type: String
    var `protocol`: Int32
    var listening: Bool
    var connected: Bool
    var nonBlocking: Bool
    var inode: UInt64
    var sourcePid: Int32
    var sourceStartTime: UInt64
    var targetPid: Int32
    var targetStartTime: UInt64
    var createdAt: String
    var expiresAt: String
    var expired: Bool
    var endpoint: String
    var shareId: UInt64

    init(_ token: ShareToken) {
        version = Int(token.version)
        mechanism = token.mechanism.description
        family = token.family.description
        type = token.kind.description
        `protocol` = token.protocolNumber
        listening = token.isListening
        connected = token.isConnected
        nonBlocking = token.isNonBlocking
        inode = token.socketInode
        sourcePid = token.source.pid
        sourceStartTime = token.source.startTime
        targetPid = token.target.pid
        targetStartTime = token.target.startTime
        createdAt = ShareTime.iso8601(milliseconds: token.createdAtMilliseconds)
        expiresAt = ShareTime.iso8601(milliseconds: token.expiresAtMilliseconds)
        expired = token.isExpired
        endpoint = token.endpoint
        shareId = token.shareID
    }

    /// `key: value` lines, aligned, in the order of the JSON form.
    var text: String {
        func yes(_ value: Bool) -> String { value ? "yes" : "no" }
        var pairs: [(String, String)] = [
            ("version", "\(version)"), ("mechanism", mechanism), ("family", family), ("type", type),
            ("protocol", "\(`protocol`)"), ("listening", yes(listening)), ("connected", yes(connected)),
            ("nonBlocking", yes(nonBlocking)), ("inode", "\(inode)"), ("sourcePid", "\(sourcePid)"),
            ("sourceStartTime", "\(sourceStartTime)"), ("targetPid", "\(targetPid)"),
            ("targetStartTime", "\(targetStartTime)"), ("createdAt", createdAt), ("expiresAt", expiresAt),
            ("expired", yes(expired)), ("endpoint", endpoint), ("shareId", "\(shareId)"),
        ]
        let width = pairs.map(\.0.count).max() ?? 0
        return pairs.map { $0.0 + ":" + String(repeating: " ", count: width - $0.0.count + 1) + $0.1 }.joined(separator: "\n")
    }
}
