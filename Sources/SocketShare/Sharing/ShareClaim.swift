import Glibc
import SocketShareCore

/// The target's side of redeeming a token: claiming from an escrow holder, or pulling with pidfd.
package enum ShareClaim {
    /// Claims an escrowed share: connect, send the claim, receive the descriptor, verify, acknowledge.
    package static func claim(_ token: ShareToken, deadline: ContinuousClock.Instant) throws(SocketShareError) -> SocketDescriptor {
        let channel = try connect(to: token)
        defer { try? channel.close() }
        FaultPoint.reached("claim.afterConnect")
        return try exchange(.claim(shareID: token.shareID, secret: token.secret), on: channel, deadline: deadline) {
            (reply, attached) throws(SocketShareError) in
            guard case .claimed(let id) = reply, let attached else { throw unexpected(reply, attached) }
            guard id == token.shareID else {
                throw SocketShareError(.protocolViolation, operation: "claim", detail: "the holder answered for share \(id), not \(token.shareID)")
            }
            try verify(attached, against: token)
            return attached
        }
    }

    /// The claimant's half of a claim on a connected `channel`: sends `request` (`claim`,
    /// `claimNamed` or `pull`), receives the answer, and hands it to `take` with the descriptor that
    /// came with it, if one did; `take` returns the checked descriptor (that one, or one it pulled),
    /// and the share it was for is acknowledged. A refusal is thrown with the holder's code and text
    /// (and, for `claimInProgress` and `policyRefused`, the matching cause); a descriptor that
    /// arrived is closed, and nothing acknowledged, when `take` throws.
    package static func exchange(
        _ request: EscrowMessage, on channel: DescriptorChannel, deadline: ContinuousClock.Instant,
        take: (EscrowMessage, SocketDescriptor?) throws(SocketShareError) -> SocketDescriptor
    ) throws(SocketShareError) -> SocketDescriptor {
        // Failures of the channel itself are reported as the claim's; the protocol's own are made so.
        func io<T>(_ body: () throws(SocketShareError) -> T) throws(SocketShareError) -> T {
            do throws(SocketShareError) {
                return try body()
            } catch {
                throw error.within("claim")
            }
        }
        try io { () throws(SocketShareError) in try channel.sendRequest(request.bytes, deadline: deadline) }
        FaultPoint.reached("claim.afterRequest")
        guard let reply = try io({ () throws(SocketShareError) in
            // The answer takes the holder a wake-up: wait for it first, then read it once.
            try channel.waitUntil(POLLIN, deadline: deadline, operation: "receive")
            return try channel.receive(maximumBytes: EscrowMessage.maximumRequestLength, deadline: deadline)
        }) else {
            throw SocketShareError(.holderGone, operation: "claim", detail: "the holder closed the connection without answering")
        }
        let message: EscrowMessage
        do throws(SocketShareError) {
            message = try EscrowMessage(bytes: reply.bytes)
        } catch {
            reply.closeDescriptors()
            throw error.within("claim", code: .protocolViolation, context: "reply")
        }
        let shareID: UInt64
        switch message {
        case .failure(let failure, let text):
            reply.closeDescriptors()
            let cause: SocketShareError.Cause? = switch failure {
            case .claimInProgress: .claimInProgress
            case .policyRefused: .policyRefused
            default: nil
            }
            throw SocketShareError(failure.code, operation: "claim", detail: text, cause: cause)
        case .claimed(let id) where reply.descriptorCount == 1, .pullable(let id, _) where reply.descriptorCount == 0:
            shareID = id
        default:
            reply.closeDescriptors()
            throw SocketShareError(
                .protocolViolation, operation: "claim", detail: "unexpected reply with \(reply.descriptorCount) descriptors")
        }
        let attached = reply.takeDescriptors().first
        if attached != nil { FaultPoint.reached("claim.afterReceive") }
        let descriptor: SocketDescriptor
        do throws(SocketShareError) {
            descriptor = try take(message, attached)
        } catch {
            try? attached?.close()
            throw error
        }
        // Until this arrives the holder keeps its copy and would offer the share again.
        try? channel.send(EscrowMessage.acknowledge(shareID: shareID).bytes, deadline: deadline)
        return descriptor
    }

    /// The error for a reply that carries no descriptor to take.
    package static func unexpected(_ reply: EscrowMessage, _ attached: SocketDescriptor?) -> SocketShareError {
        SocketShareError(
            .protocolViolation, operation: "claim",
            detail: "unexpected reply \(reply) with \(attached == nil ? "no" : "a") descriptor")
    }

    /// Redeems a pidfd share: asks the holder the token names, which must be the source process
    /// itself, whether this process may pull the share (the holder checks the secret and that this
    /// is the target, as for a claim, and names its descriptor), then pulls it with
    /// `pidfd_getfd(2)` through the pidfd of the process that answered, verifies it and acknowledges.
    ///
    /// Nothing in the token is trusted before the holder has confirmed it: a token made up from
    /// what `/proc` shows of another process (its pid, start time, a socket's inode and descriptor
    /// number) gets no descriptor, because that process's holder does not know its secret.
    package static func pull(_ token: ShareToken, deadline: ContinuousClock.Instant) throws(SocketShareError) -> SocketDescriptor {
        let me = ProcessIdentity.current
        guard me.pid == token.target.pid else {
            throw SocketShareError(
                .refused, operation: "adopt", detail: "this share is for pid \(token.target.pid); this process is pid \(me.pid)")
        }
        let channel = try connect(to: token)
        defer { try? channel.close() }
        let holder = try PeerProcess(of: channel.socket.rawValue)
        guard holder.pid == token.source.pid, (try? holder.startTime()) == token.source.startTime else {
            throw SocketShareError(
                .refused, operation: "adopt",
                detail: "\(token.endpoint) is served by pid \(holder.pid), not by the source process \(token.source): "
                    + "a pidfd share is confirmed by its source only")
        }
        return try exchange(.pull(shareID: token.shareID, secret: token.secret), on: channel, deadline: deadline) {
            (reply, attached) throws(SocketShareError) in
            guard case .pullable(let id, let number) = reply, attached == nil, id == token.shareID else {
                throw unexpected(reply, attached)
            }
            let descriptor = try pullDescriptor(CInt(number), from: holder, token: token)
            FaultPoint.reached("pull.afterPull")
            do throws(SocketShareError) {
                try verify(descriptor, against: token)
            } catch {
                try? descriptor.close()
                throw error
            }
            return descriptor
        }
    }

    /// `pidfd_getfd(2)` of descriptor `number` from the holder, through its pidfd (`SO_PEERPIDFD`),
    /// or one opened by pid and checked against the token where the kernel gives none.
    private static func pullDescriptor(_ number: CInt, from holder: PeerProcess, token: ShareToken) throws(SocketShareError) -> SocketDescriptor {
        let opened: ProcessDescriptor?
        let pidfd: CInt
        if let peer = holder.pidfd {
            opened = nil
            pidfd = peer
        } else {
            do throws(SocketShareError) {
                opened = try ProcessDescriptor(pid: token.source.pid)
            } catch where error.code == .invalidArgument {
                throw SocketShareError(.holderGone, operation: "adopt", detail: "the source process (pid \(token.source.pid)) has exited")
            }
            guard opened!.identity == token.source else {
                throw SocketShareError(
                    .holderGone, operation: "adopt",
                    detail: "the source process (pid \(token.source.pid)) has exited; the pid now names another process")
            }
            pidfd = opened!.rawValue
        }
        do throws(SocketShareError) {
            return SocketDescriptor(taking: try withExtendedLifetime(opened) { () throws(SocketShareError) in
                try Kernel.pullDescriptor(from: pidfd, number)
            })
        } catch {
            switch error.errno?.rawValue {
            case EPERM?:
                throw SocketShareError(
                    .permissionDenied, operation: "adopt", errno: error.errno,
                    detail: "pidfd_getfd needs ptrace access to pid \(token.source.pid): run as the same user with "
                        + "Yama ptrace_scope 0, or under scope 1 the source must name us with prctl(PR_SET_PTRACER) "
                        + "(SocketShare does that for pidfd shares), or hold CAP_SYS_PTRACE; or share --via sharer")
            case EBADF?:
                throw SocketShareError(
                    .expired, operation: "adopt",
                    detail: "pid \(token.source.pid) no longer holds descriptor \(number): the share expired or was revoked")
            case ESRCH?:
                throw SocketShareError(.holderGone, operation: "adopt", detail: "the source process has exited")
            default:
                throw error.within("adopt")
            }
        }
    }

    /// Checks that a received descriptor is the socket the token describes.
    package static func verify(_ descriptor: SocketDescriptor, against token: ShareToken) throws(SocketShareError) {
        let identity: SocketIdentity
        do throws(SocketShareError) {
            identity = try SocketIdentity(of: descriptor.rawValue)
        } catch {
            throw SocketShareError(.verificationFailed, operation: "adopt", detail: "the received descriptor: \(error.detail)")
        }
        guard identity.inode == token.socketInode else {
            throw SocketShareError(
                .verificationFailed, operation: "adopt",
                detail: "received socket:[\(identity.inode)], but the token names socket:[\(token.socketInode)]")
        }
        let family = try? Kernel.socketOption(descriptor.rawValue, SOL_SOCKET, SO_DOMAIN)
        let type = try? Kernel.socketOption(descriptor.rawValue, SOL_SOCKET, SO_TYPE)
        guard family == token.family.addressFamily, type == token.kind.socketType else {
            throw SocketShareError(
                .verificationFailed, operation: "adopt",
                detail: "the received socket is not \(token.family) \(token.kind) as the token says")
        }
    }

    private static func connect(to token: ShareToken) throws(SocketShareError) -> DescriptorChannel {
        try Rendezvous.connect(
            to: token.endpoint, trust: .directoryOwner, for: token.mechanism == .pidfd ? "adopt" : "claim",
            absent: "nothing serves \(token.endpoint): the \(token.mechanism) holding this share "
                + "(pid \(token.source.pid)) has stopped or exited, so the share is gone")
    }
}
