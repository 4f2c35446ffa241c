import Glibc

/// What a socket is: family, type, protocol, addresses, state and identity.
///
/// Read from a descriptor with ``init(of:)``; every field comes from the kernel
/// (`SO_DOMAIN`, `SO_TYPE`, `SO_PROTOCOL`, `SO_ACCEPTCONN`, `getsockname`, `getpeername`,
/// `F_GETFL`, `fstat`).
public struct SocketDescription: Hashable, Sendable, CustomStringConvertible {
    /// The address family.
    public var family: SocketFamily
    /// The socket type.
    public var kind: SocketKind
    /// The protocol number (`IPPROTO_TCP` = 6, `IPPROTO_UDP` = 17, 0 for Unix sockets).
    public var protocolNumber: CInt
    /// The address the socket is bound to.
    public var localAddress: SocketAddress
    /// The connected peer's address; nil when the socket is not connected.
    public var peerAddress: SocketAddress?
    /// Whether the socket is listening (`SO_ACCEPTCONN`).
    public var isListening: Bool
    /// Whether `O_NONBLOCK` is set. It lives in the open file description, which every process
    /// holding a descriptor of this socket shares: flipping it changes it for all of them.
    public var isNonBlocking: Bool
    /// The socket's identity (inode).
    public var identity: SocketIdentity

    /// Whether the socket has a peer.
    public var isConnected: Bool { peerAddress != nil }

    /// Describes the socket behind `fd`.
    ///
    /// - Throws: ``SocketShareError`` with code `invalidArgument` when `fd` is not a socket or its
    ///   family or type is not one SocketShare shares; `system` when `fd` is not open.
    public init(of fd: CInt) throws(SocketShareError) {
        identity = try SocketIdentity(of: fd)
        family = try SocketFamily(addressFamily: Kernel.socketOption(fd, SOL_SOCKET, SO_DOMAIN))
        kind = try SocketKind(socketType: Kernel.socketOption(fd, SOL_SOCKET, SO_TYPE))
        protocolNumber = try Kernel.socketOption(fd, SOL_SOCKET, SO_PROTOCOL)
        isListening = try Kernel.socketOption(fd, SOL_SOCKET, SO_ACCEPTCONN) != 0
        isNonBlocking = try Kernel.statusFlags(fd) & O_NONBLOCK != 0
        localAddress = try Kernel.localAddress(fd)
        peerAddress = try Kernel.peerAddress(fd)
    }

    /// A description of a socket known otherwise (for tests of what consumes descriptions).
    package init(
        family: SocketFamily, kind: SocketKind, protocolNumber: CInt, localAddress: SocketAddress,
        peerAddress: SocketAddress? = nil, isListening: Bool, isNonBlocking: Bool = false, identity: SocketIdentity
    ) {
        self.family = family
        self.kind = kind
        self.protocolNumber = protocolNumber
        self.localAddress = localAddress
        self.peerAddress = peerAddress
        self.isListening = isListening
        self.isNonBlocking = isNonBlocking
        self.identity = identity
    }

    /// The protocol's name where it has a common one: `tcp`, `udp`, `sctp`, `mptcp`; else the number.
    public var protocolName: String {
        switch protocolNumber {
        case 0: family == .unix ? "unix" : "0"
        case CInt(IPPROTO_TCP): "tcp"
        case CInt(IPPROTO_UDP): "udp"
        case 132: "sctp"
        case 262: "mptcp"
        default: "\(protocolNumber)"
        }
    }

    /// `inet stream tcp listening on 127.0.0.1:8080 socket:[1234]`.
    public var description: String {
        var text = "\(family) \(kind) \(protocolName)"
        if isListening {
            text += " listening on \(localAddress)"
        } else if let peerAddress {
            text += " \(localAddress) -> \(peerAddress)"
        } else {
            text += " bound to \(localAddress)"
        }
        if isNonBlocking { text += " non-blocking" }
        return text + " \(identity)"
    }
}
