import Glibc
import SocketShareCore

/// The target's side of redeeming a token: claiming from an escrow holder, or pulling with pidfd.
package enum ShareClaim {
    /// Claims an escrowed share: connect, send the claim, receive the descriptor, verify, acknowledge.
    package static func claim(
        _ token: ShareToken, secret: ShareSecret, deadline: ContinuousClock.Instant
    ) throws(SocketShareError) -> SocketDescriptor {
        let channel = try connect(to: token)
        defer { try? channel.close() }
        FaultPoint.reached("claim.afterConnect")
        return try exchange(
            .claim(shareID: token.shareID, secret: secret), on: channel, deadline: deadline
        ) { (descriptor, id) throws(SocketShareError) in
            guard id == token.shareID else {
                throw SocketShareError(.protocolViolation, operation: "claim", detail: "the holder answered for share \(id), not \(token.shareID)")
            }
            try verify(descriptor, against: token)
        }
    }

    /// The claimant's half of a claim on a connected `channel`: sends `request` (`claim` or
    /// `claimNamed`), receives the answer, checks the descriptor with `check` (given the share id
    /// the holder named), and acknowledges it. A refusal is thrown with the holder's code and text
    /// (and, for `claimInProgress` and `policyRefused`, the matching cause); a descriptor that fails
    /// the check is closed and not acknowledged.
    package static func exchange(
        _ request: EscrowMessage, on channel: DescriptorChannel, deadline: ContinuousClock.Instant,
        check: (SocketDescriptor, UInt64) throws(SocketShareError) -> Void
    ) throws(SocketShareError) -> SocketDescriptor {
        // Failures of the channel itself are reported as the claim's; the protocol's own are made so.
        func io<T>(_ body: () throws(SocketShareError) -> T) throws(SocketShareError) -> T {
            do throws(SocketShareError) {
                return try body()
            } catch {
                throw error.within("claim")
            }
        }
        try io { () throws(SocketShareError) in try channel.send(request.bytes, deadline: deadline) }
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
        switch message {
        case .claimed(let id) where reply.descriptorCount == 1:
            let descriptor = reply.takeDescriptors()[0]
            FaultPoint.reached("claim.afterReceive")
            do throws(SocketShareError) {
                try check(descriptor, id)
            } catch {
                try? descriptor.close()
                throw error
            }
            // Until this arrives the holder keeps its copy and would offer the share again.
            try? channel.send(EscrowMessage.acknowledge(shareID: id).bytes, deadline: deadline)
            return descriptor
        case .failure(let failure, let text):
            reply.closeDescriptors()
            let cause: SocketShareError.Cause? = switch failure {
            case .claimInProgress: .claimInProgress
            case .policyRefused: .policyRefused
            default: nil
            }
            throw SocketShareError(failure.code, operation: "claim", detail: text, cause: cause)
        default:
            reply.closeDescriptors()
            throw SocketShareError(
                .protocolViolation, operation: "claim", detail: "unexpected reply with \(reply.descriptorCount) descriptors")
        }
    }

    /// Pulls a pidfd share from the source with `pidfd_getfd(2)`, verifies it and tells the holder.
    package static func pull(
        _ token: ShareToken, descriptor number: CInt, deadline: ContinuousClock.Instant
    ) throws(SocketShareError) -> SocketDescriptor {
        let me = ProcessIdentity.current
        guard me.pid == token.target.pid else {
            throw SocketShareError(
                .refused, operation: "adopt", detail: "this share is for pid \(token.target.pid); this process is pid \(me.pid)")
        }
        let source: ProcessDescriptor
        do throws(SocketShareError) {
            source = try ProcessDescriptor(pid: token.source.pid)
        } catch where error.code == .invalidArgument {
            throw SocketShareError(
                .holderGone, operation: "adopt", detail: "the source process (pid \(token.source.pid)) has exited")
        }
        guard source.identity == token.source else {
            throw SocketShareError(
                .holderGone, operation: "adopt",
                detail: "the source process (pid \(token.source.pid)) has exited; the pid now names another process")
        }
        let raw: CInt
        do throws(SocketShareError) {
            raw = try Kernel.pullDescriptor(from: source.rawValue, number)
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
        let descriptor = SocketDescriptor(taking: raw)
        FaultPoint.reached("pull.afterPull")
        do throws(SocketShareError) {
            try verify(descriptor, against: token)
        } catch {
            try? descriptor.close()
            throw error
        }
        // Tell the holder so it closes its copy now rather than at expiry; failing that is harmless.
        if let channel = try? connect(to: token) {
            try? channel.send(EscrowMessage.acknowledge(shareID: token.shareID).bytes, deadline: deadline)
            try? channel.close()
        }
        return descriptor
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
        try DescriptorChannel.connect(
            to: token.endpoint, for: "claim",
            absent: "nothing serves \(token.endpoint): the \(token.mechanism) holding this share "
                + "(pid \(token.source.pid)) has stopped or exited, so the share is gone")
    }
}
