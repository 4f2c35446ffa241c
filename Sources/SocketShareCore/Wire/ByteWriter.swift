/// Builds big-endian (network order) binary messages and tokens.
package struct ByteWriter {
    /// The bytes written so far.
    @usableFromInline package internal(set) var bytes: [UInt8] = []

    package init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    @inlinable package mutating func write(_ value: UInt8) { bytes.append(value) }

    // Inlinable, so that callers in other modules get it specialized: a generic call across
    // modules costs a metadata lookup per field, and tokens are encoded on every share.
    @inlinable package mutating func write<T: FixedWidthInteger & UnsignedInteger>(_ value: T) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    package mutating func write(_ raw: some Sequence<UInt8>) { bytes.append(contentsOf: raw) }

    /// Text as a `u8` length and at most 255 bytes of UTF-8, cut where a character starts so that
    /// the reader gets valid UTF-8 (``ByteReader/readShortText(field:)``).
    package mutating func writeShortText(_ text: String) {
        var utf8 = Array(text.utf8.prefix(256))
        if utf8.count > 255 {
            var end = 255
            while end > 0, utf8[end] & 0xC0 == 0x80 { end -= 1 }
            utf8.removeSubrange(end...)
        }
        write(UInt8(utf8.count))
        write(utf8)
    }
}

/// Reads big-endian binary input strictly: every read names its field, and a short input is an error
/// naming the field it cut off, never a crash.
package struct ByteReader {
    @usableFromInline let bytes: [UInt8]
    /// The offset of the next byte to read.
    @usableFromInline package internal(set) var offset: Int = 0
    /// What is being decoded, for error messages: `"decode token"`, `"decode message"`.
    package let operation: String

    package init(_ bytes: [UInt8], operation: String) {
        self.bytes = bytes
        self.operation = operation
    }

    /// Bytes not read yet.
    @inlinable package var remaining: Int { bytes.count - offset }

    // Inlinable for the same reason as ``ByteWriter/write(_:)-(T)``: decoding runs on every claim.
    @inlinable package mutating func read<T: FixedWidthInteger & UnsignedInteger>(_ type: T.Type = T.self, field: String) throws(SocketShareError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw truncated(field, needing: size) }
        var value: T = 0
        for index in offset..<(offset + size) { value = value << 8 | T(bytes[index]) }
        offset += size
        return value
    }

    package mutating func readBytes(_ count: Int, field: String) throws(SocketShareError) -> [UInt8] {
        guard count >= 0, remaining >= count else { throw truncated(field, needing: count) }
        defer { offset += count }
        return Array(bytes[offset..<(offset + count)])
    }

    /// Text written by ``ByteWriter/writeShortText(_:)``; text that is not UTF-8 is refused.
    package mutating func readShortText(field: String) throws(SocketShareError) -> String {
        let length = Int(try read(UInt8.self, field: field + "Length"))
        guard let text = String(validating: try readBytes(length, field: field), as: UTF8.self) else {
            throw invalid(field, "not UTF-8")
        }
        return text
    }

    /// All bytes not read yet.
    package mutating func readRest() -> [UInt8] {
        defer { offset = bytes.count }
        return Array(bytes[offset...])
    }

    /// Throws unless every byte has been read. `what` is built only when that fails: these
    /// decoders run on every message, and describing a value is costly.
    package func expectEnd(_ what: @autoclosure () -> String) throws(SocketShareError) {
        guard remaining == 0 else {
            throw SocketShareError(
                .malformed, operation: operation, detail: "\(remaining) unexpected bytes after \(what())")
        }
    }

    /// An error naming `field` and what is wrong with its value.
    package func invalid(_ field: String, _ why: String) -> SocketShareError {
        SocketShareError(.malformed, operation: operation, detail: "field \(field): \(why)")
    }

    @usableFromInline func truncated(_ field: String, needing count: Int) -> SocketShareError {
        SocketShareError(
            .malformed, operation: operation,
            detail: "field \(field): input ends at byte \(bytes.count), \(count) more bytes needed (truncated?)")
    }
}
