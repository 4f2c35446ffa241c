import Glibc
import SocketShareCore

// The module's functions: sharing through the process's default ``Sharer``, the way Winsock's
// `WSADuplicateSocket` needs no object. Call them qualified, as `SocketShare.duplicate(…)`:
//
//     // Source
//     let token = try SocketShare.duplicate(listener, for: workerPID)
//     try pipe.write(token.text + "\n")
//     try listener.close()               // DuplicateAndClose: the share stays claimable
//
//     // Target (the process whose pid is workerPID)
//     let listener = try SocketShare.adopt(try ShareToken(text: line))

/// Duplicates `descriptor` for the process `target` through ``Sharer/default`` and returns the
/// token that redeems it; see ``Sharer/duplicate(_:for:options:)-(CInt,pid_t,_)``.
///
/// - Throws: `SocketShareError`: `invalidArgument` when the descriptor is not a shareable socket
///   or the target does not exist; `permissionDenied` when the runtime directory is unsafe.
public func duplicate(_ descriptor: CInt, for target: pid_t, options: ShareOptions = ShareOptions()) throws(SocketShareError) -> ShareToken {
    try Sharer.default.duplicate(descriptor, for: target, options: options)
}

/// Duplicates the socket behind `descriptor` for `target` through ``Sharer/default``.
///
/// - Throws: `SocketShareError`, as `duplicate(_:for:options:)`.
public func duplicate(
    _ descriptor: SocketDescriptor, for target: pid_t, options: ShareOptions = ShareOptions()
) throws(SocketShareError) -> ShareToken {
    try Sharer.default.duplicate(descriptor, for: target, options: options)
}

/// Duplicates for an exact process (pid and start time) through ``Sharer/default``.
///
/// - Throws: `SocketShareError` with code `invalidArgument` when that process has exited.
public func duplicate(
    _ descriptor: CInt, for target: ProcessIdentity, options: ShareOptions = ShareOptions()
) throws(SocketShareError) -> ShareToken {
    try Sharer.default.duplicate(descriptor, for: target, options: options)
}

/// Waits until a share made through ``Sharer/default`` ends, and returns how; for a share held
/// elsewhere (the broker), ``ShareOutcome/holderStopped`` at once.
public func outcome(of token: ShareToken) async -> ShareOutcome {
    await Sharer.default.outcome(of: token)
}

/// Revokes a share made through ``Sharer/default``: its held duplicate is closed and later claims
/// are refused. Returns false when it had already ended (or is held elsewhere).
@discardableResult
public func revoke(_ token: ShareToken) -> Bool {
    Sharer.default.revoke(token)
}
