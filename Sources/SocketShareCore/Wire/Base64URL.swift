/// Base64 with the URL- and file-safe alphabet (`-` and `_`), without padding (RFC 4648 §5).
///
/// Decoding is strict: any character outside the alphabet, a length that cannot be a whole encoding,
/// or unused low bits that are not zero is an error, so every byte string has exactly one text form.
package enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    private static let values: [Int8] = {
        var table = [Int8](repeating: -1, count: 256)
        for (index, character) in alphabet.enumerated() { table[Int(character)] = Int8(index) }
        return table
    }()

    package static func encode(_ bytes: [UInt8]) -> String {
        let alphabet = Self.alphabet
        var output: [UInt8] = []
        output.reserveCapacity((bytes.count * 4 + 2) / 3)
        var index = 0
        while index + 3 <= bytes.count {
            let chunk = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            for shift in stride(from: 18, through: 0, by: -6) { output.append(alphabet[Int((chunk >> UInt32(shift)) & 63)]) }
            index += 3
        }
        let left = bytes.count - index
        if left == 1 {
            let chunk = UInt32(bytes[index]) << 16
            output.append(alphabet[Int((chunk >> 18) & 63)])
            output.append(alphabet[Int((chunk >> 12) & 63)])
        } else if left == 2 {
            let chunk = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8
            output.append(alphabet[Int((chunk >> 18) & 63)])
            output.append(alphabet[Int((chunk >> 12) & 63)])
            output.append(alphabet[Int((chunk >> 6) & 63)])
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// Decodes `text`, or returns a reason it is not canonical unpadded base64url.
    package static func decode(_ text: [UInt8]) -> Result<[UInt8], Failure> {
        text.withUnsafeBufferPointer { decode($0) }
    }

    /// Decodes `text`, or returns a reason it is not canonical unpadded base64url.
    package static func decode(_ text: ArraySlice<UInt8>) -> Result<[UInt8], Failure> {
        text.withUnsafeBufferPointer { decode($0) }
    }

    /// Decodes `text`; a concrete loop (a generic one across modules costs a metadata lookup a byte).
    package static func decode(_ text: UnsafeBufferPointer<UInt8>) -> Result<[UInt8], Failure> {
        if text.count % 4 == 1 { return .failure(.badLength(text.count)) }
        var output: [UInt8] = []
        output.reserveCapacity(text.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        let values = Self.values
        for position in 0..<text.count {
            let character = text[position]
            let value = values[Int(character)]
            if value < 0 { return .failure(.badCharacter(position: position, character)) }
            accumulator = accumulator << 6 | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                output.append(UInt8((accumulator >> UInt32(bits)) & 0xFF))
                accumulator &= (1 << UInt32(bits)) - 1
            }
        }
        if accumulator != 0 { return .failure(.nonZeroPadding) }
        return .success(output)
    }

    package enum Failure: Error, Equatable {
        case badLength(Int)
        case badCharacter(position: Int, UInt8)
        case nonZeroPadding

        package var reason: String {
            switch self {
            case .badLength(let count): "\(count) characters cannot be base64url"
            case .badCharacter(let position, let character):
                "character \(position + 1) (\(character >= 0x20 && character < 0x7F ? "'\(Character(Unicode.Scalar(character)))'" : "byte \(character)")) is not base64url"
            case .nonZeroPadding: "the last character has stray low bits (not a canonical encoding)"
            }
        }
    }
}
