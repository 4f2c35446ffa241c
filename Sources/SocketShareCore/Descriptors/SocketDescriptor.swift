import Glibc
import Synchronization

/// An owning descriptor of a socket: it closes the descriptor exactly once.
///
/// `SocketDescriptor` is a `Sendable` class so that threads share it as is, as the seed says of
/// Winsock descriptors: "a socket descriptor is valid in all threads of a process". Closing it
/// closes this process's descriptor only; the underlying socket lives until every descriptor of it,
/// in every process, is closed.
///
/// The descriptor is closed by ``close()`` or, failing that, when the last reference goes away.
/// ``release()`` hands ownership of the raw number to the caller instead (for `exec`, or for a
/// library such as SwiftNIO that takes ownership).
///
/// ```swift
/// let listener = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
/// let token = try SocketShare.duplicate(listener, for: workerPID)
/// try listener.close()   // the worker's descriptor keeps the socket alive once it adopts
/// ```
public final class SocketDescriptor: Sendable, CustomStringConvertible {
    /// The descriptor number; stays readable after close for logging, but must not be used then.
    public let rawValue: CInt
    private let open: Atomic<Bool>

    /// Takes ownership of `rawValue`, which must be an open descriptor no one else will close.
    public init(taking rawValue: CInt) {
        precondition(rawValue >= 0, "SocketDescriptor(taking: \(rawValue)): not a descriptor")
        self.rawValue = rawValue
        self.open = Atomic(true)
    }

    deinit {
        if open.exchange(false, ordering: .acquiringAndReleasing) { try? Kernel.close(rawValue) }
    }

    /// Whether this object still owns an open descriptor.
    public var isOpen: Bool { open.load(ordering: .acquiring) }

    /// Closes the descriptor. Calling it again does nothing: the descriptor is closed exactly once.
    ///
    /// The corresponding C function is `close(2)`.
    public func close() throws(SocketShareError) {
        if open.exchange(false, ordering: .acquiringAndReleasing) { try Kernel.close(rawValue) }
    }

    /// Gives up ownership and returns the raw descriptor, which the caller must close.
    ///
    /// - Precondition: the descriptor is still owned (not closed or released before).
    public func release() -> CInt {
        precondition(open.exchange(false, ordering: .acquiringAndReleasing), "release() of a closed descriptor")
        return rawValue
    }

    /// A new close-on-exec descriptor of the same socket (`fcntl(F_DUPFD_CLOEXEC)`).
    public func duplicate() throws(SocketShareError) -> SocketDescriptor {
        SocketDescriptor(taking: try Kernel.duplicate(rawValue))
    }

    /// Family, type, addresses, state and identity of the socket behind this descriptor.
    public func socketDescription() throws(SocketShareError) -> SocketDescription {
        try SocketDescription(of: rawValue)
    }

    /// Whether `other` refers to the same underlying socket (same socket-file-system inode).
    public func isSameSocket(as other: SocketDescriptor) throws(SocketShareError) -> Bool {
        try SocketIdentity(of: rawValue) == SocketIdentity(of: other.rawValue)
    }

    /// Whether the descriptor is close-on-exec (`FD_CLOEXEC`).
    public var isCloseOnExec: Bool {
        guard let flags = Kernel.descriptorFlags(rawValue) else { return false }
        return flags & FD_CLOEXEC != 0
    }

    /// `fd 7`, or `fd 7 (closed)`.
    public var description: String { isOpen ? "fd \(rawValue)" : "fd \(rawValue) (closed)" }
}
