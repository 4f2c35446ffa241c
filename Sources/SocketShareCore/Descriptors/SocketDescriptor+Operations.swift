import Glibc

extension SocketDescriptor {
    /// Creates a close-on-exec socket.
    ///
    /// The corresponding C function is `socket(2)` with `SOCK_CLOEXEC`.
    public static func socket(
        _ family: SocketFamily, _ kind: SocketKind, protocol number: CInt = 0
    ) throws(SocketShareError) -> SocketDescriptor {
        SocketDescriptor(taking: try Kernel.socket(domain: family.addressFamily, type: kind.socketType, protocol: number))
    }

    /// Creates a socket bound to `address`; stream and seqpacket sockets also listen.
    ///
    /// IP sockets get `SO_REUSEADDR`. Port 0 picks a free port: read it back from ``socketDescription()``.
    /// A Unix path must not exist yet; the caller owns it and unlinks it when done.
    ///
    /// - Parameters:
    ///   - address: Where to bind: an IPv4, IPv6 or Unix-path address.
    ///   - kind: Stream (the default), datagram or seqpacket.
    ///   - backlog: The `listen(2)` backlog for stream and seqpacket sockets.
    public static func listening(
        on address: SocketAddress, kind: SocketKind = .stream, backlog: CInt = 511
    ) throws(SocketShareError) -> SocketDescriptor {
        let family = try SocketFamily(addressFamily: address.family)
        let socket = try socket(family, kind)
        do throws(SocketShareError) {
            if family != .unix { try socket.setOption(SOL_SOCKET, SO_REUSEADDR, 1) }
            if family == .inet6 { try socket.setOption(CInt(IPPROTO_IPV6), IPV6_V6ONLY, 1) }
            try Kernel.bind(socket.rawValue, to: address)
            if kind != .datagram { try Kernel.listen(socket.rawValue, backlog: backlog) }
            return socket
        } catch {
            try? socket.close()
            throw error
        }
    }

    /// Creates a socket connected to `address`.
    public static func connected(to address: SocketAddress, kind: SocketKind = .stream) throws(SocketShareError) -> SocketDescriptor {
        let socket = try socket(try SocketFamily(addressFamily: address.family), kind)
        do throws(SocketShareError) {
            try Kernel.connect(socket.rawValue, to: address)
            return socket
        } catch {
            try? socket.close()
            throw error
        }
    }

    /// Creates a connected pair of Unix sockets (`socketpair(2)`), both close-on-exec.
    public static func pair(kind: SocketKind = .stream) throws(SocketShareError) -> (SocketDescriptor, SocketDescriptor) {
        let (first, second) = try Kernel.socketPair(domain: AF_UNIX, type: kind.socketType)
        return (SocketDescriptor(taking: first), SocketDescriptor(taking: second))
    }

    /// Accepts a connection; the new descriptor is close-on-exec. Returns nil when the listener is
    /// non-blocking and no connection is pending.
    ///
    /// The corresponding C function is `accept4(2)` with `SOCK_CLOEXEC`.
    ///
    /// - Parameter interruptible: When true, a signal arriving while it waits makes it throw
    ///   `EINTR` (so a thread can be told to stop); otherwise it waits on.
    public func accept(interruptible: Bool = false) throws(SocketShareError) -> SocketDescriptor? {
        try Kernel.accept(rawValue, interruptible: interruptible).map { SocketDescriptor(taking: $0) }
    }

    /// Sends bytes (`send(2)` with `MSG_NOSIGNAL`); returns how many were sent.
    @discardableResult
    public func send(_ bytes: [UInt8]) throws(SocketShareError) -> Int {
        try bytes.withBytes { (buffer) throws(SocketShareError) in
            try Kernel.retrying("send") { Glibc.send(rawValue, buffer.baseAddress, buffer.count, Kernel.noSignal) }
        }
    }

    /// Sends all of `bytes`, continuing after short sends.
    public func sendAll(_ bytes: [UInt8]) throws(SocketShareError) {
        var offset = 0
        while offset < bytes.count { offset += try send(Array(bytes[offset...])) }
    }

    /// Receives up to `maximumCount` bytes (`recv(2)`); an empty result means the peer closed.
    public func receive(maximumCount: Int = 65536) throws(SocketShareError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: maximumCount)
        let count = try buffer.withMutableBytes { (raw) throws(SocketShareError) in
            try Kernel.retrying("recv") { Glibc.recv(rawValue, raw.baseAddress, raw.count, 0) }
        }
        return Array(buffer[0..<count])
    }

    /// Waits until the descriptor is readable (or has an error or hang-up) or `deadline` passes.
    ///
    /// - Returns: false when the deadline passed first.
    public func waitUntilReadable(deadline: ContinuousClock.Instant?) throws(SocketShareError) -> Bool {
        var fds = [pollfd(fd: rawValue, events: Int16(POLLIN), revents: 0)]
        return try Kernel.poll(&fds, deadline: deadline) > 0
    }

    /// Reads an `int` socket option (`getsockopt(2)`).
    public func option(_ level: CInt, _ name: CInt) throws(SocketShareError) -> CInt {
        try Kernel.socketOption(rawValue, level, name)
    }

    /// Sets an `int` socket option (`setsockopt(2)`). Socket options belong to the socket, so every
    /// descriptor of it, in every process, sees the new value.
    public func setOption(_ level: CInt, _ name: CInt, _ value: CInt) throws(SocketShareError) {
        try Kernel.setSocketOption(rawValue, level, name, value)
    }

    /// Sets or clears `O_NONBLOCK`. This flag lives in the open file description that every
    /// process holding this socket shares: it changes for all of them.
    public func setNonBlocking(_ on: Bool) throws(SocketShareError) {
        try Kernel.setNonBlocking(rawValue, on)
    }

    /// Shuts down reading, writing or both (`shutdown(2)`), for every holder of the socket.
    public func shutdown(_ how: CInt = CInt(SHUT_RDWR)) throws(SocketShareError) {
        try Kernel.shutdown(rawValue, how)
    }
}

extension SocketDescriptor {
    /// Makes descriptor number `number` a copy of this socket *without* close-on-exec, for a program
    /// about to be exec'd (`dup3(2)`; when the numbers are equal, close-on-exec is cleared instead).
    ///
    /// Whatever `number` referred to before is closed. The returned descriptor owns `number`; this
    /// one is unchanged.
    public func place(at number: CInt) throws(SocketShareError) -> SocketDescriptor {
        guard number >= 0 else {
            throw SocketShareError(.invalidArgument, operation: "place descriptor", detail: "\(number) is not a descriptor number")
        }
        if number == rawValue {
            try Kernel.setCloseOnExec(number, false)
            return self
        }
        try Kernel.duplicate(rawValue, onto: number, closeOnExec: false)
        return SocketDescriptor(taking: number)
    }
}
