/// An address with its transport, as users write it: `tcp://127.0.0.1:8080`, `tcp://[::1]:8080`,
/// `udp://127.0.0.1:5353`, `unix:///run/app.sock`, `unix-dgram:///run/app.sock`,
/// `unix-seqpacket:///run/app.sock`.
public struct SocketEndpoint: Hashable, Sendable, CustomStringConvertible {
    /// The socket address.
    public var address: SocketAddress
    /// The socket type the scheme implies.
    public var kind: SocketKind

    /// Creates an endpoint from its parts.
    public init(address: SocketAddress, kind: SocketKind) {
        self.address = address
        self.kind = kind
    }

    /// Parses the text form.
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` saying what is wrong with `text`.
    public init(parsing text: String) throws(SocketShareError) {
        func invalid(_ why: String) -> SocketShareError {
            SocketShareError(.invalidArgument, operation: "parse address", detail: "\(text): \(why)")
        }
        guard let separator = text.firstRange(of: "://") else {
            throw invalid("expected SCHEME://ADDRESS with scheme tcp, udp, unix, unix-dgram or unix-seqpacket")
        }
        let scheme = String(text[..<separator.lowerBound])
        let rest = String(text[separator.upperBound...])
        switch scheme {
        case "unix", "unix-dgram", "unix-seqpacket":
            guard rest.hasPrefix("/") else { throw invalid("a unix address needs an absolute path (unix:///path)") }
            address = .unix(path: rest)
            kind = scheme == "unix" ? .stream : (scheme == "unix-dgram" ? .datagram : .seqpacket)
            // Checks the length and NUL bytes now rather than at bind time.
            try address.withSockAddr { (_, _) throws(SocketShareError) in }
        case "tcp", "udp":
            kind = scheme == "tcp" ? .stream : .datagram
            let host: String
            let portText: String
            if rest.hasPrefix("[") {
                guard let close = rest.firstIndex(of: "]") else { throw invalid("unclosed [ in IPv6 address") }
                host = String(rest[rest.index(after: rest.startIndex)..<close])
                let after = rest[rest.index(after: close)...]
                guard after.hasPrefix(":") else { throw invalid("expected :PORT after ]") }
                portText = String(after.dropFirst())
            } else {
                guard let colon = rest.lastIndex(of: ":") else { throw invalid("expected HOST:PORT") }
                host = String(rest[..<colon])
                portText = String(rest[rest.index(after: colon)...])
                if host.contains(":") { throw invalid("write IPv6 addresses in brackets: \(scheme)://[::1]:PORT") }
            }
            guard let port = UInt16(portText) else { throw invalid("port \"\(portText)\" is not a number in 0...65535") }
            guard !host.isEmpty else { throw invalid("no host") }
            do throws(SocketShareError) {
                address = try SocketAddress.ip(host, port: port)
            } catch {
                throw invalid("\(host) is not a numeric IPv4 or IPv6 address")
            }
        default:
            throw invalid("unknown scheme \(scheme) (tcp, udp, unix, unix-dgram, unix-seqpacket)")
        }
    }

    /// The text form, which ``init(parsing:)`` reads back.
    public var description: String {
        switch (address, kind) {
        case (.unix(let path), .stream): "unix://\(path)"
        case (.unix(let path), .datagram): "unix-dgram://\(path)"
        case (.unix(let path), .seqpacket): "unix-seqpacket://\(path)"
        case (_, .datagram): "udp://\(address)"
        default: "tcp://\(address)"
        }
    }
}
