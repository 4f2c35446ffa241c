import Glibc
import SocketShareCore

/// Winsock's `WSAEventSelect` on Linux: one event registration per *socket*, across every process
/// that holds a descriptor of it.
///
/// Selecting through any descriptor — in this process or another — cancels the registration made
/// before, whichever descriptor made it; selecting the empty set cancels without registering, as
/// `WSAEventSelect(s, NULL, 0)` does. Beyond Winsock, the displaced registration is told:
/// its sequence receives ``EventRecord/displaced(by:)`` and ends. And in **cooperative** mode,
/// processes may hold disjoint events of one socket (A `read`, B `write`) — what the seed says
/// Windows cannot do; an overlapping cooperative request is refused.
///
/// Events are reported the Winsock way: each once, then not again until re-enabled by the call
/// that consumes it — `receive(maximumCount:)` re-enables `read`, `receiveOutOfBand()` `outOfBand`,
/// `accept()` `accept`, and a `send(_:)` that would block re-enables `write`; if the condition
/// still holds when re-enabled (data left unread), the event is reported again at once. Code that
/// calls the kernel itself says so with `reenable(_:)`. `connect` and `close` are reported once.
/// `write` is reported on registration when sending is already possible, as Winsock does. `connect`
/// is reported for a TCP socket that is connecting when selected, or has not connected yet (select,
/// then connect, as Winsock code does); a connect that already failed is reported at once with its
/// error.
///
/// ```swift
/// let selection = try EventSelection(connection, events: [.read, .close])
/// for await record in selection {
///     switch record {
///     case .event(.read, _): process(try selection.receive())
///     case .event(.close, let error): print("closed", error ?? 0)
///     case .displaced(let pid): print("pid \(pid) took this socket's events")
///     default: break
///     }
/// }
/// ```
///
/// The registry lives in the runtime directory (`events/`, `0700`); no daemon is involved. A
/// registrant that crashes leaves no stale lock: the next registration finds it gone and takes over.
public final class EventSelection: AsyncSequence, Sendable {
    /// The sequence's elements.
    public typealias Element = EventRecord

    /// The socket this selection watches (the caller's descriptor; keep it open while selecting).
    public let socket: SocketDescriptor
    /// The events registered.
    public let events: NetworkEvents
    /// Whether this is a cooperative registration.
    public let isCooperative: Bool
    /// The socket's identity (registrations are per socket, by inode).
    public let identity: SocketIdentity

    private let registry: EventRegistry
    private let notice: SocketDescriptor
    private let noticePath: String
    private let wakeRead: CInt
    private let wakeWrite: CInt
    private let state: Locked<State>
    private let stream: AsyncStream<EventRecord>
    private let continuation: AsyncStream<EventRecord>.Continuation

    package struct State {
        /// Events that may be reported now (reported ones wait for re-enabling).
        package var armed: NetworkEvents
        package var ended = false
        package var started = false
        package var connectPhase = ConnectPhase.none
        package var closeReported = false
    }

    /// Where a TCP socket's connect stands, for the `connect` event.
    package enum ConnectPhase {
        /// Connected already, or not a TCP socket: no `connect` event to come.
        case none
        /// Not connected and not connecting: `connect` has not been called yet (checked every 10 ms).
        case notStarted
        /// `SYN_SENT`: the connect is under way (reported on writability).
        case connecting
    }

    /// Registers for `events` on `socket`'s underlying socket, displacing the registration made
    /// before through any descriptor of it (or, when `cooperative`, joining other cooperative
    /// registrations with disjoint events). Records arrive through the sequence.
    ///
    /// - Throws: `SocketShareError` with code `refused` for an overlapping cooperative request, or
    ///   one while an exclusive registration holds the socket; `invalidArgument` when `socket` is
    ///   not a socket.
    public convenience init(
        _ socket: SocketDescriptor, events: NetworkEvents, cooperative: Bool = false
    ) throws(SocketShareError) {
        try self.init(socket, events: events, cooperative: cooperative, handler: nil)
    }

    /// The callback form: `handler` receives each record on the selection's own thread.
    public convenience init(
        _ socket: SocketDescriptor, events: NetworkEvents, cooperative: Bool = false,
        handler: @escaping @Sendable (EventRecord) -> Void
    ) throws(SocketShareError) {
        try self.init(socket, events: events, cooperative: cooperative, handler: .some(handler))
    }

    private init(
        _ socket: SocketDescriptor, events: NetworkEvents, cooperative: Bool, handler: (@Sendable (EventRecord) -> Void)?
    ) throws(SocketShareError) {
        let identity = try SocketIdentity(of: socket.rawValue)
        let registry = try EventRegistry.standard()
        let noticePath = registry.directory + "/\(identity.inode)-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16)).notice"
        let notice = try SocketDescriptor.listening(on: .unix(path: noticePath), kind: .datagram)
        do throws(SocketShareError) {
            try notice.setNonBlocking(true)
            let (read, write) = try Kernel.pipe()
            try Kernel.setNonBlocking(read, true)
            try Kernel.setNonBlocking(write, true)
            wakeRead = read
            wakeWrite = write
        } catch {
            try? notice.close()
            Kernel.unlink(noticePath)
            throw error
        }
        self.socket = socket
        self.events = events
        self.isCooperative = cooperative
        self.identity = identity
        self.registry = registry
        self.notice = notice
        self.noticePath = noticePath
        // The connect phase is taken now, before the caller can call connect.
        var initial = State(armed: events)
        initial.connectPhase = events.contains(.connect) ? Self.connectPhase(socket.rawValue) : .none
        self.state = Locked(initial)
        (stream, continuation) = AsyncStream.makeStream(of: EventRecord.self)

        let me = EventRegistry.Registrant(process: .current, events: events, cooperative: cooperative, noticePath: noticePath)
        let displaced: [EventRegistry.Registrant]
        do throws(SocketShareError) {
            displaced = try registry.register(me, inode: identity.inode)
        } catch {
            try? notice.close()
            Kernel.unlink(noticePath)
            throw error
        }
        for other in displaced { Self.tell(other.noticePath, displacedBy: getpid()) }
        if events.isEmpty {
            end()
            return
        }
        let deliver: @Sendable (EventRecord) -> Void = handler ?? { [continuation] in continuation.yield($0) }
        try DetachedThread.start { [self] in watch(deliver) }
    }

    deinit {
        try? Kernel.close(wakeRead)
        try? Kernel.close(wakeWrite)
    }

    /// An iterator over the records.
    public func makeAsyncIterator() -> AsyncStream<EventRecord>.Iterator {
        stream.makeAsyncIterator()
    }

    /// Ends this registration (others are untouched); the sequence ends.
    public func cancel() {
        state.withLock { $0.ended = true }
        poke()
    }

    /// Arms `events` again after they were reported (call it after consuming them yourself).
    public func reenable(_ events: NetworkEvents) {
        state.withLock { $0.armed.formUnion(events.intersection(self.events).subtracting([.connect, .close])) }
        poke()
    }

    /// Receives data (`recv`) and re-enables `read`, as Winsock's `recv` does.
    public func receive(maximumCount: Int = 65536) throws(SocketShareError) -> [UInt8] {
        defer { reenable(.read) }
        return try socket.receive(maximumCount: maximumCount)
    }

    /// Receives the urgent byte (`recv` with `MSG_OOB`) and re-enables `outOfBand`.
    public func receiveOutOfBand() throws(SocketShareError) -> UInt8? {
        defer { reenable(.outOfBand) }
        var byte: UInt8 = 0
        let count = try Kernel.retrying("recv(MSG_OOB)") { Glibc.recv(socket.rawValue, &byte, 1, CInt(MSG_OOB) | Kernel.dontWait) }
        return count == 1 ? byte : nil
    }

    /// Accepts a connection and re-enables `accept`, as Winsock's `accept` does.
    public func accept() throws(SocketShareError) -> SocketDescriptor? {
        defer { reenable(.accept) }
        return try socket.accept()
    }

    /// Sends without blocking; when the send would block, re-enables `write`, as Winsock does, so
    /// a `write` event tells when to try again. Returns the bytes sent (0 when it would block).
    public func send(_ bytes: [UInt8]) throws(SocketShareError) -> Int {
        do throws(SocketShareError) {
            return try bytes.withBytes { (buffer) throws(SocketShareError) in
                try Kernel.retrying("send") { Glibc.send(socket.rawValue, buffer.baseAddress, buffer.count, Kernel.noSignal | Kernel.dontWait) }
            }
        } catch where error.errno?.rawValue == EAGAIN {
            reenable(.write)
            return 0
        }
    }

    private func poke() {
        var byte: UInt8 = 1
        _ = Glibc.write(wakeWrite, &byte, 1)
    }

    /// Tells the registrant listening at `path` that `pid` displaced it.
    package static func tell(_ path: String, displacedBy pid: pid_t) {
        guard let socket = try? SocketDescriptor.socket(.unix, .datagram) else { return }
        defer { try? socket.close() }
        let text = Array("displaced \(pid)".utf8)
        _ = try? SocketAddress.unix(path: path).withSockAddr { (address, length) throws(SocketShareError) in
            _ = text.withUnsafeBytes { sendto(socket.rawValue, $0.baseAddress, $0.count, Kernel.noSignal, address, length) }
        }
    }

    /// Ends the selection: unregisters (if still registered), removes the notice socket, ends the sequence.
    private func end() {
        state.withLock { $0.ended = true }
        registry.unregister(noticePath: noticePath, inode: identity.inode)
        try? notice.close()
        Kernel.unlink(noticePath)
        continuation.finish()
    }
}

extension EventSelection {
    /// The selection's thread: polls the socket for the armed events, the notice socket and the
    /// wake pipe, and reports.
    private func watch(_ deliver: @Sendable (EventRecord) -> Void) {
        defer { end() }
        let listening = (try? Kernel.socketOption(socket.rawValue, SOL_SOCKET, SO_ACCEPTCONN)) == 1
        var watchingSocket = true
        while true {
            var early: [EventRecord] = []
            let (armed, ended, phase) = state.withLock { state in
                if state.connectPhase == .notStarted, let record = Self.connectOutcome(socket.rawValue, waiting: true) {
                    state.connectPhase = .none
                    if state.armed.contains(.connect) { early.append(record) }
                    state.armed.remove(.connect)
                } else if state.connectPhase == .notStarted, Self.isConnecting(socket.rawValue) {
                    state.connectPhase = .connecting
                }
                return (state.armed, state.ended, state.connectPhase)
            }
            for record in early { deliver(record) }
            if ended { return }
            let connecting = phase == .connecting
            var interest: CInt = 0
            if !armed.isDisjoint(with: [.read, .accept, .close]) { interest |= CInt(POLLIN) | Self.pollReadHangUp }
            if (armed.contains(.write) && phase != .notStarted) || (connecting && armed.contains(.connect)) {
                interest |= CInt(POLLOUT)
            }
            if armed.contains(.outOfBand) { interest |= CInt(POLLPRI) }
            var fds = [
                pollfd(fd: watchingSocket && interest != 0 ? socket.rawValue : -1, events: Int16(interest), revents: 0),
                pollfd(fd: notice.rawValue, events: Int16(POLLIN), revents: 0),
                pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0),
            ]
            // Before a connect starts there is nothing to poll the socket for: look again in 10 ms.
            if phase == .notStarted { fds[0].fd = -1 }
            guard (try? Kernel.poll(&fds, deadline: phase == .notStarted ? .now + .milliseconds(10) : nil)) != nil else { return }
            if fds[2].revents != 0 {
                var buffer = [UInt8](repeating: 0, count: 64)
                while Glibc.read(wakeRead, &buffer, buffer.count) > 0 {}
            }
            if fds[1].revents != 0, let by = displacement() {
                deliver(.displaced(by: by))
                return
            }
            let revents = CInt(fds[0].revents)
            if revents & CInt(POLLNVAL) != 0 { return }
            guard revents != 0 else { continue }
            for record in classify(revents, listening: listening) { deliver(record) }
            // After a hang-up or an error only displacement and cancellation remain to wait for.
            if revents & (CInt(POLLHUP) | CInt(POLLERR)) != 0 && state.withLock({ $0.closeReported || !$0.armed.contains(.close) }) {
                if !armed.contains(.read) || Self.unread(socket.rawValue) == 0 { watchingSocket = false }
            }
        }
    }

    /// The events `revents` means, disarming each reported one.
    private func classify(_ revents: CInt, listening: Bool) -> [EventRecord] {
        var records: [EventRecord] = []
        state.withLock { state in
            func report(_ event: NetworkEvents, error: Int32? = nil) {
                guard state.armed.contains(event) else { return }
                state.armed.remove(event)
                records.append(.event(event, error: error))
            }
            if state.connectPhase == .connecting, revents & (CInt(POLLOUT) | CInt(POLLERR) | CInt(POLLHUP)) != 0,
               case .event(_, let error)? = Self.connectOutcome(socket.rawValue, waiting: false) {
                state.connectPhase = .none
                report(.connect, error: error)
            }
            if revents & CInt(POLLPRI) != 0 { report(.outOfBand) }
            if revents & CInt(POLLIN) != 0 {
                if listening {
                    report(.accept)
                } else if Self.unread(socket.rawValue) > 0 {
                    report(.read)
                }
            }
            let hungUp = revents & (Self.pollReadHangUp | CInt(POLLHUP) | CInt(POLLERR)) != 0
                || (revents & CInt(POLLIN) != 0 && !listening && Self.unread(socket.rawValue) == 0)
            // As Winsock: close is reported once the data before it has been read.
            if hungUp && !listening && !state.closeReported && Self.unread(socket.rawValue) == 0 {
                let error = (try? Kernel.socketOption(socket.rawValue, SOL_SOCKET, SO_ERROR)) ?? 0
                if state.armed.contains(.close) { state.closeReported = true }
                report(.close, error: error == 0 ? nil : error)
                state.armed.remove(.read)
            }
            if revents & CInt(POLLOUT) != 0 && state.connectPhase == .none { report(.write) }
        }
        return records
    }

    /// Reads a displacement notice: the pid that took over, or nil for anything else.
    private func displacement() -> pid_t? {
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = Glibc.recv(notice.rawValue, &buffer, buffer.count, Kernel.dontWait)
        guard count > 0 else { return nil }
        let text = String(decoding: buffer[0..<count], as: UTF8.self)
        guard text.hasPrefix("displaced "), let pid = pid_t(text.dropFirst(10)) else { return nil }
        return pid
    }

    /// `POLLRDHUP` (a GNU constant the module does not import): the peer shut down its writing side.
    package static let pollReadHangUp: CInt = 0x2000

    /// Bytes waiting to be read (`FIONREAD`).
    package static func unread(_ fd: CInt) -> Int {
        var count: CInt = 0
        return ioctl(fd, UInt(FIONREAD), &count) == 0 ? Int(count) : 0
    }

    /// A TCP socket's state (`TCP_INFO`), or nil for other sockets.
    package static func tcpState(_ fd: CInt) -> UInt8? {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(fd, CInt(IPPROTO_TCP), TCP_INFO, &info, &length) == 0 else { return nil }
        return info.tcpi_state
    }

    /// Whether a TCP socket is connecting (`SYN_SENT`).
    package static func isConnecting(_ fd: CInt) -> Bool { tcpState(fd) == 2 }

    /// The connect phase of a socket being selected.
    package static func connectPhase(_ fd: CInt) -> ConnectPhase {
        switch tcpState(fd) {
        case 2?: .connecting
        case 7? where (try? Kernel.socketOption(fd, SOL_SOCKET, SO_ACCEPTCONN)) != 1: .notStarted  // TCP_CLOSE
        default: .none
        }
    }

    /// The `connect` record once a connect has completed (established, or failed with `SO_ERROR`);
    /// nil while it has not. `waiting`: the connect may not have been started yet.
    package static func connectOutcome(_ fd: CInt, waiting: Bool) -> EventRecord? {
        let state = tcpState(fd)
        if state == 2 { return nil }
        if state == 7 || state == nil {
            let error = (try? Kernel.socketOption(fd, SOL_SOCKET, SO_ERROR)) ?? 0
            if error == 0 && waiting { return nil }
            return .event(.connect, error: error == 0 ? nil : error)
        }
        return .event(.connect, error: nil)
    }
}
