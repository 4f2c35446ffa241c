/// Talks to a running `sockshare serve` over its control socket (`docs/SERVE.md`).
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
        try ServeStatus(json: try request("status"))
    }

    /// Sends one text command and returns the raw answer.
    func request(_ command: String, timeout: Duration? = nil) throws(SocketShareError) -> [UInt8] {
        let deadline = ContinuousClock.now + (timeout ?? self.timeout)
        let channel: DescriptorChannel
        do throws(SocketShareError) {
            channel = try DescriptorChannel.connect(to: controlPath)
        } catch {
            throw SocketShareError(
                error.code == .system ? .holderGone : error.code, operation: command, errno: error.errno,
                detail: "no sockshare serve answers at \(controlPath)")
        }
        defer { try? channel.close() }
        try channel.send(Array(command.utf8), deadline: deadline)
        guard let reply = try channel.receive(maximumBytes: 1 << 20, deadline: deadline) else {
            throw SocketShareError(.holderGone, operation: command, detail: "the supervisor closed the connection without answering")
        }
        reply.closeDescriptors()
        return reply.bytes
    }
}
