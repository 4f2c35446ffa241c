extension ShareToken {
    // Binary form, version 1 (big-endian):
    //   u8 version | u8 mechanism | u8 family | u8 type | u32 protocol | u8 flags | u64 inode
    //   | u32 source pid | u64 source start | u32 target pid | u64 target start
    //   | u64 created ms | u64 expires ms | u64 share id | u8 endpoint length | endpoint path
    //   | 16 bytes secret | u32 CRC-32 of all preceding bytes
    // docs/TOKEN.md describes the same layout for other languages.

    private static let listeningFlag: UInt8 = 1
    private static let connectedFlag: UInt8 = 2
    private static let nonBlockingFlag: UInt8 = 4
    /// The longest escrow endpoint path (`sun_path` holds 108 bytes with the NUL).
    package static let maximumEndpointLength = 107

    /// The compact binary form.
    public var bytes: [UInt8] {
        var writer = ByteWriter(capacity: 128)
        writer.write(version)
        writer.write(mechanism.rawValue)
        writer.write(family.rawValue)
        writer.write(kind.rawValue)
        writer.write(UInt32(bitPattern: protocolNumber))
        var flags: UInt8 = 0
        if isListening { flags |= Self.listeningFlag }
        if isConnected { flags |= Self.connectedFlag }
        if isNonBlocking { flags |= Self.nonBlockingFlag }
        writer.write(flags)
        writer.write(socketInode)
        writer.write(UInt32(bitPattern: source.pid))
        writer.write(source.startTime)
        writer.write(UInt32(bitPattern: target.pid))
        writer.write(target.startTime)
        writer.write(createdAtMilliseconds)
        writer.write(expiresAtMilliseconds)
        writer.write(shareID)
        let path = Array(endpoint.utf8)
        writer.write(UInt8(clamping: path.count))
        writer.write(path)
        writer.write(secret.bytes)
        writer.write(CRC32.checksum(writer.bytes))
        return writer.bytes
    }

    /// The one-line text form: `sks1.` followed by the binary form in unpadded base64url.
    public var text: String { Self.textPrefix + Base64URL.encode(bytes) }

    /// Decodes the binary form.
    ///
    /// - Throws: `SocketShareError` with code `malformed` naming the field at fault, for any input
    ///   that is not a well-formed token of a version this build reads.
    public init(bytes: [UInt8]) throws(SocketShareError) {
        var reader = ByteReader(bytes, operation: "decode token")
        guard !bytes.isEmpty else { throw SocketShareError(.malformed, operation: "decode token", detail: "empty input") }
        version = try reader.read(field: "version")
        guard version == Self.currentVersion else {
            throw reader.invalid("version", "\(version) is not supported (this build reads version \(Self.currentVersion))")
        }
        let mechanismCode: UInt8 = try reader.read(field: "mechanism")
        guard let mechanism = ShareMechanism(rawValue: mechanismCode) else {
            throw reader.invalid("mechanism", "\(mechanismCode) is not a mechanism (1 sharer, 2 pidfd, 3 broker)")
        }
        self.mechanism = mechanism
        let familyCode: UInt8 = try reader.read(field: "family")
        guard let family = SocketFamily(rawValue: familyCode) else {
            throw reader.invalid("family", "\(familyCode) is not a socket family (1 inet, 2 inet6, 3 unix)")
        }
        self.family = family
        let typeCode: UInt8 = try reader.read(field: "type")
        guard let kind = SocketKind(rawValue: typeCode) else {
            throw reader.invalid("type", "\(typeCode) is not a socket type (1 stream, 2 dgram, 3 seqpacket)")
        }
        self.kind = kind
        let protocolValue: UInt32 = try reader.read(field: "protocol")
        guard protocolValue <= UInt32(Int32.max) else { throw reader.invalid("protocol", "\(protocolValue) is out of range") }
        protocolNumber = CInt(protocolValue)
        let flags: UInt8 = try reader.read(field: "flags")
        guard flags & ~(Self.listeningFlag | Self.connectedFlag | Self.nonBlockingFlag) == 0 else {
            throw reader.invalid("flags", "unknown bits set in \(flags)")
        }
        isListening = flags & Self.listeningFlag != 0
        isConnected = flags & Self.connectedFlag != 0
        isNonBlocking = flags & Self.nonBlockingFlag != 0
        guard !(isListening && isConnected) else { throw reader.invalid("flags", "listening and connected at once") }
        socketInode = try reader.read(field: "inode")
        guard socketInode != 0 else { throw reader.invalid("inode", "0 is not a socket inode") }
        source = try Self.readProcess(&reader, "source")
        target = try Self.readProcess(&reader, "target")
        createdAtMilliseconds = try reader.read(field: "createdAt")
        expiresAtMilliseconds = try reader.read(field: "expiresAt")
        guard expiresAtMilliseconds >= createdAtMilliseconds else {
            throw reader.invalid("expiresAt", "before createdAt")
        }
        shareID = try reader.read(field: "shareID")
        let length = Int(try reader.read(UInt8.self, field: "endpointLength"))
        guard (1...Self.maximumEndpointLength).contains(length) else {
            throw reader.invalid("endpointLength", "\(length) is not in 1...\(Self.maximumEndpointLength)")
        }
        let path = try reader.readBytes(length, field: "endpoint")
        guard path.first == UInt8(ascii: "/"), !path.contains(0), let endpoint = String(validating: path, as: UTF8.self) else {
            throw reader.invalid("endpoint", "not an absolute UTF-8 path without NUL bytes")
        }
        self.endpoint = endpoint
        secret = ShareSecret(bytes: try reader.readBytes(ShareSecret.byteCount, field: "secret"))!
        let checked = reader.offset
        let checksum: UInt32 = try reader.read(field: "checksum")
        try reader.expectEnd("the checksum")
        guard checksum == CRC32.checksum(bytes[0..<checked]) else {
            throw reader.invalid("checksum", "does not match the contents (the token was altered or damaged)")
        }
    }

    /// Decodes the text form. Leading and trailing white space (a line's newline) is ignored.
    ///
    /// - Throws: `SocketShareError` with code `malformed` naming what is wrong.
    public init(text: String) throws(SocketShareError) {
        let trimmed = Array(text.trimmingSpaces.utf8)
        let prefix = Array(Self.textPrefix.utf8)
        guard trimmed.starts(with: prefix) else {
            if trimmed.starts(with: Array("sks".utf8)), let dot = trimmed.firstIndex(of: UInt8(ascii: ".")) {
                let named = String(decoding: trimmed[0..<dot], as: UTF8.self)
                throw SocketShareError(
                    .malformed, operation: "decode token",
                    detail: "prefix \(named). names a format this build does not read (it reads \(Self.textPrefix))")
            }
            throw SocketShareError(
                .malformed, operation: "decode token", detail: "prefix: a token starts with \(Self.textPrefix)")
        }
        switch Base64URL.decode(trimmed[prefix.count...]) {
        case .success(let bytes): try self.init(bytes: bytes)
        case .failure(let failure):
            throw SocketShareError(.malformed, operation: "decode token", detail: "encoding: \(failure.reason)")
        }
    }

    private static func readProcess(_ reader: inout ByteReader, _ role: String) throws(SocketShareError) -> ProcessIdentity {
        // Field names are built only for an error: decoding runs on every claim.
        let pid: UInt32 = try reader.read(field: role == "source" ? "sourcePid" : "targetPid")
        guard pid > 0, pid <= UInt32(Int32.max) else { throw reader.invalid("\(role)Pid", "\(pid) is not a process id") }
        let start: UInt64 = try reader.read(field: role == "source" ? "sourceStartTime" : "targetStartTime")
        return ProcessIdentity(pid: pid_t(pid), startTime: start)
    }
}

import Glibc
import SocketShareCore
