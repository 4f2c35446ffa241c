import Glibc

/// A connected `SOCK_SEQPACKET` Unix socket that carries messages of bytes plus descriptors.
///
/// Every layer above uses this one piece: claims, deposits, connection handoff, takeover. A message
/// is one packet, so descriptors stay with the bytes they were sent with. Each message carries at
/// most 252 descriptors (``maximumDescriptorsPerMessage``); ``sendBatch(_:deadline:)`` splits more.
///
/// Received descriptors are close-on-exec (`MSG_CMSG_CLOEXEC`) and owned by the returned
/// ``ChannelMessage``. When the kernel had to cut descriptors off (`MSG_CTRUNC`) or the message
/// was longer than the buffer, whatever arrived is closed and the call throws: nothing leaks.
///
/// Every wait takes a deadline (nil waits forever). The socket itself stays blocking; waits use
/// `MSG_DONTWAIT` and `poll(2)`, so a holder of another descriptor of it is not affected.
package final class DescriptorChannel: Sendable {
    /// The most descriptors one message carries (the kernel's 253, less one, as HAProxy learned on musl).
    package static let maximumDescriptorsPerMessage = Kernel.maximumDescriptorsPerMessage

    /// The channel's socket.
    package let socket: SocketDescriptor

    /// Wraps a connected `SOCK_SEQPACKET` Unix socket.
    package init(_ socket: SocketDescriptor) {
        self.socket = socket
    }

    /// A connected pair of channels (`socketpair(AF_UNIX, SOCK_SEQPACKET)`).
    package static func pair() throws(SocketShareError) -> (DescriptorChannel, DescriptorChannel) {
        let (first, second) = try SocketDescriptor.pair(kind: .seqpacket)
        return (DescriptorChannel(first), DescriptorChannel(second))
    }

    /// Connects to a `SOCK_SEQPACKET` listener at a Unix path, trusting whoever listens there: for
    /// probes and tests. Clients of a rendezvous socket use ``Rendezvous/connect(to:trust:for:absent:)``.
    package static func connect(to path: String) throws(SocketShareError) -> DescriptorChannel {
        DescriptorChannel(try SocketDescriptor.connected(to: .unix(path: path), kind: .seqpacket))
    }

    /// Turns a client away: sends `reply` (without waiting), and closes so that the client reads
    /// the reply rather than a reset. Closing a Unix socket with unread data in it makes the peer's
    /// next receive fail with `ECONNRESET` before it sees what was sent to it; so the channel is shut
    /// down first (the client can send nothing more: its send gets `EPIPE`), and what the client had
    /// sent is read and dropped.
    package func turnAway(_ reply: [UInt8]) {
        _ = try? send(reply, deadline: .now)
        _ = try? Kernel.shutdown(socket.rawValue, CInt(SHUT_RDWR))
        while let message = try? receive(maximumBytes: 65536, deadline: .now) { message.closeDescriptors() }
        try? close()
    }

    /// Closes this side of the channel; the peer's next receive sees the end.
    package func close() throws(SocketShareError) { try socket.close() }

    /// Sends one message: `bytes` (at least one byte) and up to 252 descriptors, which stay owned by
    /// the caller; the receiver gets its own copies.
    ///
    /// The corresponding C function is `sendmsg(2)` with an `SCM_RIGHTS` control message.
    ///
    /// - Throws: ``SocketShareError``: `invalidArgument` for an empty message or too many descriptors,
    ///   `timedOut` when the peer does not make room by `deadline`, `system` for the kernel's errors
    ///   (`EPIPE` when the peer has closed).
    package func send(_ bytes: [UInt8], descriptors: [CInt] = [], deadline: ContinuousClock.Instant? = nil) throws(SocketShareError) {
        guard !bytes.isEmpty else {
            throw SocketShareError(.invalidArgument, operation: "send", detail: "a message needs at least one byte")
        }
        guard descriptors.count <= Self.maximumDescriptorsPerMessage else {
            throw SocketShareError(
                .invalidArgument, operation: "send",
                detail: "\(descriptors.count) descriptors in one message; the limit is \(Self.maximumDescriptorsPerMessage) (use sendBatch)")
        }
        // Without a deadline the kernel blocks for us; with one, MSG_DONTWAIT and poll bound the wait.
        let flags = deadline == nil ? 0 : Kernel.dontWait
        while true {
            do throws(SocketShareError) {
                _ = try bytes.withBytes { (buffer) throws(SocketShareError) in
                    try Kernel.sendMessage(socket.rawValue, buffer, descriptors: descriptors, flags: flags)
                }
                return
            } catch where error.errno?.rawValue == EAGAIN || error.errno?.rawValue == ENOBUFS {
                try waitUntil(POLLOUT, deadline: deadline, operation: "send")
            }
        }
    }

    /// Sends a client's request: as ``send(_:descriptors:deadline:)``, except that a server that has
    /// already answered and closed the connection (`EPIPE`, `ECONNRESET` — one that turned this
    /// client away on arrival) is no error here: its answer is still waiting to be received.
    package func sendRequest(_ bytes: [UInt8], descriptors: [CInt] = [], deadline: ContinuousClock.Instant?) throws(SocketShareError) {
        do throws(SocketShareError) {
            try send(bytes, descriptors: descriptors, deadline: deadline)
        } catch where error.errno?.rawValue == EPIPE || error.errno?.rawValue == ECONNRESET {
            return
        }
    }

    /// Receives one message, or nil when the peer has closed the channel.
    ///
    /// - Parameters:
    ///   - maximumBytes: The longest message accepted; a longer one is an error (its descriptors closed).
    ///   - deadline: When to give up waiting (`timedOut`).
    package func receive(maximumBytes: Int = 65536, deadline: ContinuousClock.Instant? = nil) throws(SocketShareError) -> ChannelMessage? {
        // A scratch buffer (on the stack when small), not zeroed: only what arrives is copied out.
        let result: Result<ChannelMessage?, SocketShareError> = withUnsafeTemporaryAllocation(
            byteCount: maximumBytes, alignment: 16
        ) { buffer in
            Result { () throws(SocketShareError) -> ChannelMessage? in
                let flags = deadline == nil ? 0 : Kernel.dontWait
                while true {
                    let received = try Kernel.receiveMessage(
                        socket.rawValue, into: buffer, maximumDescriptors: Self.maximumDescriptorsPerMessage, flags: flags)
                    guard let received else {
                        try waitUntil(POLLIN, deadline: deadline, operation: "receive")
                        continue
                    }
                    if received.byteCount == 0 && received.descriptors.isEmpty { return nil }
                    return ChannelMessage(bytes: Array(buffer[0..<received.byteCount]), raw: received.descriptors)
                }
            }
        }
        return try result.get()
    }

    /// What ``receiveWaiting(maximumBytes:)`` found.
    package enum Waiting {
        /// A message.
        case message(ChannelMessage)
        /// Nothing waiting now.
        case none
        /// The peer has closed the channel.
        case closed
    }

    /// Receives one message if one is waiting, without blocking or polling: for an event loop that
    /// was told the channel is readable and drains it.
    package func receiveWaiting(maximumBytes: Int = 65536) throws(SocketShareError) -> Waiting {
        let result: Result<Waiting, SocketShareError> = withUnsafeTemporaryAllocation(
            byteCount: maximumBytes, alignment: 16
        ) { buffer in
            Result { () throws(SocketShareError) -> Waiting in
                guard let received = try Kernel.receiveMessage(
                    socket.rawValue, into: buffer, maximumDescriptors: Self.maximumDescriptorsPerMessage, flags: Kernel.dontWait)
                else { return .none }
                if received.byteCount == 0 && received.descriptors.isEmpty { return .closed }
                return .message(ChannelMessage(bytes: Array(buffer[0..<received.byteCount]), raw: received.descriptors))
            }
        }
        return try result.get()
    }

    /// Waits for `events` on the socket until `deadline` (a deadline already past does not poll).
    package func waitUntil(_ events: CInt, deadline: ContinuousClock.Instant?, operation: String) throws(SocketShareError) {
        if let deadline, deadline <= .now {
            throw SocketShareError(.timedOut, operation: operation, detail: "the peer did not answer in time")
        }
        var fds = [pollfd(fd: socket.rawValue, events: Int16(events), revents: 0)]
        if try Kernel.poll(&fds, deadline: deadline) == 0 {
            throw SocketShareError(.timedOut, operation: operation, detail: "the peer did not answer in time")
        }
    }
}

/// One message received on a ``DescriptorChannel``: its bytes and the descriptors that came with it.
///
/// The message owns the descriptors (close-on-exec) until ``takeDescriptors()`` hands them out as
/// ``SocketDescriptor``s, or ``closeDescriptors()`` closes them; any left when the last copy of the
/// message goes away are closed then. Keeping them as plain numbers until asked saves an object per
/// descriptor on the hot path of large batches.
package struct ChannelMessage: Sendable {
    /// The message's bytes.
    package var bytes: [UInt8]
    private let owned: ReceivedDescriptors

    /// Creates a message that owns `descriptors`.
    package init(bytes: [UInt8], descriptors: [SocketDescriptor]) {
        self.init(bytes: bytes, raw: descriptors.map { $0.release() })
    }

    package init(bytes: [UInt8], raw: [CInt]) {
        self.bytes = bytes
        self.owned = ReceivedDescriptors(raw)
    }

    /// How many descriptors came with the message (taken or not).
    package var descriptorCount: Int { owned.count }

    /// Hands the descriptors out, in the order they were sent; the caller owns them from now on.
    /// Later calls return an empty array.
    package func takeDescriptors() -> [SocketDescriptor] { owned.take() }

    /// Closes every descriptor the message still owns.
    package func closeDescriptors() { owned.close() }
}

/// The descriptors of a received message, as numbers, until taken or closed.
package final class ReceivedDescriptors: Sendable {
    package let count: Int
    private let remaining: Locked<[CInt]>

    package init(_ descriptors: [CInt]) {
        count = descriptors.count
        remaining = Locked(descriptors)
    }

    package func take() -> [SocketDescriptor] {
        remaining.withLock { raw in
            defer { raw.removeAll() }
            return raw.map { SocketDescriptor(taking: $0) }
        }
    }

    package func close() {
        for fd in remaining.withLock({ raw in defer { raw.removeAll() }; return raw }) { try? Kernel.close(fd) }
    }

    deinit { close() }
}
