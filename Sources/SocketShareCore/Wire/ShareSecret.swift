/// The 128-bit random secret that lets the target claim an escrowed share.
///
/// Its description never shows the value; it is compared in constant time.
package struct ShareSecret: Hashable, Sendable, CustomStringConvertible {
    /// The secret's length in bytes.
    package static let byteCount = 16

    /// The secret's bytes.
    package let bytes: [UInt8]

    /// Wraps exactly ``byteCount`` bytes.
    package init?(bytes: [UInt8]) {
        guard bytes.count == Self.byteCount else { return nil }
        self.bytes = bytes
    }

    /// A new secret from the system's cryptographically secure generator (`getrandom(2)`).
    package static func random() -> ShareSecret {
        // One getrandom(2) per 8 bytes, rather than one per byte.
        var generator = SystemRandomNumberGenerator()
        var bytes = [UInt8](repeating: 0, count: byteCount)
        for offset in stride(from: 0, to: byteCount, by: 8) {
            withUnsafeBytes(of: generator.next() as UInt64) { word in
                for index in 0..<min(8, byteCount - offset) { bytes[offset + index] = word[index] }
            }
        }
        return ShareSecret(bytes: bytes)!
    }

    /// Constant-time equality, so response timing does not reveal how much of a guess was right.
    package static func == (lhs: ShareSecret, rhs: ShareSecret) -> Bool {
        guard lhs.bytes.count == rhs.bytes.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.bytes.indices { difference |= lhs.bytes[index] ^ rhs.bytes[index] }
        return difference == 0
    }

    package func hash(into hasher: inout Hasher) { hasher.combine(bytes) }

    /// Always `<secret>`.
    package var description: String { "<secret>" }
}
