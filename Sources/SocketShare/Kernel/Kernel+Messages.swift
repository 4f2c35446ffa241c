import CSocketShare
import Glibc

extension Kernel {
    /// The most descriptors we put in one message. The kernel allows 253 (`SCM_MAX_FD`); HAProxy
    /// learned on musl to stay one below, and so do we.
    static let maximumDescriptorsPerMessage = 252

    /// What one `recvmsg` delivered.
    struct ReceivedMessage {
        /// Bytes of data placed in the buffer.
        var byteCount: Int
        /// Descriptors that arrived, already close-on-exec. The caller owns them.
        var descriptors: [CInt]
        /// The `msg_flags` the kernel returned.
        var flags: CInt
    }

    /// `sendmsg(2)` of `bytes` plus `descriptors` as one `SCM_RIGHTS` message, with `MSG_NOSIGNAL`.
    ///
    /// Returns the bytes sent; on a `SOCK_SEQPACKET` socket that is all of them or an error.
    static func sendMessage(
        _ fd: CInt, _ bytes: UnsafeRawBufferPointer, descriptors: [CInt], flags: CInt = 0
    ) throws(SocketShareError) -> Int {
        precondition(descriptors.count <= maximumDescriptorsPerMessage, "at most 252 descriptors per message")
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        let dataLength = descriptors.count * MemoryLayout<CInt>.size
        let controlLength = descriptors.isEmpty ? 0 : cs_cmsg_space(dataLength)
        let control = UnsafeMutableRawPointer.allocate(
            byteCount: max(controlLength, 1), alignment: MemoryLayout<cmsghdr>.alignment)
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0, count: max(controlLength, 1))

        return try withUnsafeMutablePointer(to: &iov) { (iovPointer) throws(SocketShareError) -> Int in
            var message = msghdr()
            message.msg_iov = iovPointer
            message.msg_iovlen = 1
            if !descriptors.isEmpty {
                message.msg_control = control
                message.msg_controllen = controlLength
                let header = cs_cmsg_firsthdr(&message)!
                header.pointee.cmsg_level = SOL_SOCKET
                header.pointee.cmsg_type = rightsType
                header.pointee.cmsg_len = cs_cmsg_len(dataLength)
                let data = UnsafeMutableRawPointer(cs_cmsg_data(header)!)
                for (index, descriptor) in descriptors.enumerated() {
                    data.storeBytes(of: descriptor, toByteOffset: index * MemoryLayout<CInt>.size, as: CInt.self)
                }
            }
            return try retrying("sendmsg") { Glibc.sendmsg(fd, &message, flags | noSignal) }
        }
    }

    /// `recvmsg(2)` with `MSG_CMSG_CLOEXEC`, parsing every control header.
    ///
    /// Room is made for `maximumDescriptors` descriptors. When the kernel had more to give
    /// (`MSG_CTRUNC`) or the data did not fit (`MSG_TRUNC`), every descriptor that did arrive is
    /// closed and the call throws, so nothing leaks. Returns nil on `EAGAIN` when `flags` holds
    /// `MSG_DONTWAIT` or the socket is non-blocking.
    static func receiveMessage(
        _ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, maximumDescriptors: Int, flags: CInt = 0
    ) throws(SocketShareError) -> ReceivedMessage? {
        var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        let controlLength = cs_cmsg_space(max(maximumDescriptors, 1) * MemoryLayout<CInt>.size)
        let control = UnsafeMutableRawPointer.allocate(
            byteCount: controlLength, alignment: MemoryLayout<cmsghdr>.alignment)
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0, count: controlLength)

        return try withUnsafeMutablePointer(to: &iov) { (iovPointer) throws(SocketShareError) -> ReceivedMessage? in
            var message = msghdr()
            message.msg_iov = iovPointer
            message.msg_iovlen = 1
            message.msg_control = control
            message.msg_controllen = controlLength
            var count: Int
            while true {
                count = Glibc.recvmsg(fd, &message, flags | cmsgCloseOnExec)
                if count >= 0 { break }
                let error = Glibc.errno
                if error == EINTR { continue }
                if error == EAGAIN { return nil }
                throw SocketShareError.system("recvmsg", errno: error)
            }
            var descriptors: [CInt] = []
            var header = message.msg_controllen > 0 ? cs_cmsg_firsthdr(&message) : nil
            while let current = header {
                if current.pointee.cmsg_level == SOL_SOCKET && current.pointee.cmsg_type == rightsType {
                    let payload = Int(current.pointee.cmsg_len) - cs_cmsg_len(0)
                    let data = UnsafeRawPointer(cs_cmsg_data(current)!)
                    for index in 0..<(max(payload, 0) / MemoryLayout<CInt>.size) {
                        descriptors.append(
                            data.loadUnaligned(fromByteOffset: index * MemoryLayout<CInt>.size, as: CInt.self))
                    }
                }
                header = cs_cmsg_nxthdr(&message, current)
            }
            let received = ReceivedMessage(byteCount: count, descriptors: descriptors, flags: message.msg_flags)
            if message.msg_flags & controlTruncated != 0 {
                for descriptor in descriptors { try? close(descriptor) }
                throw SocketShareError(
                    .limitReached, operation: "recvmsg",
                    detail: "descriptors were cut off (MSG_CTRUNC): room for \(maximumDescriptors), "
                        + "\(descriptors.count) arrived and were closed; the rest were lost")
            }
            if message.msg_flags & dataTruncated != 0 {
                for descriptor in descriptors { try? close(descriptor) }
                throw SocketShareError(
                    .protocolViolation, operation: "recvmsg",
                    detail: "message longer than \(buffer.count) bytes (MSG_TRUNC); its \(descriptors.count) "
                        + "descriptors were closed")
            }
            return received
        }
    }
}
