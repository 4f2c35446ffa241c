extension Array where Element == UInt8 {
    /// `withUnsafeBytes` that keeps the typed error (the standard library's is `rethrows`).
    package func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws(SocketShareError) -> R) throws(SocketShareError) -> R {
        try withUnsafeBytes { buffer in Result { () throws(SocketShareError) in try body(buffer) } }.get()
    }

    /// `withUnsafeMutableBytes` that keeps the typed error.
    package mutating func withMutableBytes<R>(
        _ body: (UnsafeMutableRawBufferPointer) throws(SocketShareError) -> R
    ) throws(SocketShareError) -> R {
        try withUnsafeMutableBytes { buffer in Result { () throws(SocketShareError) in try body(buffer) } }.get()
    }
}
