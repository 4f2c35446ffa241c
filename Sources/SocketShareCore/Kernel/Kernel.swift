import CSocketShare
import Glibc
import SystemPackage

/// The kernel layer: one thin wrapper per system call, EINTR-safe, throwing ``SocketShareError``.
///
/// Every descriptor created here is close-on-exec (`SOCK_CLOEXEC`, `O_CLOEXEC`, `MSG_CMSG_CLOEXEC`,
/// `F_DUPFD_CLOEXEC`); only ``ProcessSpawner`` places descriptors in a child, at exact numbers.
/// Callers own the returned raw descriptors and wrap them in ``SocketDescriptor`` at once.
package enum Kernel {
    /// Runs `body` until it returns something other than -1 with `EINTR`.
    @inline(__always)
    package static func retrying<T: FixedWidthInteger>(
        _ operation: String, _ detail: @autoclosure () -> String = "", _ body: () -> T
    ) throws(SocketShareError) -> T {
        while true {
            let result = body()
            if result != -1 { return result }
            let error = Glibc.errno
            if error == EINTR { continue }
            throw SocketShareError.system(operation, errno: error, detail: detail())
        }
    }

    // MARK: Constants that Glibc imports as enums

    package static let streamType = CInt(SOCK_STREAM.rawValue)
    package static let datagramType = CInt(SOCK_DGRAM.rawValue)
    package static let seqpacketType = CInt(SOCK_SEQPACKET.rawValue)
    package static let closeOnExecType = CInt(SOCK_CLOEXEC.rawValue)
    package static let nonBlockingType = CInt(SOCK_NONBLOCK.rawValue)
    package static let noSignal = CInt(MSG_NOSIGNAL)
    package static let cmsgCloseOnExec = CInt(MSG_CMSG_CLOEXEC)
    package static let controlTruncated = CInt(MSG_CTRUNC)
    package static let dataTruncated = CInt(MSG_TRUNC)
    package static let dontWait = CInt(MSG_DONTWAIT)
    package static let rightsType = CInt(SCM_RIGHTS)

    // MARK: Sockets

    /// `socket(2)` with `SOCK_CLOEXEC` always added.
    package static func socket(domain: CInt, type: CInt, protocol proto: CInt = 0) throws(SocketShareError) -> CInt {
        try retrying("socket") { Glibc.socket(domain, type | closeOnExecType, proto) }
    }

    /// `socketpair(2)` with `SOCK_CLOEXEC` always added.
    package static func socketPair(domain: CInt, type: CInt) throws(SocketShareError) -> (CInt, CInt) {
        var pair: [CInt] = [-1, -1]
        _ = try retrying("socketpair") { Glibc.socketpair(domain, type | closeOnExecType, 0, &pair) }
        return (pair[0], pair[1])
    }

    /// `bind(2)`.
    package static func bind(_ fd: CInt, to address: SocketAddress) throws(SocketShareError) {
        try address.withSockAddr { (pointer, length) throws(SocketShareError) in
            _ = try retrying("bind", "\(address)") { Glibc.bind(fd, pointer, length) }
        }
    }

    /// `listen(2)`.
    package static func listen(_ fd: CInt, backlog: CInt) throws(SocketShareError) {
        _ = try retrying("listen") { Glibc.listen(fd, backlog) }
    }

    /// `connect(2)`. On a blocking socket an interrupted connect completes in the background, so
    /// `EINTR` is followed by waiting for writability rather than by calling connect again.
    package static func connect(_ fd: CInt, to address: SocketAddress) throws(SocketShareError) {
        try address.withSockAddr { (pointer, length) throws(SocketShareError) in
            if Glibc.connect(fd, pointer, length) == 0 { return }
            let error = Glibc.errno
            guard error == EINTR || error == EINPROGRESS else {
                throw SocketShareError.system("connect", errno: error, detail: "to \(address)")
            }
            var pfd = [pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)]
            _ = try poll(&pfd, deadline: nil)
            let pending = try socketOption(fd, SOL_SOCKET, SO_ERROR)
            if pending != 0 { throw SocketShareError.system("connect", errno: pending, detail: "to \(address)") }
        }
    }

    /// `accept4(2)` with `SOCK_CLOEXEC` always added. Returns nil on `EAGAIN` (non-blocking listener).
    /// With `interruptible`, a signal makes it throw `EINTR` instead of trying again.
    package static func accept(_ fd: CInt, flags: CInt = 0, interruptible: Bool = false) throws(SocketShareError) -> CInt? {
        while true {
            let result = cs_accept4(fd, nil, nil, flags | closeOnExecType)
            if result >= 0 { return result }
            let error = Glibc.errno
            switch error {
            case EINTR where interruptible: throw SocketShareError.system("accept4", errno: error)
            case EINTR, ECONNABORTED: continue
            case EAGAIN: return nil
            default: throw SocketShareError.system("accept4", errno: error)
            }
        }
    }

    /// `accept4(2)` with `SOCK_CLOEXEC`, returning the peer's address too (one call instead of two).
    /// Returns nil on `EAGAIN`.
    package static func acceptWithPeer(_ fd: CInt, flags: CInt = 0) throws(SocketShareError) -> (CInt, SocketAddress?)? {
        var storage = sockaddr_storage()
        while true {
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let result = withUnsafeMutablePointer(to: &storage) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { cs_accept4(fd, $0, &length, flags | closeOnExecType) }
            }
            if result >= 0 { return (result, try? SocketAddress(storage: storage, length: length)) }
            let error = Glibc.errno
            switch error {
            case EINTR, ECONNABORTED: continue
            case EAGAIN: return nil
            default: throw SocketShareError.system("accept4", errno: error)
            }
        }
    }

    /// `getsockopt(2)` for an `int` option.
    package static func socketOption(_ fd: CInt, _ level: CInt, _ name: CInt) throws(SocketShareError) -> CInt {
        var value: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        _ = try retrying("getsockopt") { Glibc.getsockopt(fd, level, name, &value, &length) }
        return value
    }

    /// `setsockopt(2)` for an `int` option.
    package static func setSocketOption(_ fd: CInt, _ level: CInt, _ name: CInt, _ value: CInt) throws(SocketShareError) {
        var value = value
        _ = try retrying("setsockopt") {
            Glibc.setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<CInt>.size))
        }
    }

    /// `getsockname(2)`.
    package static func localAddress(_ fd: CInt) throws(SocketShareError) -> SocketAddress {
        try SocketAddress.reading(operation: "getsockname") { Glibc.getsockname(fd, $0, $1) }
    }

    /// `getpeername(2)`; nil when the socket is not connected.
    package static func peerAddress(_ fd: CInt) throws(SocketShareError) -> SocketAddress? {
        do throws(SocketShareError) {
            return try SocketAddress.reading(operation: "getpeername") { Glibc.getpeername(fd, $0, $1) }
        } catch where error.errno?.rawValue == ENOTCONN {
            return nil
        }
    }

    /// `getsockopt(SO_PEERCRED)`: pid, uid and gid of the peer at connect time.
    package static func peerCredentials(_ fd: CInt) throws(SocketShareError) -> (pid: pid_t, uid: uid_t, gid: gid_t) {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        _ = try retrying("getsockopt(SO_PEERCRED)") { cs_getpeercred(fd, &pid, &uid, &gid) }
        return (pid, uid, gid)
    }

    /// `getsockopt(SO_PEERPIDFD)` (Linux 6.5): a pidfd of the peer; nil where the kernel lacks it.
    package static func peerProcessDescriptor(_ fd: CInt) throws(SocketShareError) -> CInt? {
        var value: CInt = -1
        var length = socklen_t(MemoryLayout<CInt>.size)
        while true {
            if Glibc.getsockopt(fd, SOL_SOCKET, CS_SO_PEERPIDFD, &value, &length) == 0 { return value }
            let error = Glibc.errno
            switch error {
            case EINTR: continue
            case ENOPROTOOPT, EINVAL: return nil
            default: throw SocketShareError.system("getsockopt(SO_PEERPIDFD)", errno: error)
            }
        }
    }

    /// `shutdown(2)`.
    package static func shutdown(_ fd: CInt, _ how: CInt) throws(SocketShareError) {
        _ = try retrying("shutdown") { Glibc.shutdown(fd, how) }
    }

    // MARK: Descriptors

    /// `close(2)`. On Linux the descriptor is released even when close reports `EINTR`, so that is not retried.
    package static func close(_ fd: CInt) throws(SocketShareError) {
        if Glibc.close(fd) == 0 { return }
        let error = Glibc.errno
        if error == EINTR { return }
        if error == EBADF { preconditionFailure("close(\(fd)): EBADF, a descriptor was closed twice") }
        throw SocketShareError.system("close", errno: error)
    }

    /// `fcntl(F_DUPFD_CLOEXEC)`: a close-on-exec duplicate numbered `minimum` or above.
    package static func duplicate(_ fd: CInt, minimum: CInt = 0) throws(SocketShareError) -> CInt {
        try retrying("fcntl(F_DUPFD_CLOEXEC)", "descriptor \(fd)") { Glibc.fcntl(fd, F_DUPFD_CLOEXEC, minimum) }
    }

    /// `dup3(2)`: makes `target` a copy of `fd`, with close-on-exec when `closeOnExec` is set.
    package static func duplicate(_ fd: CInt, onto target: CInt, closeOnExec: Bool) throws(SocketShareError) {
        if fd == target {
            try setCloseOnExec(fd, closeOnExec)
            return
        }
        _ = try retrying("dup3", "\(fd) onto \(target)") { cs_dup3(fd, target, closeOnExec ? CInt(O_CLOEXEC) : 0) }
    }

    /// `fcntl(F_GETFD)`: the descriptor flags, or nil when `fd` is not open.
    package static func descriptorFlags(_ fd: CInt) -> CInt? {
        let flags = Glibc.fcntl(fd, F_GETFD)
        return flags < 0 ? nil : flags
    }

    /// Sets or clears `FD_CLOEXEC`.
    package static func setCloseOnExec(_ fd: CInt, _ on: Bool) throws(SocketShareError) {
        let flags = try retrying("fcntl(F_GETFD)") { Glibc.fcntl(fd, F_GETFD) }
        let wanted = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC
        if wanted != flags { _ = try retrying("fcntl(F_SETFD)") { Glibc.fcntl(fd, F_SETFD, wanted) } }
    }

    /// `fcntl(F_GETFL)`: the open-file-description status flags (`O_NONBLOCK` among them).
    package static func statusFlags(_ fd: CInt) throws(SocketShareError) -> CInt {
        try retrying("fcntl(F_GETFL)") { Glibc.fcntl(fd, F_GETFL) }
    }

    /// Sets or clears `O_NONBLOCK` on the open file description, which every holder shares.
    package static func setNonBlocking(_ fd: CInt, _ on: Bool) throws(SocketShareError) {
        let flags = try statusFlags(fd)
        let wanted = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        if wanted != flags { _ = try retrying("fcntl(F_SETFL)") { Glibc.fcntl(fd, F_SETFL, wanted) } }
    }

    /// `fstat(2)`.
    package static func status(_ fd: CInt) throws(SocketShareError) -> stat {
        var info = stat()
        _ = try retrying("fstat", "descriptor \(fd)") { Glibc.fstat(fd, &info) }
        return info
    }

    /// `pipe2(O_CLOEXEC)`: (read end, write end).
    package static func pipe() throws(SocketShareError) -> (read: CInt, write: CInt) {
        var ends: [CInt] = [-1, -1]
        _ = try retrying("pipe2") { cs_pipe2(&ends, CInt(O_CLOEXEC)) }
        return (ends[0], ends[1])
    }

    /// `read(2)`; 0 means end of file.
    package static func read(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer) throws(SocketShareError) -> Int {
        try retrying("read") { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }

    /// Writes all of `bytes`, continuing after short writes.
    package static func writeAll(_ fd: CInt, _ bytes: UnsafeRawBufferPointer) throws(SocketShareError) {
        var offset = 0
        while offset < bytes.count {
            offset += try retrying("write") {
                Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            }
        }
    }

    /// `poll(2)` until an event or `deadline` (nil waits forever); EINTR recomputes the remaining time.
    /// Returns the number of descriptors with events; 0 means the deadline passed.
    package static func poll(_ fds: inout [pollfd], deadline: ContinuousClock.Instant?) throws(SocketShareError) -> Int {
        while true {
            let timeout = deadline.map { milliseconds(until: $0) } ?? -1
            let result = Glibc.poll(&fds, nfds_t(fds.count), timeout)
            if result >= 0 { return Int(result) }
            let error = Glibc.errno
            if error == EINTR { continue }
            throw SocketShareError.system("poll", errno: error)
        }
    }

    /// Milliseconds from now until `deadline`, rounded up, at least 0, at most `Int32.max`.
    package static func milliseconds(until deadline: ContinuousClock.Instant) -> CInt {
        let remaining = ContinuousClock.now.duration(to: deadline)
        if remaining <= .zero { return 0 }
        let (seconds, attoseconds) = remaining.components
        let ms = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return CInt(clamping: ms)
    }

    // MARK: Files

    /// `open(2)` with `O_CLOEXEC` always added.
    package static func open(_ path: String, _ flags: CInt, mode: mode_t = 0) throws(SocketShareError) -> CInt {
        try retrying("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    /// Reads a small file (a `/proc` entry) whole. Throws for a missing file.
    package static func readFile(_ path: String, limit: Int = 1 << 20) throws(SocketShareError) -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { try? close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let count = try chunk.withMutableBytes { (buffer) throws(SocketShareError) in
                try read(fd, into: buffer)
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return bytes
    }

    /// `lstat(2)`; nil when nothing exists at `path`.
    package static func linkStatus(_ path: String) throws(SocketShareError) -> stat? {
        var info = stat()
        while Glibc.lstat(path, &info) != 0 {
            let error = Glibc.errno
            if error == EINTR { continue }
            if error == ENOENT { return nil }
            throw SocketShareError.system("lstat", errno: error, detail: path)
        }
        return info
    }

    /// `unlink(2)`; a missing file is not an error.
    package static func unlink(_ path: String) {
        _ = Glibc.unlink(path)
    }

    /// `readlink(2)`; nil when it fails.
    package static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = Glibc.readlink(path, &buffer, buffer.count - 1)
        guard count >= 0 else { return nil }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: Processes

    /// `pidfd_open(2)`: a close-on-exec pidfd.
    package static func openProcess(_ pid: pid_t) throws(SocketShareError) -> CInt {
        try retrying("pidfd_open", "pid \(pid)") { cs_pidfd_open(pid, 0) }
    }

    /// `pidfd_getfd(2)`: a close-on-exec copy of descriptor `fd` of the process behind `pidfd`.
    package static func pullDescriptor(from pidfd: CInt, _ fd: CInt) throws(SocketShareError) -> CInt {
        try retrying("pidfd_getfd", "descriptor \(fd)") { cs_pidfd_getfd(pidfd, fd, 0) }
    }

    /// Whether the process behind a pidfd has exited: the pidfd polls readable from then on, zombie
    /// or reaped (`pidfd_open(2)`).
    package static func hasExited(pidfd: CInt) -> Bool {
        var fds = [pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)]
        return ((try? poll(&fds, deadline: .now)) ?? 0) > 0
    }

    /// Whether the process behind `pidfd` is still running (`pidfd_send_signal` with signal 0):
    /// `EPERM` means it runs, under a uid this process may not signal; `ESRCH`, that it has exited.
    package static func isAlive(_ pidfd: CInt) -> Bool {
        cs_pidfd_send_signal(pidfd, 0, 0) == 0 || Glibc.errno == EPERM
    }

    /// `kill(2)`.
    package static func signal(_ pid: pid_t, _ signal: CInt) throws(SocketShareError) {
        _ = try retrying("kill", "pid \(pid)") { Glibc.kill(pid, signal) }
    }
}

extension Kernel {
    /// The name in a `readdir(3)` entry, read in place: the kernel's record is only as long as the
    /// name needs, so copying the whole `d_name` array would read past it (AddressSanitizer saw it).
    package static func entryName(_ entry: UnsafeMutablePointer<dirent>) -> String {
        let offset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        return String(cString: (UnsafeRawPointer(entry) + offset).assumingMemoryBound(to: CChar.self))
    }

    /// The names in a directory, without `.` and `..`; empty when it cannot be read.
    package static func directoryEntries(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = entryName(entry)
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Whether a process with this pid exists (`kill(pid, 0)`; `EPERM` means it exists).
    package static func processExists(_ pid: pid_t) -> Bool {
        Glibc.kill(pid, 0) == 0 || Glibc.errno == EPERM
    }
}
