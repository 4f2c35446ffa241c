import Glibc

/// A named share as the broker lists it: its name, policy and socket, who deposited it and how
/// often it was claimed. Never anything a claimant could use without the policy's consent.
public struct NamedShare: Hashable, Sendable {
    /// The share's id at the broker (`sockshare revoke ID`).
    public var id: UInt64
    /// The name claimants ask for.
    public var name: String
    /// Who may claim it.
    public var policy: ClaimPolicy
    /// Whether every admitted claimant gets a descriptor until it is revoked.
    public var keep: Bool
    /// How many claimants received it.
    public var claims: UInt64
    /// The socket's family.
    public var family: SocketFamily
    /// The socket's type.
    public var kind: SocketKind
    /// Whether the socket listens.
    public var isListening: Bool
    /// The socket's local address, as text.
    public var localAddress: String
    /// The process that deposited it; 0 when the broker cannot see its pid.
    public var sourcePID: pid_t
    /// The depositor's uid (who may revoke it).
    public var depositorUID: uid_t
    /// How long it has been held, in milliseconds.
    public var ageMilliseconds: UInt64
    /// How long until it expires, in milliseconds; nil for a kept share held until revoked.
    public var expiresInMilliseconds: UInt64?

    package init(_ record: NamedShareRecord, description: SocketDescription, nowMilliseconds now: UInt64) {
        self.init(
            record, family: description.family, kind: description.kind, isListening: description.isListening,
            localAddress: "\(description.localAddress)", nowMilliseconds: now)
    }

    package init(
        _ record: NamedShareRecord, family: SocketFamily, kind: SocketKind, isListening: Bool, localAddress: String,
        nowMilliseconds now: UInt64
    ) {
        id = record.id
        name = record.name
        policy = record.policy
        keep = record.keep
        claims = record.claims
        self.family = family
        self.kind = kind
        self.isListening = isListening
        self.localAddress = localAddress
        sourcePID = record.depositor.pid
        depositorUID = record.depositorUID
        ageMilliseconds = now &- record.createdAtMilliseconds
        expiresInMilliseconds = record.expiresAtMilliseconds == 0
            ? nil : (record.expiresAtMilliseconds > now ? record.expiresAtMilliseconds - now : 0)
    }

    package func write(to writer: inout ByteWriter) {
        writer.write(id)
        writer.writeShortText(name)
        policy.write(to: &writer)
        writer.write(UInt8((keep ? 1 : 0) | (isListening ? 2 : 0) | (expiresInMilliseconds == nil ? 4 : 0)))
        writer.write(claims)
        writer.write(family.rawValue)
        writer.write(kind.rawValue)
        writer.write(UInt32(bitPattern: sourcePID))
        writer.write(depositorUID)
        writer.write(ageMilliseconds)
        writer.write(expiresInMilliseconds ?? 0)
        writer.writeShortText(localAddress)
    }

    package init(from reader: inout ByteReader) throws(SocketShareError) {
        id = try reader.read(field: "id")
        name = try reader.readShortText(field: "name")
        policy = try ClaimPolicy(from: &reader)
        let flags: UInt8 = try reader.read(field: "flags")
        keep = flags & 1 != 0
        isListening = flags & 2 != 0
        claims = try reader.read(field: "claims")
        (family, kind) = try reader.readFamilyAndKind()
        sourcePID = pid_t(bitPattern: try reader.read(UInt32.self, field: "sourcePid"))
        depositorUID = try reader.read(field: "depositorUid")
        ageMilliseconds = try reader.read(field: "age")
        let expiresIn: UInt64 = try reader.read(field: "expiresIn")
        expiresInMilliseconds = flags & 4 != 0 ? nil : expiresIn
        localAddress = try reader.readShortText(field: "address")
    }
}
