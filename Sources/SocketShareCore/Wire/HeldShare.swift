import Glibc

/// A share as the broker lists it: what is held, for whom, for how long. Never the secret.
public struct HeldShare: Hashable, Sendable {
    /// The share's id at the broker.
    public var id: UInt64
    /// The socket's family.
    public var family: SocketFamily
    /// The socket's type.
    public var kind: SocketKind
    /// The socket's protocol number.
    public var protocolNumber: CInt
    /// Whether the socket listens.
    public var isListening: Bool
    /// Whether the socket is connected.
    public var isConnected: Bool
    /// The socket's local address, as text.
    public var localAddress: String
    /// The process that deposited it.
    public var sourcePID: pid_t
    /// The only process that may claim it.
    public var targetPID: pid_t
    /// The depositor's uid (who may revoke it).
    public var depositorUID: uid_t
    /// How long it has been held, in milliseconds.
    public var ageMilliseconds: UInt64
    /// How long until it expires, in milliseconds.
    public var expiresInMilliseconds: UInt64

    /// Creates a listing entry.
    public init(
        id: UInt64, family: SocketFamily, kind: SocketKind, protocolNumber: CInt, isListening: Bool, isConnected: Bool,
        localAddress: String, sourcePID: pid_t, targetPID: pid_t, depositorUID: uid_t, ageMilliseconds: UInt64,
        expiresInMilliseconds: UInt64
    ) {
        self.id = id
        self.family = family
        self.kind = kind
        self.protocolNumber = protocolNumber
        self.isListening = isListening
        self.isConnected = isConnected
        self.localAddress = localAddress
        self.sourcePID = sourcePID
        self.targetPID = targetPID
        self.depositorUID = depositorUID
        self.ageMilliseconds = ageMilliseconds
        self.expiresInMilliseconds = expiresInMilliseconds
    }

    package func write(to writer: inout ByteWriter) {
        writer.write(id)
        writer.write(family.rawValue)
        writer.write(kind.rawValue)
        writer.write(UInt32(bitPattern: protocolNumber))
        writer.write(UInt8((isListening ? 1 : 0) | (isConnected ? 2 : 0)))
        writer.write(UInt32(bitPattern: sourcePID))
        writer.write(UInt32(bitPattern: targetPID))
        writer.write(depositorUID)
        writer.write(ageMilliseconds)
        writer.write(expiresInMilliseconds)
        writer.writeShortText(localAddress)
    }

    package init(from reader: inout ByteReader) throws(SocketShareError) {
        id = try reader.read(field: "id")
        (family, kind) = try reader.readFamilyAndKind()
        protocolNumber = CInt(bitPattern: try reader.read(UInt32.self, field: "protocol"))
        let flags: UInt8 = try reader.read(field: "flags")
        isListening = flags & 1 != 0
        isConnected = flags & 2 != 0
        sourcePID = pid_t(bitPattern: try reader.read(UInt32.self, field: "sourcePid"))
        targetPID = pid_t(bitPattern: try reader.read(UInt32.self, field: "targetPid"))
        depositorUID = try reader.read(field: "depositorUid")
        ageMilliseconds = try reader.read(field: "age")
        expiresInMilliseconds = try reader.read(field: "expiresIn")
        localAddress = try reader.readShortText(field: "address")
    }
}

extension HeldShare {
    /// The listing view of a share: its record and socket, aged at `nowMilliseconds` (wall clock).
    package init(_ record: ShareRecord, description: SocketDescription, nowMilliseconds now: UInt64) {
        self.init(
            id: record.id, family: description.family, kind: description.kind,
            protocolNumber: description.protocolNumber, isListening: description.isListening,
            isConnected: description.isConnected, localAddress: "\(description.localAddress)",
            sourcePID: record.depositor.pid, targetPID: record.target.identity.pid, depositorUID: record.depositorUID,
            ageMilliseconds: now &- record.createdAtMilliseconds,
            expiresInMilliseconds: record.expiresAtMilliseconds > now ? record.expiresAtMilliseconds - now : 0)
    }
}

extension ByteReader {
    /// A socket's family and type, one byte each (listings of held and named shares).
    package mutating func readFamilyAndKind() throws(SocketShareError) -> (SocketFamily, SocketKind) {
        let familyCode: UInt8 = try read(field: "family")
        guard let family = SocketFamily(rawValue: familyCode) else { throw invalid("family", "\(familyCode) is not a family") }
        let typeCode: UInt8 = try read(field: "type")
        guard let kind = SocketKind(rawValue: typeCode) else { throw invalid("type", "\(typeCode) is not a type") }
        return (family, kind)
    }
}
