/// The rules for a named share's name.
package enum ShareName {
    /// The longest name, in bytes.
    package static let maximumLength = 128

    /// Why `name` is not a valid share name, or nil when it is: 1 to 128 characters of
    /// `A-Z a-z 0-9 . _ - : @`, so that it is safe in logs, paths and shell words.
    package static func problem(_ name: String) -> String? {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty else { return "a name is 1 to \(maximumLength) characters; this one is empty" }
        guard bytes.count <= maximumLength else { return "a name is at most \(maximumLength) characters; this one has \(bytes.count)" }
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"),
                UInt8(ascii: ":"), UInt8(ascii: "@"):
                continue
            default:
                return "a name is made of letters, digits and . _ - : @ only"
            }
        }
        return nil
    }
}
