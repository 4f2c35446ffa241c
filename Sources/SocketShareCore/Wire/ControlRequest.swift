
/// A request on a supervisor's control socket (`docs/SERVE.md`): one packet of UTF-8 text,
/// `status`, `reload [SECONDS]` or `upgrade [SECONDS [BINARY]]`.
///
/// The parser is strict and range-checks every number, since any process the socket admits can
/// send anything: a deadline is 0 (the supervisor's default) or more than 0 and at most a day,
/// written as a finite decimal number.
package enum ControlRequest: Equatable, Sendable {
    /// The listeners, workers and counters.
    case status
    /// A new generation, with this deadline (nil: the supervisor's default).
    case reload(deadline: Duration?)
    /// A new supervisor binary (nil: the one running), with this deadline (nil: the default).
    case upgrade(deadline: Duration?, binary: String?)

    /// The longest deadline a request may ask for.
    package static let longestDeadline: Duration = .seconds(86_400)

    /// What the supervisor answers to an unknown command.
    package static let usage = "this supervisor answers: status, reload [SECONDS], upgrade [SECONDS [BINARY]]"

    /// Parses one request.
    ///
    /// - Throws: ``SocketShareError`` with code `malformed` saying what is wrong.
    package init(bytes: [UInt8]) throws(SocketShareError) {
        guard String(validating: bytes, as: UTF8.self) != nil else { throw Self.malformed("the request is not UTF-8 text") }
        // Split on the bytes, not on characters: a space followed by a combining mark is one character.
        let words = Self.trimmed(bytes[...]).split(separator: UInt8(ascii: " "), maxSplits: 2, omittingEmptySubsequences: true)
            .map { String(decoding: Self.trimmed($0), as: UTF8.self) }
        switch words.first {
        case "status":
            guard words.count == 1 else { throw Self.malformed("status takes no argument") }
            self = .status
        case "reload":
            guard words.count <= 2 else { throw Self.malformed("reload takes at most a deadline in seconds") }
            self = .reload(deadline: try words.count > 1 ? Self.deadline(words[1]) : nil)
        case "upgrade":
            let deadline = try words.count > 1 ? Self.deadline(words[1]) : nil
            let binary = words.count > 2 ? words[2] : nil
            if let binary, binary.isEmpty || binary.utf8.contains(0) { throw Self.malformed("upgrade: the binary is not a path") }
            self = .upgrade(deadline: deadline, binary: binary)
        default:
            throw Self.malformed("unknown command; " + Self.usage)
        }
    }

    /// The request's wire form (what ``SupervisorClient`` sends).
    package var bytes: [UInt8] {
        switch self {
        case .status: return Array("status".utf8)
        case .reload(let deadline): return Array(("reload" + (deadline.map { " \(Self.seconds($0))" } ?? "")).utf8)
        case .upgrade(let deadline, let binary):
            var text = "upgrade"
            if let deadline { text += " \(Self.seconds(deadline))" } else if binary != nil { text += " 0" }
            if let binary { text += " \(binary)" }
            return Array(text.utf8)
        }
    }

    /// `bytes` without leading and trailing ASCII white space (space, tab, CR, LF).
    private static func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D || $0 == 0x0A }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }), let last = bytes.lastIndex(where: { !isSpace($0) }) else {
            return []
        }
        return bytes[first...last]
    }

    /// A deadline in seconds: `0` for the default (nil), else a finite number of seconds in (0, a day].
    private static func deadline(_ word: String) throws(SocketShareError) -> Duration? {
        guard word.utf8.count <= 32, let seconds = Double(word), seconds.isFinite else {
            throw malformed("deadline \(word.prefix(32)): not a number of seconds")
        }
        if seconds == 0 { return nil }
        let longest = Double(longestDeadline.components.seconds)
        guard seconds > 0, seconds <= longest else {
            throw malformed("deadline \(word): expected more than 0 and at most \(Int(longest)) seconds (0: the default)")
        }
        return .milliseconds(Int64((seconds * 1000).rounded(.up)))
    }

    /// A duration as decimal seconds, as the parser reads them back.
    package static func seconds(_ duration: Duration) -> String {
        let milliseconds = duration / .milliseconds(1)
        return milliseconds.truncatingRemainder(dividingBy: 1000) == 0
            ? "\(Int64(milliseconds) / 1000)" : "\(milliseconds / 1000)"
    }

    private static func malformed(_ detail: String) -> SocketShareError {
        SocketShareError(.malformed, operation: "control request", detail: detail)
    }
}
