import SocketShare
import SocketShareCore
/// One `--listen [NAME=]ADDR` of `sockshare serve`: an endpoint and the name its sockets carry
/// (`LISTEN_FDNAMES` in shared mode, the listener name of each connection in handoff mode).
public struct ListenerSpecification: Hashable, Sendable, CustomStringConvertible, Codable {
    /// The name.
    public var name: String
    /// The endpoint to bind.
    public var endpoint: SocketEndpoint

    /// Creates a specification.
    public init(name: String, endpoint: SocketEndpoint) {
        self.name = name
        self.endpoint = endpoint
    }

    /// Parses `[NAME=]ADDR`; without a name, `listener<index>`.
    ///
    /// - Throws: `SocketShareError` with code `invalidArgument` for a bad name or address.
    public init(parsing text: String, index: Int) throws(SocketShareError) {
        var name = "listener\(index)"
        var address = text
        if let equals = text.firstIndex(of: "="), !text[..<equals].contains(":") {
            name = String(text[..<equals])
            address = String(text[text.index(after: equals)...])
        }
        guard !name.isEmpty, name.utf8.count <= 255,
              name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") && $0 != UInt8(ascii: "=") }) else {
            throw SocketShareError(
                .invalidArgument, operation: "parse listener",
                detail: "\(text): a name is 1 to 255 printable ASCII characters without spaces, ':' or '='")
        }
        self.name = name
        self.endpoint = try SocketEndpoint(parsing: address)
    }

    /// `NAME=ADDR`.
    public var description: String { "\(name)=\(endpoint)" }

    /// Encodes as its text form, `NAME=ADDR`.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    /// Decodes the text form.
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do {
            self = try ListenerSpecification(parsing: text, index: 0)
        } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }
}
