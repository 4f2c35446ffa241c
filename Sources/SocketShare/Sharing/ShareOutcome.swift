import SocketShareCore
/// How a share ended.
public enum ShareOutcome: Sendable, Hashable, CustomStringConvertible {
    /// The target adopted the socket.
    case claimed(by: ProcessIdentity)
    /// Nobody claimed it before it expired; the holder closed its duplicate.
    case expired
    /// The source revoked it.
    case revoked
    /// The target process exited without claiming it.
    case targetExited
    /// The holder stopped (the process is stopping sharing, or the broker shut down).
    case holderStopped

    /// `claimed by pid 4120 (started at tick 99231)`, `expired`, …
    public var description: String {
        switch self {
        case .claimed(let by): "claimed by \(by)"
        case .expired: "expired"
        case .revoked: "revoked"
        case .targetExited: "target exited before claiming"
        case .holderStopped: "holder stopped"
        }
    }
}
