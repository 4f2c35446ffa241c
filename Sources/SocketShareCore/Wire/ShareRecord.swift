import Glibc

/// A share: what it is for, who made it, and for how long. The one model of a share: the escrow
/// table holds one per share (beside the held descriptor), a broker hands them to its successor on
/// takeover (each descriptor travels alongside, in the same message), and a listing
/// (``HeldShare``) is a view of one.
package struct ShareRecord: Hashable, Sendable {
    /// The share's id at its holder.
    package var id: UInt64
    /// What a claimant must prove, whether it claims the descriptor or pulls it (pidfd).
    package var secret: ShareSecret
    /// How the target redeems it.
    package var mechanism: ShareMechanism
    /// The only process that may claim it.
    package var target: ShareTarget
    /// The process that made the share.
    package var depositor: ProcessIdentity
    /// The depositor's uid: it (or root) may revoke and list the share.
    package var depositorUID: uid_t
    /// Wall-clock creation time, milliseconds since the epoch.
    package var createdAtMilliseconds: UInt64
    /// Wall-clock expiry, milliseconds since the epoch.
    package var expiresAtMilliseconds: UInt64

    package func write(to writer: inout ByteWriter) {
        writer.write(id)
        writer.write(secret.bytes)
        writer.write(mechanism.rawValue)
        writer.write(UInt32(bitPattern: target.identity.pid))
        writer.write(target.identity.startTime)
        writer.write(target.uniqueInode ?? 0)
        writer.write(target.uid)
        writer.write(UInt32(bitPattern: depositor.pid))
        writer.write(depositor.startTime)
        writer.write(depositorUID)
        writer.write(createdAtMilliseconds)
        writer.write(expiresAtMilliseconds)
    }

    package init(
        id: UInt64, secret: ShareSecret, mechanism: ShareMechanism, target: ShareTarget, depositor: ProcessIdentity,
        depositorUID: uid_t, createdAtMilliseconds: UInt64, expiresAtMilliseconds: UInt64
    ) {
        self.id = id
        self.secret = secret
        self.mechanism = mechanism
        self.target = target
        self.depositor = depositor
        self.depositorUID = depositorUID
        self.createdAtMilliseconds = createdAtMilliseconds
        self.expiresAtMilliseconds = expiresAtMilliseconds
    }

    package init(from reader: inout ByteReader) throws(SocketShareError) {
        id = try reader.read(field: "id")
        secret = ShareSecret(bytes: try reader.readBytes(ShareSecret.byteCount, field: "secret"))!
        let mechanismCode: UInt8 = try reader.read(field: "mechanism")
        guard let mechanism = ShareMechanism(rawValue: mechanismCode) else {
            throw reader.invalid("mechanism", "\(mechanismCode) is not a mechanism")
        }
        self.mechanism = mechanism
        let pid = pid_t(bitPattern: try reader.read(UInt32.self, field: "targetPid"))
        let start: UInt64 = try reader.read(field: "targetStartTime")
        let inode: UInt64 = try reader.read(field: "targetInode")
        let uid: uid_t = try reader.read(field: "targetUid")
        target = ShareTarget(identity: ProcessIdentity(pid: pid, startTime: start), uid: uid, uniqueInode: inode == 0 ? nil : inode)
        depositor = ProcessIdentity(
            pid: pid_t(bitPattern: try reader.read(UInt32.self, field: "depositorPid")),
            startTime: try reader.read(field: "depositorStartTime"))
        depositorUID = try reader.read(field: "depositorUid")
        createdAtMilliseconds = try reader.read(field: "createdAt")
        expiresAtMilliseconds = try reader.read(field: "expiresAt")
    }
}
