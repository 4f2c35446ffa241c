import Glibc

/// A socket address: IPv4, IPv6, or Unix (path, abstract or unnamed).
///
/// The text forms are the ones users type: `127.0.0.1:8080`, `[::1]:8080`, `unix:/run/app.sock`.
public enum SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// An IPv4 address, host in dotted-quad form.
    case ipv4(host: String, port: UInt16)
    /// An IPv6 address, host without brackets.
    case ipv6(host: String, port: UInt16, scopeID: UInt32 = 0)
    /// A Unix socket bound to a path in the file system.
    case unix(path: String)
    /// A Unix socket in the abstract namespace (the name without its leading NUL).
    case unixAbstract(name: [UInt8])
    /// A Unix socket with no name (a socketpair end, or a client that never bound).
    case unixUnnamed

    /// The address family (`AF_INET`, `AF_INET6`, `AF_UNIX`).
    public var family: CInt {
        switch self {
        case .ipv4: AF_INET
        case .ipv6: AF_INET6
        case .unix, .unixAbstract, .unixUnnamed: AF_UNIX
        }
    }

    /// The port of an IP address; nil for Unix addresses.
    public var port: UInt16? {
        switch self {
        case .ipv4(_, let port), .ipv6(_, let port, _): port
        default: nil
        }
    }

    /// `127.0.0.1:8080`, `[::1]:8080`, `unix:/path`, `unix:@name`, `unix:(unnamed)`. Control
    /// characters in a Unix name (anyone may bind one with a newline in it) are escaped, `\u{A}`, so
    /// that a logged address is one line.
    public var description: String {
        switch self {
        case .ipv4(let host, let port): "\(host):\(port)"
        case .ipv6(let host, let port, let scope): scope == 0 ? "[\(host)]:\(port)" : "[\(host)%\(scope)]:\(port)"
        case .unix(let path): "unix:\(path.escapingControlCharacters)"
        case .unixAbstract(let name): "unix:@\(String(decoding: name, as: UTF8.self).escapingControlCharacters)"
        case .unixUnnamed: "unix:(unnamed)"
        }
    }

    /// The same text as ``description``, built without formatting machinery for IPv4 (it is made for
    /// every connection a dispatcher hands out).
    package var text: String {
        guard case .ipv4(let host, let port) = self else { return description }
        var bytes = Array(host.utf8)
        bytes.append(UInt8(ascii: ":"))
        var digits: [UInt8] = []
        var value = port
        repeat {
            digits.append(UInt8(ascii: "0") + UInt8(value % 10))
            value /= 10
        } while value > 0
        bytes.append(contentsOf: digits.reversed())
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Parses a numeric IPv4 or IPv6 address and port.
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` when `host` is not a numeric address.
    public static func ip(_ host: String, port: UInt16) throws(SocketShareError) -> SocketAddress {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return .ipv4(host: host, port: port) }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 { return .ipv6(host: host, port: port) }
        throw SocketShareError(
            .invalidArgument, operation: "parse address",
            detail: "\(host): not a numeric IPv4 or IPv6 address")
    }

    /// Calls `body` with this address as a `sockaddr` and its length.
    package func withSockAddr<R>(
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SocketShareError) -> R
    ) throws(SocketShareError) -> R {
        switch self {
        case .ipv4(let host, let port):
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
                throw SocketShareError(.invalidArgument, operation: "address", detail: "\(host): not an IPv4 address")
            }
            return try withUnsafePointer(to: &address) { (pointer) throws(SocketShareError) in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (pointer) throws(SocketShareError) in
                    try body(pointer, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        case .ipv6(let host, let port, let scope):
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            address.sin6_scope_id = scope
            guard inet_pton(AF_INET6, host, &address.sin6_addr) == 1 else {
                throw SocketShareError(.invalidArgument, operation: "address", detail: "\(host): not an IPv6 address")
            }
            return try withUnsafePointer(to: &address) { (pointer) throws(SocketShareError) in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (pointer) throws(SocketShareError) in
                    try body(pointer, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        case .unix, .unixAbstract, .unixUnnamed:
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let capacity = MemoryLayout.size(ofValue: address.sun_path)
            var nameBytes: [UInt8]
            switch self {
            case .unix(let path): nameBytes = Array(path.utf8)
            case .unixAbstract(let name): nameBytes = [0] + name
            default: nameBytes = []
            }
            if case .unix(let path) = self {
                guard !nameBytes.isEmpty, !nameBytes.contains(0) else {
                    throw SocketShareError(
                        .invalidArgument, operation: "address", detail: "unix path \"\(path)\" is empty or holds a NUL")
                }
                guard nameBytes.count < capacity else {
                    throw SocketShareError(
                        .invalidArgument, operation: "address",
                        detail: "unix path \(path) is \(nameBytes.count) bytes; the limit is \(capacity - 1)")
                }
            }
            guard nameBytes.count <= capacity else {
                throw SocketShareError(.invalidArgument, operation: "address", detail: "abstract name too long")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (index, byte) in nameBytes.enumerated() { raw[index] = byte }
            }
            let isPath: Bool = if case .unix = self { true } else { false }
            let length = MemoryLayout<sa_family_t>.size + nameBytes.count + (isPath ? 1 : 0)
            return try withUnsafePointer(to: &address) { (pointer) throws(SocketShareError) in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (pointer) throws(SocketShareError) in
                    try body(pointer, socklen_t(length))
                }
            }
        }
    }

    /// Reads an address with a `getsockname`-shaped call.
    package static func reading(
        operation: String, _ call: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> CInt
    ) throws(SocketShareError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, &length) }
        }
        if result != 0 { throw SocketShareError.system(operation, errno: Glibc.errno) }
        return try SocketAddress(storage: storage, length: length)
    }

    /// Decodes a `sockaddr_storage` the kernel filled in.
    package init(storage: sockaddr_storage, length: socklen_t) throws(SocketShareError) {
        var storage = storage
        switch CInt(storage.ss_family) {
        case AF_INET:
            let address = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) }
            // Dotted quad by hand: inet_ntop formats through sprintf, which shows in profiles.
            let octets = withUnsafeBytes(of: address.sin_addr.s_addr) { Array($0) }
            var host: [UInt8] = []
            host.reserveCapacity(15)
            for (index, octet) in octets.enumerated() {
                if index > 0 { host.append(UInt8(ascii: ".")) }
                if octet >= 100 { host.append(UInt8(ascii: "0") + octet / 100) }
                if octet >= 10 { host.append(UInt8(ascii: "0") + (octet / 10) % 10) }
                host.append(UInt8(ascii: "0") + octet % 10)
            }
            self = .ipv4(host: String(decoding: host, as: UTF8.self), port: UInt16(bigEndian: address.sin_port))
        case AF_INET6:
            let address = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            var raw = address.sin6_addr
            inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
            self = .ipv6(host: String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
                         port: UInt16(bigEndian: address.sin6_port), scopeID: address.sin6_scope_id)
        case AF_UNIX:
            let pathLength = Int(length) - MemoryLayout<sa_family_t>.size
            let bytes = withUnsafeBytes(of: &storage) { raw in
                Array(raw[MemoryLayout<sa_family_t>.size..<(MemoryLayout<sa_family_t>.size + max(pathLength, 0))])
            }
            if bytes.isEmpty {
                self = .unixUnnamed
            } else if bytes[0] == 0 {
                self = .unixAbstract(name: Array(bytes.dropFirst()))
            } else {
                self = .unix(path: String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self))
            }
        default:
            throw SocketShareError(
                .invalidArgument, operation: "decode address", detail: "address family \(storage.ss_family) is not supported")
        }
    }
}
