import Glibc
import SocketShareCore

/// The network events of Winsock's `WSAEventSelect`, with the same bit values as its `FD_*` flags.
public struct NetworkEvents: OptionSet, Sendable, Hashable, CustomStringConvertible {
    /// The raw bits (`FD_READ` = 1 … `FD_CLOSE` = 32).
    public let rawValue: Int

    /// Creates a set from its bits.
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// `FD_READ`: data arrived. Re-enabled by a receive.
    public static let read = NetworkEvents(rawValue: 1)
    /// `FD_WRITE`: sending is possible. Reported when selected if it already is; re-enabled by a send
    /// that would have blocked.
    public static let write = NetworkEvents(rawValue: 2)
    /// `FD_OOB`: urgent (out-of-band) data arrived. Re-enabled by a receive of it.
    public static let outOfBand = NetworkEvents(rawValue: 4)
    /// `FD_ACCEPT`: a connection waits on a listening socket. Re-enabled by an accept.
    public static let accept = NetworkEvents(rawValue: 8)
    /// `FD_CONNECT`: a non-blocking connect completed, successfully or not (see the record's error).
    /// Reported once.
    public static let connect = NetworkEvents(rawValue: 16)
    /// `FD_CLOSE`: the peer closed the connection, or it was reset (see the record's error).
    /// Reported once.
    public static let close = NetworkEvents(rawValue: 32)

    /// Every event.
    public static let all: NetworkEvents = [.read, .write, .outOfBand, .accept, .connect, .close]

    /// The names: `read`, `write`, `oob`, `accept`, `connect`, `close`.
    package static let names: [(NetworkEvents, String)] = [
        (.read, "read"), (.write, "write"), (.outOfBand, "oob"), (.accept, "accept"), (.connect, "connect"), (.close, "close"),
    ]

    /// `read|write`, or `none`.
    public var description: String {
        let parts = Self.names.filter { contains($0.0) }.map(\.1)
        return parts.isEmpty ? "none" : parts.joined(separator: "|")
    }

    /// Parses `read|write` (also `,`-separated), `none`, or `all`.
    public init?(names text: String) {
        self = []
        for name in text.split(whereSeparator: { $0 == "|" || $0 == "," }) {
            if name == "none" { continue }
            if name == "all" { formUnion(.all); continue }
            guard let event = Self.names.first(where: { $0.1 == name })?.0 else { return nil }
            formUnion(event)
        }
    }
}

/// What an event selection delivers: an event, or the news that another registration took over.
public enum EventRecord: Sendable, Hashable, CustomStringConvertible {
    /// One network event, and the error that came with it (Winsock's `iErrorCode`): for `connect`
    /// the connect's outcome, for `close` a reset; nil otherwise.
    case event(NetworkEvents, error: Int32?)
    /// A registration through another descriptor of this socket, in this process or another,
    /// replaced this one (Winsock would say nothing). The selection ends after this record.
    case displaced(by: pid_t)

    /// `read`, `close (error 104)`, `displaced by pid 4120`.
    public var description: String {
        switch self {
        case .event(let event, let error): error.map { "\(event) (error \($0))" } ?? "\(event)"
        case .displaced(let pid): "displaced by pid \(pid)"
        }
    }
}
