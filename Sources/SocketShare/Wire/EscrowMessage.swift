/// The messages of the escrow protocol, spoken between a claimant and an escrow holder (the
/// in-process sharer or the broker daemon) over a `SOCK_SEQPACKET` Unix socket.
///
/// Every message is one packet: `u8 version | u8 type | body`, big-endian. A holder answers a
/// message of a version it does not speak with an ``EscrowFailure/unsupportedVersion`` error
/// naming the versions it does speak, never with silence. `docs/PROTOCOL.md` is the reference for
/// other languages.
enum EscrowMessage: Equatable, Sendable {
    /// Client → holder: claim share `shareID`, proving the secret. The holder answers ``claimed`` with
    /// the descriptor attached, or ``failure``.
    case claim(shareID: UInt64, secret: ShareSecret)
    /// Holder → client: here is the socket (one `SCM_RIGHTS` descriptor).
    case claimed(shareID: UInt64)
    /// Client → holder: the descriptor arrived; the holder may close its copy. Without it the holder
    /// keeps the share and offers it again if the claimant goes away.
    case acknowledge(shareID: UInt64)
    /// Holder → client: the request failed.
    case failure(EscrowFailure, String)

    /// The protocol version this build speaks.
    static let version: UInt8 = 1
    /// The longest message either side sends; longer ones are refused.
    static let maximumLength = 4096

    enum TypeCode: UInt8 {
        case claim = 0x01
        case acknowledge = 0x02
        case claimed = 0x81
        case failure = 0xFF
    }

    /// The message's wire form.
    var bytes: [UInt8] {
        var writer = ByteWriter()
        writer.write(Self.version)
        switch self {
        case .claim(let shareID, let secret):
            writer.write(TypeCode.claim.rawValue)
            writer.write(shareID)
            writer.write(secret.bytes)
        case .claimed(let shareID):
            writer.write(TypeCode.claimed.rawValue)
            writer.write(shareID)
        case .acknowledge(let shareID):
            writer.write(TypeCode.acknowledge.rawValue)
            writer.write(shareID)
        case .failure(let code, let text):
            writer.write(TypeCode.failure.rawValue)
            writer.write(code.rawValue)
            writer.write(Array(text.utf8).prefix(1024))
        }
        return writer.bytes
    }

    /// Decodes one packet.
    ///
    /// - Throws: ``SocketShareError`` with code `protocolViolation` naming the field, or with
    ///   ``EscrowFailure/unsupportedVersion`` in its detail when the version is not ours.
    init(bytes: [UInt8]) throws(SocketShareError) {
        var reader = ByteReader(bytes, operation: "decode message")
        let version: UInt8 = try reader.read(field: "version")
        guard version == Self.version else {
            throw SocketShareError(
                .protocolViolation, operation: "decode message",
                detail: "protocol version \(version) is not supported (this side speaks version \(Self.version))")
        }
        let code: UInt8 = try reader.read(field: "type")
        switch TypeCode(rawValue: code) {
        case .claim:
            let shareID: UInt64 = try reader.read(field: "shareID")
            let secret = ShareSecret(bytes: try reader.readBytes(ShareSecret.byteCount, field: "secret"))!
            try reader.expectEnd("a claim")
            self = .claim(shareID: shareID, secret: secret)
        case .acknowledge:
            let shareID: UInt64 = try reader.read(field: "shareID")
            try reader.expectEnd("an acknowledge")
            self = .acknowledge(shareID: shareID)
        case .claimed:
            let shareID: UInt64 = try reader.read(field: "shareID")
            try reader.expectEnd("a claimed reply")
            self = .claimed(shareID: shareID)
        case .failure:
            let raw: UInt16 = try reader.read(field: "code")
            let text = String(decoding: reader.readRest(), as: UTF8.self)
            self = .failure(EscrowFailure(rawValue: raw) ?? .internalError, text)
        case nil:
            throw SocketShareError(.protocolViolation, operation: "decode message", detail: "field type: \(code) is not a message type")
        }
    }
}

/// Why an escrow holder refused a request; sent as a `u16` in ``EscrowMessage/failure(_:_:)``.
enum EscrowFailure: UInt16, Sendable {
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

    /// The error code a claimant reports for this refusal.
    var code: SocketShareError.Code {
        switch self {
        case .malformed, .unsupportedVersion, .unknownMessage: .protocolViolation
        case .notFound: .notFound
        case .wrongProcess, .wrongStartTime, .wrongUser, .claimInProgress: .refused
        case .expired: .expired
        case .alreadyClaimed: .alreadyClaimed
        case .revoked: .revoked
        case .limitReached: .limitReached
        case .internalError: .system
        case .permissionDenied: .permissionDenied
        }
    }
}
