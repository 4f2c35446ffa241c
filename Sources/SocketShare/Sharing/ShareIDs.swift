/// Where a holder's share ids come from: unguessable by default, so that an id seen in one's own
/// listing says nothing of the shares of others (whether one exists, how many were made since).
///
/// A pure value like the tables that use it: tests use ``sequential(from:)`` to know the ids ahead.
package struct ShareIDs: Sendable {
    private var next: UInt64?

    /// Random non-zero 63-bit ids from the system's generator (`getrandom(2)`); a table that
    /// already holds or remembers one draws again.
    package static var random: ShareIDs { ShareIDs(next: nil) }

    /// `first`, `first + 1`, … (for tests).
    package static func sequential(from first: UInt64) -> ShareIDs { ShareIDs(next: first) }

    /// The next candidate id; the table checks that it is unused.
    package mutating func draw() -> UInt64 {
        guard let current = next else {
            var generator = SystemRandomNumberGenerator()
            return generator.next() >> 1 | 1
        }
        next = current &+ 1
        return current
    }

    /// After installing a predecessor's share `id`: a sequential source continues above it.
    package mutating func skip(past id: UInt64) {
        if let current = next, id >= current { next = id &+ 1 }
    }
}
