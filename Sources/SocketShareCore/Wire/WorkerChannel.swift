import Glibc

/// The worker's end of a dispatcher's channel, for a worker that waits with an event loop: no
/// call blocks and none starts a thread.
///
/// The worker learns that messages wait from its doorbell (``WorkerMessage/doorbell``), then calls
/// ``receiveWaiting(_:)`` until nothing is left. Connections are handed over as raw descriptors
/// (close-on-exec) with their ids, and, only when asked for, the names of the listeners that
/// accepted them; the peer's and the local address the dispatcher also sends are skipped — the
/// worker's socket layer asks the kernel for the addresses it wants. Messages to the dispatcher that find its queue full wait in an outbox until
/// ``flush()`` gets them out, in order.
///
/// Not thread-safe: one event loop owns it.
package final class WorkerChannel {
    /// What arrived from the dispatcher.
    package enum Delivery {
        /// Connections, with the dispatcher's ids and (when asked for) their listeners' names, in
        /// order. The caller owns the descriptors.
        case connections(ids: [UInt64], listeners: [String]?, descriptors: [CInt])
        /// Take no more connections: the dispatcher sends none after this.
        case stop
        /// The connections not acknowledged yet are another worker's now: close them unserved.
        case takenBack
    }

    /// The channel's socket (a connected `SOCK_SEQPACKET` Unix socket).
    package let socket: SocketDescriptor
    private let buffer: UnsafeMutableRawBufferPointer
    private var outbox: [[UInt8]] = []

    /// Takes ownership of `socket`, the worker's end of the channel.
    package init(socket: SocketDescriptor) {
        self.socket = socket
        self.buffer = .allocate(byteCount: WorkerMessage.maximumLength, alignment: 16)
    }

    deinit {
        buffer.deallocate()
    }

    /// The environment variable that names the worker's end of its channel.
    package static let environmentVariable = "SOCKSHARE_WORKER_FD"

    /// The descriptor `$SOCKSHARE_WORKER_FD` names, made close-on-exec, or nil when the variable
    /// is not set (the process was not started by `sockshare serve --mode handoff`).
    ///
    /// - Throws: ``SocketShareError`` (`invalidArgument`) when the variable does not name an open
    ///   `SOCK_SEQPACKET` Unix socket.
    package static func fromEnvironment() throws(SocketShareError) -> SocketDescriptor? {
        let variable = environmentVariable
        guard let text = RuntimeDirectory.environment(variable) else { return nil }
        guard let fd = CInt(text), fd >= 0, Kernel.descriptorFlags(fd) != nil else {
            throw SocketShareError(.invalidArgument, operation: "worker", detail: "\(variable)=\(text) is not an open descriptor")
        }
        let family = try? Kernel.socketOption(fd, SOL_SOCKET, SO_DOMAIN)
        let type = try? Kernel.socketOption(fd, SOL_SOCKET, SO_TYPE)
        guard family == AF_UNIX, type == Kernel.seqpacketType else {
            throw SocketShareError(
                .invalidArgument, operation: "worker", detail: "\(variable)=\(text) is not a SOCK_SEQPACKET Unix socket")
        }
        try Kernel.setCloseOnExec(fd, true)
        return SocketDescriptor(taking: fd)
    }

    /// Makes a doorbell for the worker's end of a channel, `channel`: a socketpair whose one end
    /// goes to the dispatcher, which writes a byte to it after every message it sends; the other
    /// end is returned, for the caller's event loop to read. Blocks at most until `deadline` if the
    /// channel is full (a new one is not).
    package static func makeDoorbell(
        on channel: SocketDescriptor, deadline: ContinuousClock.Instant
    ) throws(SocketShareError) -> SocketDescriptor {
        let (mine, theirs) = try SocketDescriptor.pair(kind: .stream)
        defer { try? theirs.close() }
        do throws(SocketShareError) {
            try DescriptorChannel(channel).send(WorkerMessage.doorbell.bytes, descriptors: [theirs.rawValue], deadline: deadline)
        } catch {
            try? mine.close()
            throw error
        }
        return mine
    }

    /// Receives every message waiting, without blocking, and hands each to `body`. Returns false
    /// once the dispatcher has closed the channel (nothing more will come). With
    /// `listenerNames`, connections come with the names of their listeners.
    ///
    /// A message that is not the worker protocol is an error (its descriptors are closed first);
    /// messages a worker does not act on are skipped.
    package func receiveWaiting(listenerNames: Bool = false, _ body: (Delivery) -> Void) throws(SocketShareError) -> Bool {
        while true {
            guard let received = try Kernel.receiveMessage(
                socket.rawValue, into: buffer, maximumDescriptors: WorkerMessage.maximumBatch, flags: Kernel.dontWait)
            else { return true }
            if received.byteCount == 0 && received.descriptors.isEmpty { return false }
            let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<received.byteCount])
            let delivery: Delivery?
            do throws(SocketShareError) {
                delivery = try Self.decode(bytes, descriptors: received.descriptors.count, listenerNames: listenerNames)
            } catch {
                for fd in received.descriptors { try? Kernel.close(fd) }
                throw error
            }
            switch delivery {
            case .connections(let ids, let listeners, _)?:
                body(.connections(ids: ids, listeners: listeners, descriptors: received.descriptors))
            case .stop?:
                for fd in received.descriptors { try? Kernel.close(fd) }
                body(.stop)
            case .takenBack?:
                for fd in received.descriptors { try? Kernel.close(fd) }
                body(.takenBack)
            case nil:
                for fd in received.descriptors { try? Kernel.close(fd) }
            }
        }
    }

    /// Sends `message` now, or queues it behind earlier ones when the dispatcher's queue is full.
    /// Returns false when the channel is gone (`EPIPE`, `ECONNRESET`): the dispatcher is.
    @discardableResult
    package func send(_ message: WorkerMessage) -> Bool {
        outbox.append(message.bytes)
        return flush()
    }

    /// Whether messages wait in the outbox for room in the dispatcher's queue.
    package var hasPending: Bool { !outbox.isEmpty }

    /// Sends what waits in the outbox, as far as the dispatcher's queue takes it. Returns false
    /// when the channel is gone.
    @discardableResult
    package func flush() -> Bool {
        while let next = outbox.first {
            do throws(SocketShareError) {
                _ = try next.withBytes { (bytes) throws(SocketShareError) in
                    try Kernel.sendMessage(socket.rawValue, bytes, descriptors: [], flags: Kernel.dontWait)
                }
                outbox.removeFirst()
            } catch where error.errno?.rawValue == EAGAIN || error.errno?.rawValue == ENOBUFS {
                return true
            } catch {
                outbox.removeAll()
                return false
            }
        }
        return true
    }

    /// Decodes a dispatcher's message: connections (ids, and listener names with `listenerNames`,
    /// with the descriptor count checked), `stop`, or nil for a message a worker ignores. Strict:
    /// a malformed message is an error.
    package static func decode(
        _ bytes: UnsafeRawBufferPointer, descriptors: Int, listenerNames: Bool = false
    ) throws(SocketShareError) -> Delivery? {
        func malformed(_ detail: String) -> SocketShareError {
            SocketShareError(.protocolViolation, operation: "decode worker message", detail: detail)
        }
        guard bytes.count >= 2 else { throw malformed("\(bytes.count) bytes; a message has at least 2") }
        guard bytes[0] == WorkerMessage.version else {
            throw malformed("protocol version \(bytes[0]) is not supported (this side speaks version \(WorkerMessage.version))")
        }
        switch WorkerMessage.TypeCode(rawValue: bytes[1]) {
        case .connections?:
            guard bytes.count >= 4 else { throw malformed("field count: input ends at byte \(bytes.count)") }
            let count = Int(bytes[2]) << 8 | Int(bytes[3])
            guard count <= WorkerMessage.maximumBatch else {
                throw malformed("field count: \(count) connections; at most \(WorkerMessage.maximumBatch)")
            }
            guard count == descriptors else {
                throw malformed("\(count) connections came with \(descriptors) descriptors")
            }
            var ids: [UInt64] = []
            ids.reserveCapacity(count)
            var listeners: [String] = []
            var offset = 4
            for _ in 0..<count {
                guard offset + 8 <= bytes.count else { throw malformed("field id: input ends at byte \(bytes.count)") }
                ids.append(UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
                offset += 8
                // The listener's name (read when asked for), the peer's and the local address (skipped).
                for field in 0..<3 {
                    guard offset < bytes.count else { throw malformed("field text: input ends at byte \(bytes.count)") }
                    let length = Int(bytes[offset])
                    guard offset + 1 + length <= bytes.count else { throw malformed("field text: input ends at byte \(bytes.count)") }
                    if field == 0 && listenerNames {
                        let text = UnsafeRawBufferPointer(rebasing: bytes[(offset + 1)..<(offset + 1 + length)])
                        guard let name = String(validating: text, as: UTF8.self) else { throw malformed("field listenerName: not UTF-8") }
                        listeners.append(name)
                    }
                    offset += 1 + length
                }
            }
            guard offset == bytes.count else {
                throw malformed("\(bytes.count - offset) unexpected bytes after the connections")
            }
            return .connections(ids: ids, listeners: listenerNames ? listeners : nil, descriptors: [])
        case .stop?:
            return .stop
        case .takenBack?:
            return .takenBack
        case nil:
            throw malformed("field type: \(bytes[1]) is not a message type")
        default:
            return nil
        }
    }
}
