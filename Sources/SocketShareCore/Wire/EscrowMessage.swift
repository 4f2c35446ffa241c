import Glibc

/// The messages of the escrow protocol, spoken between clients and an escrow holder (the in-process
/// sharer or the broker daemon) over a `SOCK_SEQPACKET` Unix socket.
///
/// Every message is one packet: `u8 version | u8 type | body`, big-endian. A holder answers a
/// message of a version it does not speak with a ``EscrowFailure/unsupportedVersion`` failure
/// naming the version it does speak, never with silence. `docs/PROTOCOL.md` is the reference for
/// other languages.
package enum EscrowMessage: Equatable, Sendable {
    /// Client → holder: claim share `shareID`, proving the secret. Answered by ``claimed(shareID:)``
    /// with the descriptor attached, or ``failure(_:_:)``.
    case claim(shareID: UInt64, secret: ShareSecret)
    /// Client → holder: the descriptor arrived; the holder may close its copy. Without it the holder
    /// keeps the share and offers it again if the claimant goes away.
    case acknowledge(shareID: UInt64)
    /// Client → broker, with one descriptor: hold it for `targetPID` (whose start time must be
    /// `targetStartTime` when that is not 0) for `timeToLiveMilliseconds`. Answered by ``deposited(token:)``.
    case deposit(targetPID: UInt32, targetStartTime: UInt64, timeToLiveMilliseconds: UInt32)
    /// Client → broker: end share `shareID` now (its depositor's uid, or root, only).
    case revoke(shareID: UInt64)
    /// Client → broker: list the shares the asker may see, those with ids above `after`.
    case list(after: UInt64)
    /// Client → broker: the broker's metrics, as Prometheus text.
    case metrics
    /// New broker → running broker: hand over everything you hold (the broker's uid, or root, only).
    case takeover
    /// New broker → old broker: all state arrived; you may exit.
    case takeoverDone
    /// Client → broker, with one descriptor: hold it under `name` for whoever `policy` admits, for
    /// `timeToLiveMilliseconds` (0: until revoked, with `keep` only). With `keep` every admitted
    /// claimant gets a descriptor; without, the first one only. Answered by ``depositedNamed(shareID:)``.
    case depositNamed(name: String, policy: ClaimPolicy, timeToLiveMilliseconds: UInt32, keep: Bool)
    /// Client → broker: claim the share named `name` that uid `from` deposited (nil: the claimant's
    /// own, else root's, else the broker user's). Answered by ``claimed(shareID:)`` with the
    /// descriptor attached (then acknowledge it, as any claim), or ``failure(_:_:)``. With
    /// `waitMilliseconds`, a name not held yet, or a single-use share in another claimant's hands,
    /// is waited for by the broker: the answer comes once it can be handed out, or when the wait
    /// ends (the broker may cut a wait to its maximum).
    case claimNamed(name: String, waitMilliseconds: UInt32, from: uid_t?)
    /// Client → broker: end the share named `name` that uid `from` deposited (nil: the client's
    /// own); only its depositor or root may. Answered by ``revoked(shareID:)``.
    case revokeNamed(name: String, from: uid_t?)
    /// Client → broker: list the named shares the asker may see, those with ids above `after`.
    case listNamed(after: UInt64)
    /// Client → holder: may I pull share `shareID` (a pidfd share), proving the secret? Answered by
    /// ``pullable(shareID:descriptor:)`` or ``failure(_:_:)``; once the descriptor is pulled and
    /// checked, the client acknowledges it on the same connection, as a claim.
    case pull(shareID: UInt64, secret: ShareSecret)

    /// Holder → client: here is the socket (one `SCM_RIGHTS` descriptor).
    case claimed(shareID: UInt64)
    /// Holder → client: pull descriptor `descriptor` of the holder's process with `pidfd_getfd(2)`;
    /// the holder keeps it open until the acknowledgement.
    case pullable(shareID: UInt64, descriptor: UInt32)
    /// Broker → client: the share is held; here is its token (binary form).
    case deposited(token: [UInt8])
    /// Broker → client: the share is revoked and its duplicate closed.
    case revoked(shareID: UInt64)
    /// Broker → client: some shares; `more` says whether to ask again after the last id.
    case listing(more: Bool, shares: [HeldShare])
    /// Broker → client: Prometheus text.
    case metricsText(String)
    /// Old broker → new broker: the listening socket (one descriptor attached) and how many shares,
    /// then how many named shares, follow.
    case takeoverListener(shareCount: UInt32, namedCount: UInt32)
    /// Old broker → new broker: shares, each with its descriptor attached in the same order.
    case takeoverShares([ShareRecord])
    /// Broker → client: the named share is held under this id.
    case depositedNamed(shareID: UInt64)
    /// Broker → client: some named shares; `more` says whether to ask again after the last id.
    case namedListing(more: Bool, shares: [NamedShare])
    /// Old broker → new broker: named shares, each with its descriptor attached in the same order.
    case takeoverNamed([NamedShareRecord])
    /// Holder → client: the request failed.
    case failure(EscrowFailure, String)

    /// The protocol version this build speaks.
    package static let version: UInt8 = 1
    /// The longest request a holder accepts.
    package static let maximumRequestLength = 4096
    /// The longest reply a client must be ready for (listings, metrics, takeover batches).
    package static let maximumReplyLength = 65536
    /// The most shares in one listing packet.
    package static let listingPageSize = 200
    /// The most named shares in one listing packet (each may carry a 255-byte cgroup path).
    package static let namedListingPageSize = 64
    /// The most named shares per `takeoverNamed` message.
    package static let namedTakeoverBatch = 100

    package enum TypeCode: UInt8 {
        case claim = 0x01
        case acknowledge = 0x02
        case deposit = 0x03
        case revoke = 0x04
        case list = 0x05
        case metrics = 0x06
        case takeover = 0x07
        case takeoverDone = 0x08
        case depositNamed = 0x09
        case claimNamed = 0x0A
        case revokeNamed = 0x0B
        case listNamed = 0x0C
        case pull = 0x0D
        case claimed = 0x81
        case deposited = 0x83
        case revoked = 0x84
        case listing = 0x85
        case metricsText = 0x86
        case takeoverListener = 0x87
        case takeoverShares = 0x88
        case depositedNamed = 0x89
        case takeoverNamed = 0x8A
        case namedListing = 0x8C
        case pullable = 0x8D
        case failure = 0xFF
    }

    /// Whether this message is a request (sent to a holder) rather than a reply.
    package var isRequest: Bool {
        switch self {
        case .claim, .acknowledge, .deposit, .revoke, .list, .metrics, .takeover, .takeoverDone, .depositNamed, .claimNamed,
            .revokeNamed, .listNamed, .pull:
            true
        default: false
        }
    }

    /// The message's wire form.
    package var bytes: [UInt8] {
        var writer = ByteWriter()
        writer.write(Self.version)
        switch self {
        case .claim(let shareID, let secret):
            writer.write(TypeCode.claim.rawValue)
            writer.write(shareID)
            writer.write(secret.bytes)
        case .acknowledge(let shareID):
            writer.write(TypeCode.acknowledge.rawValue)
            writer.write(shareID)
        case .deposit(let pid, let start, let ttl):
            writer.write(TypeCode.deposit.rawValue)
            writer.write(pid)
            writer.write(start)
            writer.write(ttl)
        case .revoke(let shareID):
            writer.write(TypeCode.revoke.rawValue)
            writer.write(shareID)
        case .list(let after):
            writer.write(TypeCode.list.rawValue)
            writer.write(after)
        case .metrics:
            writer.write(TypeCode.metrics.rawValue)
        case .takeover:
            writer.write(TypeCode.takeover.rawValue)
        case .takeoverDone:
            writer.write(TypeCode.takeoverDone.rawValue)
        case .claimed(let shareID):
            writer.write(TypeCode.claimed.rawValue)
            writer.write(shareID)
        case .pull(let shareID, let secret):
            writer.write(TypeCode.pull.rawValue)
            writer.write(shareID)
            writer.write(secret.bytes)
        case .pullable(let shareID, let descriptor):
            writer.write(TypeCode.pullable.rawValue)
            writer.write(shareID)
            writer.write(descriptor)
        case .deposited(let token):
            writer.write(TypeCode.deposited.rawValue)
            writer.write(token)
        case .revoked(let shareID):
            writer.write(TypeCode.revoked.rawValue)
            writer.write(shareID)
        case .listing(let more, let shares):
            writer.write(TypeCode.listing.rawValue)
            writer.write(UInt8(more ? 1 : 0))
            writer.write(UInt16(shares.count))
            for share in shares { share.write(to: &writer) }
        case .metricsText(let text):
            writer.write(TypeCode.metricsText.rawValue)
            writer.write(Array(text.utf8).prefix(Self.maximumReplyLength - 2))
        case .takeoverListener(let count, let named):
            writer.write(TypeCode.takeoverListener.rawValue)
            writer.write(count)
            writer.write(named)
        case .depositNamed(let name, let policy, let ttl, let keep):
            writer.write(TypeCode.depositNamed.rawValue)
            writer.writeShortText(name)
            policy.write(to: &writer)
            writer.write(ttl)
            writer.write(UInt8(keep ? 1 : 0))
        case .claimNamed(let name, let wait, let from):
            writer.write(TypeCode.claimNamed.rawValue)
            writer.writeShortText(name)
            writer.write(wait)
            Self.write(from, to: &writer)
        case .revokeNamed(let name, let from):
            writer.write(TypeCode.revokeNamed.rawValue)
            writer.writeShortText(name)
            Self.write(from, to: &writer)
        case .listNamed(let after):
            writer.write(TypeCode.listNamed.rawValue)
            writer.write(after)
        case .depositedNamed(let shareID):
            writer.write(TypeCode.depositedNamed.rawValue)
            writer.write(shareID)
        case .namedListing(let more, let shares):
            writer.write(TypeCode.namedListing.rawValue)
            writer.write(UInt8(more ? 1 : 0))
            writer.write(UInt16(shares.count))
            for share in shares { share.write(to: &writer) }
        case .takeoverNamed(let shares):
            writer.write(TypeCode.takeoverNamed.rawValue)
            writer.write(UInt16(shares.count))
            for share in shares { share.write(to: &writer) }
        case .takeoverShares(let shares):
            writer.write(TypeCode.takeoverShares.rawValue)
            writer.write(UInt16(shares.count))
            for share in shares { share.write(to: &writer) }
        case .failure(let code, let text):
            writer.write(TypeCode.failure.rawValue)
            writer.write(code.rawValue)
            writer.write(Array(text.utf8).prefix(1024))
        }
        return writer.bytes
    }

    /// Decodes one packet.
    ///
    /// - Throws: ``SocketShareError``: code `malformed` naming the field at fault; code
    ///   `protocolViolation` with cause ``SocketShareError/Cause/unsupportedVersion`` when the version
    ///   is not ours, or ``SocketShareError/Cause/unknownMessageType`` when the type is unknown.
    package init(bytes: [UInt8]) throws(SocketShareError) {
        var reader = ByteReader(bytes, operation: "decode message")
        let version: UInt8 = try reader.read(field: "version")
        guard version == Self.version else {
            throw SocketShareError(
                .protocolViolation, operation: "decode message",
                detail: "protocol version \(version) is not supported (this side speaks version \(Self.version))",
                cause: .unsupportedVersion)
        }
        let code: UInt8 = try reader.read(field: "type")
        guard let type = TypeCode(rawValue: code) else {
            throw SocketShareError(
                .protocolViolation, operation: "decode message", detail: "field type: \(code) is not a message type",
                cause: .unknownMessageType)
        }
        switch type {
        case .claim:
            let shareID: UInt64 = try reader.read(field: "shareID")
            self = .claim(shareID: shareID, secret: ShareSecret(bytes: try reader.readBytes(ShareSecret.byteCount, field: "secret"))!)
        case .acknowledge:
            self = .acknowledge(shareID: try reader.read(field: "shareID"))
        case .deposit:
            self = .deposit(
                targetPID: try reader.read(field: "targetPid"), targetStartTime: try reader.read(field: "targetStartTime"),
                timeToLiveMilliseconds: try reader.read(field: "ttlMilliseconds"))
        case .revoke:
            self = .revoke(shareID: try reader.read(field: "shareID"))
        case .list:
            self = .list(after: try reader.read(field: "after"))
        case .metrics:
            self = .metrics
        case .takeover:
            self = .takeover
        case .takeoverDone:
            self = .takeoverDone
        case .claimed:
            self = .claimed(shareID: try reader.read(field: "shareID"))
        case .pull:
            let shareID: UInt64 = try reader.read(field: "shareID")
            self = .pull(shareID: shareID, secret: ShareSecret(bytes: try reader.readBytes(ShareSecret.byteCount, field: "secret"))!)
        case .pullable:
            let shareID: UInt64 = try reader.read(field: "shareID")
            let descriptor: UInt32 = try reader.read(field: "descriptor")
            guard descriptor <= UInt32(Int32.max) else { throw reader.invalid("descriptor", "\(descriptor) is out of range") }
            self = .pullable(shareID: shareID, descriptor: descriptor)
        case .deposited:
            self = .deposited(token: reader.readRest())
        case .revoked:
            self = .revoked(shareID: try reader.read(field: "shareID"))
        case .listing:
            let more: UInt8 = try reader.read(field: "more")
            let count = Int(try reader.read(UInt16.self, field: "count"))
            var shares: [HeldShare] = []
            for _ in 0..<count { shares.append(try HeldShare(from: &reader)) }
            self = .listing(more: more != 0, shares: shares)
        case .metricsText:
            self = .metricsText(String(decoding: reader.readRest(), as: UTF8.self))
        case .takeoverListener:
            self = .takeoverListener(shareCount: try reader.read(field: "shareCount"), namedCount: try reader.read(field: "namedCount"))
        case .depositNamed:
            let name = try Self.readName(&reader)
            let policy = try ClaimPolicy(from: &reader)
            let ttl: UInt32 = try reader.read(field: "ttlMilliseconds")
            let keep: UInt8 = try reader.read(field: "keep")
            guard keep <= 1 else { throw reader.invalid("keep", "\(keep) is not 0 or 1") }
            self = .depositNamed(name: name, policy: policy, timeToLiveMilliseconds: ttl, keep: keep == 1)
        case .claimNamed:
            let name = try Self.readName(&reader)
            let wait: UInt32 = try reader.read(field: "waitMilliseconds")
            self = .claimNamed(name: name, waitMilliseconds: wait, from: try Self.readDepositor(&reader))
        case .revokeNamed:
            let name = try Self.readName(&reader)
            self = .revokeNamed(name: name, from: try Self.readDepositor(&reader))
        case .listNamed:
            self = .listNamed(after: try reader.read(field: "after"))
        case .depositedNamed:
            self = .depositedNamed(shareID: try reader.read(field: "shareID"))
        case .namedListing:
            let more: UInt8 = try reader.read(field: "more")
            let count = Int(try reader.read(UInt16.self, field: "count"))
            var shares: [NamedShare] = []
            for _ in 0..<count { shares.append(try NamedShare(from: &reader)) }
            self = .namedListing(more: more != 0, shares: shares)
        case .takeoverNamed:
            let count = Int(try reader.read(UInt16.self, field: "count"))
            guard count <= DescriptorChannel.maximumDescriptorsPerMessage else {
                throw reader.invalid("count", "\(count) shares in one message; at most 252")
            }
            var shares: [NamedShareRecord] = []
            for _ in 0..<count { shares.append(try NamedShareRecord(from: &reader)) }
            self = .takeoverNamed(shares)
        case .takeoverShares:
            let count = Int(try reader.read(UInt16.self, field: "count"))
            guard count <= DescriptorChannel.maximumDescriptorsPerMessage else {
                throw reader.invalid("count", "\(count) shares in one message; at most 252")
            }
            var shares: [ShareRecord] = []
            for _ in 0..<count { shares.append(try ShareRecord(from: &reader)) }
            self = .takeoverShares(shares)
        case .failure:
            let raw: UInt16 = try reader.read(field: "code")
            self = .failure(EscrowFailure(rawValue: raw) ?? .internalError, String(decoding: reader.readRest(), as: UTF8.self))
        }
        try reader.expectEnd("the \(type) message")
    }

    /// An optional depositor uid: `u8 present (0 or 1) | u32 uid`.
    private static func write(_ depositor: uid_t?, to writer: inout ByteWriter) {
        writer.write(UInt8(depositor == nil ? 0 : 1))
        writer.write(depositor ?? 0)
    }

    private static func readDepositor(_ reader: inout ByteReader) throws(SocketShareError) -> uid_t? {
        let present: UInt8 = try reader.read(field: "hasFrom")
        let uid: uid_t = try reader.read(field: "fromUid")
        guard present <= 1 else { throw reader.invalid("hasFrom", "\(present) is not 0 or 1") }
        guard present == 1 else {
            guard uid == 0 else { throw reader.invalid("fromUid", "\(uid) without hasFrom") }
            return nil
        }
        return uid
    }

    /// A share name, checked against `ShareName`'s rules.
    private static func readName(_ reader: inout ByteReader) throws(SocketShareError) -> String {
        let name = try reader.readShortText(field: "name")
        if let problem = ShareName.problem(name) { throw reader.invalid("name", problem) }
        return name
    }
}

/// Why an escrow holder refused a request; sent as a `u16` in ``EscrowMessage/failure(_:_:)``.
package enum EscrowFailure: UInt16, Sendable, CaseIterable {
    case malformed = 1
    case unsupportedVersion = 2
    case unknownMessage = 3
    case notFound = 4
    case wrongProcess = 5
    case wrongStartTime = 6
    case wrongUser = 7
    case expired = 8
    case alreadyClaimed = 9
    case revoked = 10
    case limitReached = 11
    case internalError = 12
    case permissionDenied = 13
    case claimInProgress = 14
    case targetGone = 15
    case policyRefused = 16
    case nameTaken = 17

    /// The error code a client reports for this refusal.
    package var code: SocketShareError.Code {
        switch self {
        case .malformed, .unsupportedVersion, .unknownMessage: .protocolViolation
        case .notFound: .notFound
        case .wrongProcess, .wrongStartTime, .wrongUser, .claimInProgress, .policyRefused: .refused
        case .expired: .expired
        case .alreadyClaimed: .alreadyClaimed
        case .revoked: .revoked
        case .limitReached: .limitReached
        case .internalError: .system
        case .permissionDenied: .permissionDenied
        case .targetGone, .nameTaken: .invalidArgument
        }
    }

    /// The name used in logs and metrics (`wrongProcess`, …).
    package var name: String { "\(self)" }
}
