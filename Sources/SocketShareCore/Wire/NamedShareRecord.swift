import Glibc

/// A named share as the broker holds it: the socket is claimed by name, by any process its policy
/// admits, rather than by one target pid. The model the broker's table keeps per named share and
/// hands to a successor on takeover; ``NamedShare`` is the listing view of one.
package struct NamedShareRecord: Hashable, Sendable {
    /// The share's id at the broker (`sockshare revoke ID`).
    package var id: UInt64
    /// The name claimants ask for; unique at the broker.
    package var name: String
    /// Who may claim it.
    package var policy: ClaimPolicy
    /// Whether every admitted claimant gets a descriptor until it is revoked (a standing store, as
    /// systemd's `FDSTORE=1`), rather than the first one only.
    package var keep: Bool
    /// The process that deposited it; pid 0 when the broker cannot see the depositor's pid.
    package var depositor: ProcessIdentity
    /// The depositor's uid: it (or root) may revoke and list the share.
    package var depositorUID: uid_t
    /// Wall-clock creation time, milliseconds since the epoch.
    package var createdAtMilliseconds: UInt64
    /// Wall-clock expiry, milliseconds since the epoch; 0 for a kept share held until revoked.
    package var expiresAtMilliseconds: UInt64
    /// How many claimants received it.
    package var claims: UInt64

    package init(
        id: UInt64, name: String, policy: ClaimPolicy, keep: Bool, depositor: ProcessIdentity, depositorUID: uid_t,
        createdAtMilliseconds: UInt64, expiresAtMilliseconds: UInt64, claims: UInt64 = 0
    ) {
        self.id = id
        self.name = name
        self.policy = policy
        self.keep = keep
        self.depositor = depositor
        self.depositorUID = depositorUID
        self.createdAtMilliseconds = createdAtMilliseconds
        self.expiresAtMilliseconds = expiresAtMilliseconds
        self.claims = claims
    }

    package func write(to writer: inout ByteWriter) {
        writer.write(id)
        writer.writeShortText(name)
        policy.write(to: &writer)
        writer.write(UInt8(keep ? 1 : 0))
        writer.write(UInt32(bitPattern: depositor.pid))
        writer.write(depositor.startTime)
        writer.write(depositorUID)
        writer.write(createdAtMilliseconds)
        writer.write(expiresAtMilliseconds)
        writer.write(claims)
    }

    package init(from reader: inout ByteReader) throws(SocketShareError) {
        id = try reader.read(field: "id")
        name = try reader.readShortText(field: "name")
        if let problem = ShareName.problem(name) { throw reader.invalid("name", problem) }
        policy = try ClaimPolicy(from: &reader)
        keep = try reader.read(UInt8.self, field: "keep") != 0
        depositor = ProcessIdentity(
            pid: pid_t(bitPattern: try reader.read(UInt32.self, field: "depositorPid")),
            startTime: try reader.read(field: "depositorStartTime"))
        depositorUID = try reader.read(field: "depositorUid")
        createdAtMilliseconds = try reader.read(field: "createdAt")
        expiresAtMilliseconds = try reader.read(field: "expiresAt")
        claims = try reader.read(field: "claims")
    }
}
