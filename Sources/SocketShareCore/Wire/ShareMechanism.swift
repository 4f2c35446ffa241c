/// How a share is redeemed.
public enum ShareMechanism: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// The source process holds a duplicate in escrow and serves the claim itself.
    case sharer = 1
    /// The target pulls the descriptor from the source with `pidfd_getfd(2)`; the source must stay alive.
    case pidfd = 2
    /// The broker daemon holds the duplicate in escrow; the source may exit at once.
    case broker = 3

    /// `sharer`, `pidfd` or `broker`.
    public var description: String {
        switch self {
        case .sharer: "sharer"
        case .pidfd: "pidfd"
        case .broker: "broker"
        }
    }

    /// Parses `sharer`, `pidfd` or `broker`.
    public init?(name: String) {
        guard let mechanism = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = mechanism
    }
}
