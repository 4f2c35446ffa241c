import CSocketShare
import Glibc

extension Kernel {
    /// The most descriptors we put in one message. The kernel allows 253 (`SCM_MAX_FD`); HAProxy
    /// learned on musl to stay one below, and so do we.
    package static let maximumDescriptorsPerMessage = 252

    /// What one `recvmsg` delivered.
    package struct ReceivedMessage {
        /// Bytes of data placed in the buffer.
        package var byteCount: Int
        /// Descriptors that arrived, already close-on-exec. The caller owns them.
        package var descriptors: [CInt]
        /// The `msg_flags` the kernel returned.
        package var flags: CInt
    }

    /// `sendmsg(2)` of `bytes` plus `descriptors` as one `SCM_RIGHTS` message, with `MSG_NOSIGNAL`.
    ///
    /// Returns the bytes sent; on a `SOCK_SEQPACKET` socket that is all of them or an error.
    package static func sendMessage(
        _ fd: CInt, _ bytes: UnsafeRawBufferPointer, descriptors: [CInt], flags: CInt = 0
    ) throws(SocketShareError) -> Int {
        precondition(descriptors.count <= maximumDescriptorsPerMessage, "at most 252 descriptors per message")
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        let dataLength = descriptors.count * MemoryLayout<CInt>.size
        let controlLength = descriptors.isEmpty ? 0 : cs_cmsg_space(dataLength)
        // The control buffer lives on the stack: one message's worth, built fresh each time.
        let result = withUnsafeTemporaryAllocation(
            byteCount: max(controlLength, 1), alignment: MemoryLayout<cmsghdr>.alignment
        ) { control -> (Int, CInt) in
            withUnsafeMutablePointer(to: &iov) { iovPointer -> (Int, CInt) in
                var message = msghdr()
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                if !descriptors.isEmpty {
                    control.initializeMemory(as: UInt8.self, repeating: 0)
                    message.msg_control = control.baseAddress
                    message.msg_controllen = controlLength
                    let header = cs_cmsg_firsthdr(&message)!
                    header.pointee.cmsg_level = SOL_SOCKET
                    header.pointee.cmsg_type = rightsType
                    header.pointee.cmsg_len = cs_cmsg_len(dataLength)
                    let data = UnsafeMutableRawPointer(cs_cmsg_data(header)!)
                    descriptors.withUnsafeBytes { data.copyMemory(from: $0.baseAddress!, byteCount: dataLength) }
                }
                while true {
                    let sent = Glibc.sendmsg(fd, &message, flags | noSignal)
                    if sent >= 0 { return (sent, 0) }
                    if Glibc.errno != EINTR { return (-1, Glibc.errno) }
                }
            }
        }
        if result.0 < 0 { throw SocketShareError.system("sendmsg", errno: result.1) }
        return result.0
    }

    /// `recvmsg(2)` with `MSG_CMSG_CLOEXEC`, parsing every control header.
    ///
    /// Room is made for `maximumDescriptors` descriptors. When the kernel had more to give
    /// (`MSG_CTRUNC`) or the data did not fit (`MSG_TRUNC`), every descriptor that did arrive is
    /// closed and the call throws, so nothing leaks. Returns nil on `EAGAIN` when `flags` holds
    /// `MSG_DONTWAIT` or the socket is non-blocking.
    package static func receiveMessage(
        _ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, maximumDescriptors: Int, flags: CInt = 0
    ) throws(SocketShareError) -> ReceivedMessage? {
        var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        let controlLength = cs_cmsg_space(max(maximumDescriptors, 1) * MemoryLayout<CInt>.size)
        // On the stack, and not zeroed: the kernel says how much it filled (msg_controllen).
        let outcome = withUnsafeTemporaryAllocation(
            byteCount: controlLength, alignment: MemoryLayout<cmsghdr>.alignment
        ) { control -> (ReceivedMessage?, CInt) in
            withUnsafeMutablePointer(to: &iov) { iovPointer -> (ReceivedMessage?, CInt) in
                var message = msghdr()
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                message.msg_control = control.baseAddress
                message.msg_controllen = controlLength
                var count: Int
                while true {
                    count = Glibc.recvmsg(fd, &message, flags | cmsgCloseOnExec)
                    if count >= 0 { break }
                    let error = Glibc.errno
                    if error == EINTR { continue }
                    if error == EAGAIN { return (nil, 0) }
                    return (nil, error)
                }
                var descriptors: [CInt] = []
                var header = message.msg_controllen > 0 ? cs_cmsg_firsthdr(&message) : nil
                while let current = header {
                    if current.pointee.cmsg_level == SOL_SOCKET && current.pointee.cmsg_type == rightsType {
                        let payload = Int(current.pointee.cmsg_len) - cs_cmsg_len(0)
                        let data = UnsafeRawPointer(cs_cmsg_data(current)!)
                        let found = max(payload, 0) / MemoryLayout<CInt>.size
                        descriptors.reserveCapacity(descriptors.count + found)
                        for index in 0..<found {
                            descriptors.append(data.loadUnaligned(fromByteOffset: index * MemoryLayout<CInt>.size, as: CInt.self))
                        }
                    }
                    header = cs_cmsg_nxthdr(&message, current)
                }
                return (ReceivedMessage(byteCount: count, descriptors: descriptors, flags: message.msg_flags), 0)
            }
        }
        if outcome.1 != 0 { throw SocketShareError.system("recvmsg", errno: outcome.1) }
        guard let received = outcome.0 else { return nil }
        if received.flags & controlTruncated != 0 {
            for descriptor in received.descriptors { try? close(descriptor) }
            throw SocketShareError(
                .limitReached, operation: "recvmsg",
                detail: "descriptors were cut off (MSG_CTRUNC): room for \(maximumDescriptors), "
                    + "\(received.descriptors.count) arrived and were closed; the rest were lost",
                cause: .descriptorsTruncated)
        }
        if received.flags & dataTruncated != 0 {
            for descriptor in received.descriptors { try? close(descriptor) }
            throw SocketShareError(
                .protocolViolation, operation: "recvmsg",
                detail: "message longer than \(buffer.count) bytes (MSG_TRUNC); its \(received.descriptors.count) "
                    + "descriptors were closed",
                cause: .messageTooLong)
        }
        return received
    }
}
