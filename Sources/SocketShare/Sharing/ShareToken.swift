import Glibc
import SocketShareCore

/// SocketShare's `WSAPROTOCOL_INFO`: everything a target needs to adopt a shared socket.
///
/// A source gets a token from `SocketShare.duplicate(_:for:options:)` and passes it to the target
/// over any IPC: a pipe, a file, an environment variable, an HTTP header. Its text form
/// (`text`) is one line of URL-safe characters starting with `sks1.`; its binary form
/// (`bytes`) is compact. The target redeems it with `SocketShare.adopt(_:timeout:)`.
///
/// A token describes the socket (family, type, protocol, state, inode), names the source and the
/// target process by pid and start time, says when it expires, and says how to redeem it. The
/// holder authorises claims from its own records, not from the token, so editing a token gains
/// nothing; the checksum only catches corruption.
public struct ShareToken: Hashable, Sendable {
    /// The binary format version this build writes and reads.
    public static let currentVersion: UInt8 = 1
    /// The text form's prefix: format name and version.
    public static let textPrefix = "sks1."

    /// The format version.
    public var version: UInt8
    /// Who holds the share and how it is redeemed.
    public var mechanism: ShareMechanism
    /// The socket's family.
    public var family: SocketFamily
    /// The socket's type.
    public var kind: SocketKind
    /// The socket's protocol number.
    public var protocolNumber: CInt
    /// Whether the socket was listening when shared.
    public var isListening: Bool
    /// Whether the socket was connected when shared.
    public var isConnected: Bool
    /// Whether `O_NONBLOCK` was set when shared (it is shared by every holder).
    public var isNonBlocking: Bool
    /// The socket's inode; the adopter checks the descriptor it receives against it.
    public var socketInode: UInt64
    /// The process that shared the socket.
    public var source: ProcessIdentity
    /// The only process that may claim the share.
    public var target: ProcessIdentity
    /// When the share was made, in milliseconds since the Unix epoch.
    public var createdAtMilliseconds: UInt64
    /// When the share expires, in milliseconds since the Unix epoch.
    public var expiresAtMilliseconds: UInt64
    /// The path of the holder's `SOCK_SEQPACKET` socket (sharer or broker).
    public var endpoint: String
    /// The share's id at its holder.
    public var shareID: UInt64
    /// What the holder asks of a claimant: with escrow (sharer, broker) the descriptor is claimed
    /// from the holder; with pidfd the holder confirms the claim and the target pulls the
    /// descriptor itself (`pidfd_getfd`).
    package var secret: ShareSecret

    /// Creates a token from its parts; tokens come from `duplicate` or from decoding.
    package init(
        mechanism: ShareMechanism, description: SocketDescription, source: ProcessIdentity, target: ProcessIdentity,
        createdAtMilliseconds: UInt64, expiresAtMilliseconds: UInt64, endpoint: String, shareID: UInt64,
        secret: ShareSecret
    ) {
        self.version = Self.currentVersion
        self.mechanism = mechanism
        self.family = description.family
        self.kind = description.kind
        self.protocolNumber = description.protocolNumber
        self.isListening = description.isListening
        self.isConnected = description.isConnected
        self.isNonBlocking = description.isNonBlocking
        self.socketInode = description.identity.inode
        self.source = source
        self.target = target
        self.createdAtMilliseconds = createdAtMilliseconds
        self.expiresAtMilliseconds = expiresAtMilliseconds
        self.endpoint = endpoint
        self.shareID = shareID
        self.secret = secret
    }

    /// Whether the token's expiry time has passed by the wall clock.
    public var isExpired: Bool { ShareTime.nowMilliseconds >= expiresAtMilliseconds }
}
