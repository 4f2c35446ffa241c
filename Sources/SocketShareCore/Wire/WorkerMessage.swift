/// The messages between a dispatcher (`sockshare serve --mode handoff`) and its workers, over a
/// `SOCK_SEQPACKET` socketpair whose worker end is descriptor `$SOCKSHARE_WORKER_FD`.
///
/// Every message is one packet, `u8 version | u8 type | body`, big-endian; `docs/WORKERS.md` is the
/// reference for other languages. The dispatcher keeps its own copy of every connection it sends
/// until the worker acknowledges it (``accepted(_:active:)``); a worker that dies or refuses before
/// then has its connections sent to another worker.
package enum WorkerMessage: Equatable, Sendable {
    /// Dispatcher → worker: connections, their descriptors attached in the same order.
    case connections([HandedConnection])
    /// Dispatcher → worker: take no more connections; finish the open ones and exit.
    case stop
    /// Dispatcher → worker, before it closes the channel of a worker that stalled: the connections
    /// the worker has not acknowledged went to other workers; close them unserved and go.
    case takenBack
    /// Worker → dispatcher: these connections arrived and are the worker's now. `active` is how many
    /// connections the worker has open, for least-loaded dispatch and backpressure (0 if unknown).
    case accepted([UInt64], active: UInt32)
    /// Worker → dispatcher: these connections are not wanted; the worker has closed its copies
    /// without touching them, and the dispatcher sends them elsewhere.
    case refused([UInt64])
    /// Worker → dispatcher: how many connections the worker has open now.
    case load(active: UInt32)
    /// Worker → dispatcher: the worker is ready to serve.
    case ready
    /// Worker → dispatcher, with one descriptor attached: a connected stream socket the dispatcher
    /// writes one byte to after each message it sends, so that a worker can wait on it with an
    /// event loop that reads (SwiftNIO's) while the messages, and their descriptors, stay on the
    /// channel.
    case doorbell
    /// Worker → dispatcher: send no more connections; the dispatcher answers with ``stop`` once
    /// it has sent its last one (the worker is shutting down gracefully).
    case leaving

    /// The protocol version this build speaks.
    package static let version: UInt8 = 1
    /// The longest message either side sends (64 connections with long addresses fit).
    package static let maximumLength = 65536
    /// The most connections in one ``connections(_:)`` message.
    package static let maximumBatch = 64

    package enum TypeCode: UInt8 {
        case connections = 0x21
        case stop = 0x22
        case takenBack = 0x23
        case accepted = 0x31
        case refused = 0x32
        case load = 0x33
        case ready = 0x34
        case doorbell = 0x35
        case leaving = 0x36
    }

    package var bytes: [UInt8] {
        var writer = ByteWriter(capacity: 64)
        writer.write(Self.version)
        switch self {
        case .connections(let connections):
            writer.write(TypeCode.connections.rawValue)
            writer.write(UInt16(connections.count))
            for connection in connections { connection.write(to: &writer) }
        case .stop:
            writer.write(TypeCode.stop.rawValue)
        case .takenBack:
            writer.write(TypeCode.takenBack.rawValue)
        case .accepted(let ids, let active):
            writer.write(TypeCode.accepted.rawValue)
            writer.write(active)
            writer.write(UInt16(ids.count))
            for id in ids { writer.write(id) }
        case .refused(let ids):
            writer.write(TypeCode.refused.rawValue)
            writer.write(UInt16(ids.count))
            for id in ids { writer.write(id) }
        case .load(let active):
            writer.write(TypeCode.load.rawValue)
            writer.write(active)
        case .ready:
            writer.write(TypeCode.ready.rawValue)
        case .doorbell:
            writer.write(TypeCode.doorbell.rawValue)
        case .leaving:
            writer.write(TypeCode.leaving.rawValue)
        }
        return writer.bytes
    }

    package init(bytes: [UInt8]) throws(SocketShareError) {
        var reader = ByteReader(bytes, operation: "decode worker message")
        let version: UInt8 = try reader.read(field: "version")
        guard version == Self.version else {
            throw SocketShareError(
                .protocolViolation, operation: "decode worker message",
                detail: "protocol version \(version) is not supported (this side speaks version \(Self.version))")
        }
        let code: UInt8 = try reader.read(field: "type")
        guard let type = TypeCode(rawValue: code) else {
            throw SocketShareError(.protocolViolation, operation: "decode worker message", detail: "field type: \(code) is not a message type")
        }
        func ids() throws(SocketShareError) -> [UInt64] {
            let count = Int(try reader.read(UInt16.self, field: "count"))
            var ids: [UInt64] = []
            for _ in 0..<count { ids.append(try reader.read(field: "id")) }
            return ids
        }
        switch type {
        case .connections:
            let count = Int(try reader.read(UInt16.self, field: "count"))
            guard count <= Self.maximumBatch else { throw reader.invalid("count", "\(count) connections; at most \(Self.maximumBatch)") }
            var connections: [HandedConnection] = []
            for _ in 0..<count { connections.append(try HandedConnection(from: &reader)) }
            self = .connections(connections)
        case .stop:
            self = .stop
        case .takenBack:
            self = .takenBack
        case .accepted:
            let active: UInt32 = try reader.read(field: "active")
            self = .accepted(try ids(), active: active)
        case .refused:
            self = .refused(try ids())
        case .load:
            self = .load(active: try reader.read(field: "active"))
        case .ready:
            self = .ready
        case .doorbell:
            self = .doorbell
        case .leaving:
            self = .leaving
        }
        try reader.expectEnd("the \(type) message")
    }
}

/// One connection as the dispatcher describes it to a worker (its descriptor travels alongside).
package struct HandedConnection: Equatable, Sendable {
    /// The dispatcher's id for it, which acknowledgements and refusals name.
    package var id: UInt64
    /// The name of the listener that accepted it (`--listen NAME=ADDR`).
    package var listenerName: String
    /// The peer's address as text (`127.0.0.1:50312`, `[::1]:50312`, `unix:(unnamed)`).
    package var peerAddress: String
    /// The local address as text.
    package var localAddress: String

    package func write(to writer: inout ByteWriter) {
        writer.write(id)
        for text in [listenerName, peerAddress, localAddress] { writer.writeShortText(text) }
    }

    package init(id: UInt64, listenerName: String, peerAddress: String, localAddress: String) {
        self.id = id
        self.listenerName = listenerName
        self.peerAddress = peerAddress
        self.localAddress = localAddress
    }

    package init(from reader: inout ByteReader) throws(SocketShareError) {
        id = try reader.read(field: "id")
        listenerName = try reader.readShortText(field: "listenerName")
        peerAddress = try reader.readShortText(field: "peerAddress")
        localAddress = try reader.readShortText(field: "localAddress")
    }
}
