import SystemPackage

/// The one error type of SocketShare: what failed, why, and the kernel's errno when the kernel said no.
///
/// Its description is one line meant for people: `claim failed: this share is for pid 4120, not pid 4188`.
/// Code that reacts to errors matches on ``code``.
public struct SocketShareError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A category of failure that callers can match on.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code's stable name, as used in logs and JSON output.
        public let rawValue: String

        package init(_ rawValue: String) { self.rawValue = rawValue }

        /// The code's name.
        public var description: String { rawValue }

        /// A system call failed; ``SocketShareError/errno`` says how.
        public static let system = Code("system")
        /// An argument was out of range or the wrong kind of thing (not a socket, no such process…).
        public static let invalidArgument = Code("invalidArgument")
        /// A token or wire message could not be decoded; the detail names the field.
        public static let malformed = Code("malformed")
        /// The holder refused the claim: wrong process, wrong start time, wrong user.
        public static let refused = Code("refused")
        /// The share expired before it was claimed.
        public static let expired = Code("expired")
        /// The share was already claimed (shares are single use).
        public static let alreadyClaimed = Code("alreadyClaimed")
        /// The share was revoked, or its target exited, before it was claimed.
        public static let revoked = Code("revoked")
        /// The holder does not know this share.
        public static let notFound = Code("notFound")
        /// The process holding the share (sharer, broker or pidfd source) is gone.
        public static let holderGone = Code("holderGone")
        /// The peer broke the protocol, or speaks a version we do not.
        public static let protocolViolation = Code("protocolViolation")
        /// A deadline passed.
        public static let timedOut = Code("timedOut")
        /// A received descriptor is not the socket its metadata describes.
        public static let verificationFailed = Code("verificationFailed")
        /// The kernel refused for lack of rights (ptrace access, file modes).
        public static let permissionDenied = Code("permissionDenied")
        /// A limit was reached (quota, global cap, descriptor limit).
        public static let limitReached = Code("limitReached")
    }

    /// What exactly went wrong, where a caller may react to more than the ``Code``: the condition
    /// is named here once, never by matching the detail text.
    public struct Cause: Hashable, Sendable, CustomStringConvertible {
        /// The cause's stable name.
        public let rawValue: String

        package init(_ rawValue: String) { self.rawValue = rawValue }

        /// The cause's name.
        public var description: String { rawValue }

        /// The kernel cut descriptors off a received message (`MSG_CTRUNC`): the receiver has no
        /// descriptor to spare, or its buffer was too small. Whatever arrived was closed.
        public static let descriptorsTruncated = Cause("descriptorsTruncated")
        /// A message was longer than the receiver accepts (`MSG_TRUNC`).
        public static let messageTooLong = Cause("messageTooLong")
        /// A wire message's type byte names no message of the protocol.
        public static let unknownMessageType = Cause("unknownMessageType")
        /// A wire message or token is of a version this side does not speak.
        public static let unsupportedVersion = Cause("unsupportedVersion")
        /// A single-use share was handed to another claimant, who has not acknowledged it yet: if
        /// that claimant leaves without it, it is claimable again.
        public static let claimInProgress = Cause("claimInProgress")
        /// A named share's policy does not admit the claimant (code `refused`).
        public static let policyRefused = Cause("policyRefused")
        /// A rendezvous socket, or its directory, failed a client's check: the directory is a link,
        /// writable by others, or (for a path the client derived itself) not owned by its user or
        /// root; or the socket is served by someone other than the directory's owner or root
        /// (code `permissionDenied`). Someone may be impersonating the broker or supervisor.
        public static let untrustedRendezvous = Cause("untrustedRendezvous")
    }

    /// The category of the failure.
    public var code: Code
    /// The exact condition, when one is named (``Cause``); kept by ``within(_:code:context:)``.
    public var cause: Cause?
    /// What was being done, in a word or two: `"claim"`, `"sendmsg"`, `"decode token"`.
    public var operation: String
    /// The kernel's error number, when a system call failed.
    public var errno: Errno?
    /// Why, naming the argument or field and its value: `"field family: 99 is not a socket family"`.
    public var detail: String

    /// Creates an error.
    public init(_ code: Code, operation: String, errno: Errno? = nil, detail: String, cause: Cause? = nil) {
        self.code = code
        self.operation = operation
        self.errno = errno
        self.detail = detail
        self.cause = cause
    }

    /// `"<operation> failed: <detail>"`, with the kernel's explanation when there is an errno.
    public var description: String {
        var text = "\(operation) failed"
        if !detail.isEmpty { text += ": \(detail)" }
        if let errno, !detail.contains(errno.description) { text += ": \(errno.description) (errno \(errno.rawValue))" }
        return text
    }

    /// Returns this error as the cause of a higher-level `operation`, keeping code and errno.
    ///
    /// `connect failed: No such file or directory` becomes
    /// `claim failed: connect to /run/sockshare/x.sock: No such file or directory (errno 2)`.
    public func within(_ operation: String, code: Code? = nil, context: String? = nil) -> SocketShareError {
        var inner = self.operation
        if let context { inner += " \(context)" }
        var text = inner
        if !detail.isEmpty { text += ": \(detail)" }
        if let errno, !detail.contains(errno.description) { text += ": \(errno.description) (errno \(errno.rawValue))" }
        return SocketShareError(code ?? self.code, operation: operation, errno: errno, detail: text, cause: cause)
    }

    /// An error for a failed system call, from the current `errno`.
    package static func system(_ operation: String, errno value: CInt, detail: String = "") -> SocketShareError {
        let errno = Errno(rawValue: value)
        let code: Code = (value == EPERM || value == EACCES) ? .permissionDenied : (value == EMFILE || value == ENFILE ? .limitReached : .system)
        return SocketShareError(code, operation: operation, errno: errno, detail: detail)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
