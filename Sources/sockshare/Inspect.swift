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
        let fields = TokenFields(decoded)
        try Terminal.run { () throws(SocketShareError) in
            try Terminal.line(json ? fields.json : fields.text)
        }
    }
}

/// A token's public fields, in the order `inspect` prints them. The secret is not among them.
struct TokenFields {
    let pairs: [(key: String, value: JSONValue)]

    init(_ token: ShareToken) {
        var pairs: [(String, JSONValue)] = [
            ("version", .number(Int(token.version))),
            ("mechanism", .string(token.mechanism.description)),
            ("family", .string(token.family.description)),
            ("type", .string(token.kind.description)),
            ("protocol", .number(Int(token.protocolNumber))),
            ("listening", .bool(token.isListening)),
            ("connected", .bool(token.isConnected)),
            ("nonBlocking", .bool(token.isNonBlocking)),
            ("inode", .number(Int(token.socketInode))),
            ("sourcePid", .number(Int(token.source.pid))),
            ("sourceStartTime", .number(Int(token.source.startTime))),
            ("targetPid", .number(Int(token.target.pid))),
            ("targetStartTime", .number(Int(token.target.startTime))),
            ("createdAt", .string(ShareTime.iso8601(milliseconds: token.createdAtMilliseconds))),
            ("expiresAt", .string(ShareTime.iso8601(milliseconds: token.expiresAtMilliseconds))),
            ("expired", .bool(token.isExpired)),
            ("endpoint", .string(token.endpoint)),
            ("shareId", .number(Int(truncatingIfNeeded: token.shareID))),
        ]
        if case .pidfd(let descriptor) = token.redemption { pairs.append(("sourceDescriptor", .number(Int(descriptor)))) }
        self.pairs = pairs
    }

    var json: String {
        "{" + pairs.map { "\"\($0.key)\":\($0.value.json)" }.joined(separator: ",") + "}"
    }

    var text: String {
        let width = pairs.map(\.key.count).max() ?? 0
        return pairs.map { $0.key + ":" + String(repeating: " ", count: width - $0.key.count + 1) + $0.value.text }
            .joined(separator: "\n")
    }
}

/// The few JSON values the CLI prints.
enum JSONValue {
    case string(String)
    case number(Int)
    case bool(Bool)
    case array([JSONValue])
    case object(JSONObject)

    var json: String {
        switch self {
        case .string(let value): JSONValue.quote(value)
        case .number(let value): String(value)
        case .bool(let value): value ? "true" : "false"
        case .array(let values): "[" + values.map(\.json).joined(separator: ",") + "]"
        case .object(let object): object.json
        }
    }

    var text: String {
        switch self {
        case .string(let value): value
        case .number(let value): String(value)
        case .bool(let value): value ? "yes" : "no"
        case .array(let values): values.map(\.text).joined(separator: ", ")
        case .object(let object): object.json
        }
    }

    static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += unicodeEscape(scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    private static func unicodeEscape(_ value: UInt32) -> String {
        let hex = String(value, radix: 16)
        return "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
    }
}

/// A JSON object whose keys keep their order.
struct JSONObject {
    var fields: [(key: String, value: JSONValue)] = []

    init(_ fields: [(key: String, value: JSONValue)] = []) { self.fields = fields }

    var json: String {
        "{" + fields.map { "\(JSONValue.quote($0.key)):\($0.value.json)" }.joined(separator: ",") + "}"
    }
}
