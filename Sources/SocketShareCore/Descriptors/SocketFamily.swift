import Glibc

/// The socket families SocketShare shares: IPv4, IPv6 and Unix.
public enum SocketFamily: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// `AF_INET`.
    case inet = 1
    /// `AF_INET6`.
    case inet6 = 2
    /// `AF_UNIX`.
    case unix = 3

    /// The family for an `AF_*` constant.
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` for any other family.
    public init(addressFamily: CInt) throws(SocketShareError) {
        switch addressFamily {
        case AF_INET: self = .inet
        case AF_INET6: self = .inet6
        case AF_UNIX: self = .unix
        default:
            throw SocketShareError(
                .invalidArgument, operation: "describe socket",
                detail: "address family \(addressFamily) is not shared by SocketShare (inet, inet6 and unix are)")
        }
    }

    /// The `AF_*` constant.
    public var addressFamily: CInt {
        switch self {
        case .inet: AF_INET
        case .inet6: AF_INET6
        case .unix: AF_UNIX
        }
    }

    /// `inet`, `inet6` or `unix` (the names `sockshare inspect` prints).
    public var description: String {
        switch self {
        case .inet: "inet"
        case .inet6: "inet6"
        case .unix: "unix"
        }
    }
}

/// The socket types SocketShare shares: stream, datagram and sequenced-packet.
public enum SocketKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// `SOCK_STREAM`.
    case stream = 1
    /// `SOCK_DGRAM`.
    case datagram = 2
    /// `SOCK_SEQPACKET`.
    case seqpacket = 3

    /// The kind for a `SOCK_*` constant (without `SOCK_CLOEXEC`/`SOCK_NONBLOCK`).
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` for any other type.
    public init(socketType: CInt) throws(SocketShareError) {
        switch socketType {
        case Kernel.streamType: self = .stream
        case Kernel.datagramType: self = .datagram
        case Kernel.seqpacketType: self = .seqpacket
        default:
            throw SocketShareError(
                .invalidArgument, operation: "describe socket",
                detail: "socket type \(socketType) is not shared by SocketShare (stream, dgram and seqpacket are)")
        }
    }

    /// The `SOCK_*` constant.
    public var socketType: CInt {
        switch self {
        case .stream: Kernel.streamType
        case .datagram: Kernel.datagramType
        case .seqpacket: Kernel.seqpacketType
        }
    }

    /// `stream`, `dgram` or `seqpacket` (the names `sockshare inspect` prints).
    public var description: String {
        switch self {
        case .stream: "stream"
        case .datagram: "dgram"
        case .seqpacket: "seqpacket"
        }
    }
}
