import Glibc
import SocketShareCore

/// Adopts a share: returns this process's own descriptor of the shared socket (close-on-exec);
/// Winsock's `WSASocket(FROM_PROTOCOL_INFO)`.
///
/// The descriptor is checked before it is returned: it must be a socket with the token's inode,
/// family and type. It shares everything with the source's descriptor, `O_NONBLOCK` included.
///
/// - Parameters:
///   - token: The token the source made for this process.
///   - timeout: How long to wait for the holder.
/// - Throws: `SocketShareError`: `expired`, `refused` (this process is not the target),
///   `alreadyClaimed`, `revoked`, `notFound`, `holderGone` (the holder exited), `permissionDenied`
///   (pidfd without ptrace rights), `verificationFailed`, `timedOut`, `limitReached` (this process
///   has no descriptor to spare; the share stays claimable).
public func adopt(_ token: ShareToken, timeout: Duration = .seconds(10)) throws(SocketShareError) -> SocketDescriptor {
    if token.isExpired {
        let ago = (ShareTime.nowMilliseconds - token.expiresAtMilliseconds) / 1000
        throw SocketShareError(.expired, operation: "adopt", detail: "the token expired \(ago) s ago")
    }
    do throws(SocketShareError) {
        switch token.mechanism {
        case .sharer, .broker:
            return try ShareClaim.claim(token, deadline: .now + timeout)
        case .pidfd:
            return try ShareClaim.pull(token, deadline: .now + timeout)
        }
    } catch where error.code == .limitReached
        && (error.errno.map { [EMFILE, ENFILE].contains($0.rawValue) } == true || error.cause == .descriptorsTruncated) {
        // Out of descriptors here: nothing was handed over for good, so the share is still there.
        var limit = rlimit()
        getrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit)
        throw SocketShareError(
            .limitReached, operation: "adopt", errno: error.errno,
            detail: "this process is at its descriptor limit (RLIMIT_NOFILE \(limit.rlim_cur)); close a descriptor "
                + "and adopt again: the share stays claimable until it expires (\(error.detail))",
            cause: error.cause)
    }
}
