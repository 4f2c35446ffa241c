extension DescriptorChannel {
    // A batch is a run of messages, each `u8 0xB7 | u32 total | u32 offset` plus up to 252
    // descriptors; the receiver collects until offset + count == total.
    private static let batchMarker: UInt8 = 0xB7

    /// Sends any number of descriptors as consecutive messages of at most 252 each.
    ///
    /// The caller keeps its descriptors. An empty batch is one message with none.
    package func sendBatch(_ descriptors: [CInt], deadline: ContinuousClock.Instant? = nil) throws(SocketShareError) {
        guard descriptors.count <= Int(UInt32.max) else {
            throw SocketShareError(.invalidArgument, operation: "send batch", detail: "too many descriptors")
        }
        var offset = 0
        repeat {
            let chunk = Array(descriptors[offset..<min(offset + Self.maximumDescriptorsPerMessage, descriptors.count)])
            var header = ByteWriter(capacity: 9)
            header.write(Self.batchMarker)
            header.write(UInt32(descriptors.count))
            header.write(UInt32(offset))
            try send(header.bytes, descriptors: chunk, deadline: deadline)
            offset += chunk.count
        } while offset < descriptors.count
    }

    /// Receives a batch sent with ``sendBatch(_:deadline:)``, in order.
    ///
    /// - Throws: ``SocketShareError`` with code `protocolViolation` when a message does not continue
    ///   the batch, or `holderGone` when the peer closes in the middle; every descriptor received so
    ///   far is closed first.
    package func receiveBatch(deadline: ContinuousClock.Instant? = nil) throws(SocketShareError) -> [SocketDescriptor] {
        var collected: [SocketDescriptor] = []
        var expected: Int? = nil
        do throws(SocketShareError) {
            repeat {
                guard let message = try receive(maximumBytes: 64, deadline: deadline) else {
                    throw SocketShareError(
                        .holderGone, operation: "receive batch",
                        detail: "the peer closed after \(collected.count) of \(expected.map(String.init) ?? "?") descriptors")
                }
                let arrived = message.takeDescriptors()
                collected.append(contentsOf: arrived)
                var reader = ByteReader(message.bytes, operation: "receive batch")
                let marker: UInt8 = try reader.read(field: "marker")
                let total = Int(try reader.read(UInt32.self, field: "total"))
                let offset = Int(try reader.read(UInt32.self, field: "offset"))
                try reader.expectEnd("a batch header")
                guard marker == Self.batchMarker, expected == nil || expected == total,
                      offset == collected.count - arrived.count,
                      collected.count <= total else {
                    throw SocketShareError(
                        .protocolViolation, operation: "receive batch",
                        detail: "message does not continue the batch (total \(total), offset \(offset), have \(collected.count))")
                }
                expected = total
            } while collected.count < expected!
            return collected
        } catch {
            for descriptor in collected { try? descriptor.close() }
            throw error
        }
    }
}
