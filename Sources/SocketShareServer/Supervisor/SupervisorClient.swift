import Glibc
import SocketShare
import SocketShareCore

/// Talks to a running ``Supervisor`` (`sockshare serve`) over its control socket (`docs/SERVE.md`):
/// status, reload, upgrade.
public struct SupervisorClient: Sendable {
    /// The control socket's path.
    public var controlPath: String
    /// How long to wait for an answer.
    public var timeout: Duration

    /// A client of the supervisor whose control socket is `controlPath`.
    public init(controlPath: String, timeout: Duration = .seconds(10)) {
        self.controlPath = controlPath
        self.timeout = timeout
    }

    /// The supervisor's listeners, workers and counters.
    public func status() throws(SocketShareError) -> ServeStatus {
        let reply = try request(ControlRequest.status.bytes, for: "status")
        if let answer = try? ControlAnswer(json: reply), !answer.ok {
            throw SocketShareError(.refused, operation: "status", detail: answer.reason)
        }
        return try ServeStatus(json: reply)
    }

    /// Starts a new generation of workers and returns once it serves, or once it has been rolled
    /// back (then it throws, with the reason).
    ///
    /// - Parameter deadline: How long the new generation has to become ready; nil: the supervisor's default.
    public func reload(deadline: Duration? = nil) throws(SocketShareError) -> Answer {
        try conclude("reload", deadline: deadline)
    }

    /// Hands the supervisor over to `binary` (nil: the binary it runs) and returns once the new
    /// supervisor serves, or once the attempt has been rolled back (then it throws).
    public func upgrade(binary: String? = nil, deadline: Duration? = nil) throws(SocketShareError) -> Answer {
        try conclude("upgrade", deadline: deadline, argument: binary)
    }

    private func conclude(_ command: String, deadline: Duration?, argument: String? = nil) throws(SocketShareError) -> Answer {
        let request: ControlRequest = command == "reload" ? .reload(deadline: deadline) : .upgrade(deadline: deadline, binary: argument)
        let answer = try ControlAnswer(json: try self.request(request.bytes, for: command, timeout: (deadline ?? .seconds(300)) + .seconds(30)))
        guard answer.ok else { throw SocketShareError(.refused, operation: command, detail: answer.reason) }
        return answer
    }

    /// The control socket of the one `sockshare serve` running in the standard runtime directory,
    /// which must be this user's or root's.
    ///
    /// - Throws: `SocketShareError` with code `notFound` when there is none, or several.
    public static func discover() throws(SocketShareError) -> String {
        let directory = RuntimeDirectory.standardPath
        if let info = try Kernel.linkStatus(directory), info.st_uid != geteuid(), info.st_uid != 0 {
            throw SocketShareError(
                .permissionDenied, operation: "find sockshare serve",
                detail: "\(directory) is owned by uid \(info.st_uid), not by this user (uid \(geteuid())) or root: someone else "
                    + "made it; refusing to look for control sockets in it (name one with --control PATH)",
                cause: .untrustedRendezvous)
        }
        let live = Kernel.directoryEntries(directory).filter { name in
            guard name.hasPrefix("serve-"), name.hasSuffix(".sock"), let pid = pid_t(name.dropFirst(6).dropLast(5)) else { return false }
            return Kernel.processExists(pid)
        }
        guard live.count == 1 else {
            throw SocketShareError(
                .notFound, operation: "find sockshare serve",
                detail: live.isEmpty
                    ? "no sockshare serve runs with its control socket in \(directory); name one with --control PATH"
                    : "\(live.count) sockshare serve run (\(live.joined(separator: ", "))); name one with --control PATH")
        }
        return directory + "/" + live[0]
    }

    /// Sends one request and returns the raw answer.
    package func request(_ bytes: [UInt8], for command: String, timeout: Duration? = nil) throws(SocketShareError) -> [UInt8] {
        let deadline = ContinuousClock.now + (timeout ?? self.timeout)
        let channel = try Rendezvous.connect(
            to: controlPath, trust: .directoryOwner, for: command, absent: "no sockshare serve answers at \(controlPath)")
        defer { try? channel.close() }
        try channel.sendRequest(bytes, deadline: deadline)
        guard let reply = try channel.receive(maximumBytes: 1 << 20, deadline: deadline) else {
            throw SocketShareError(.holderGone, operation: command, detail: "the supervisor closed the connection without answering")
        }
        reply.closeDescriptors()
        return reply.bytes
    }
}
