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
    /// The selection's thread: the socket and the notice socket are watched on it, and records
    /// are delivered from it.
    private let reactor: Reactor
    private let state: Locked<State>
    /// Touched on the reactor's thread only.
    private let watching = Locked(Watching())
    private let stream: AsyncStream<EventRecord>
    private let continuation: AsyncStream<EventRecord>.Continuation

    package struct State {
        /// Events that may be reported now (reported ones wait for re-enabling).
        package var armed: NetworkEvents
        package var ended = false
        package var started = false
        package var connectPhase = ConnectPhase.none
        package var closeReported = false
        /// Whether ``end()`` has run.
        package var closed = false
    }

    /// What the reactor's thread watches.
    private struct Watching: Sendable {
        var socket: Reactor.Watch?
        var notice: Reactor.Watch?
        /// The interest the socket is watched for now.
        var interest: UInt32 = 0
        /// Cleared after a hang-up or an error: only displacement and cancellation remain.
        var socketLive = true
        var listening = false
        var deliver: (@Sendable (EventRecord) -> Void)?
        /// Before a connect starts there is nothing to watch the socket for: looked at every 10 ms.
        var connectCheck: Reactor.Timer?
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
            reactor = try Reactor(name: "sockshare-events")
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
        reactor.execute { [self] in begin(deliver) }
        do throws(SocketShareError) {
            try reactor.start()
        } catch {
            end()
            throw error
        }
    }

    /// An iterator over the records.
    public func makeAsyncIterator() -> AsyncStream<EventRecord>.Iterator {
        stream.makeAsyncIterator()
    }

    /// Ends this registration (others are untouched); the sequence ends.
    public func cancel() {
        state.withLock { $0.ended = true }
        reactor.execute { [self] in refresh() }
    }

    /// Arms `events` again after they were reported (call it after consuming them yourself).
    public func reenable(_ events: NetworkEvents) {
        state.withLock { $0.armed.formUnion(events.intersection(self.events).subtracting([.connect, .close])) }
        reactor.execute { [self] in refresh() }
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
        let first = state.withLock { state in
            defer { state.closed = true }
            state.ended = true
            return !state.closed
        }
        guard first else { return }
        registry.unregister(noticePath: noticePath, inode: identity.inode)
        try? notice.close()
        Kernel.unlink(noticePath)
        continuation.finish()
    }
}

extension EventSelection {
    /// The first round on the selection's thread: watch the notice socket and the socket.
    private func begin(_ deliver: @escaping @Sendable (EventRecord) -> Void) {
        let listening = (try? Kernel.socketOption(socket.rawValue, SOL_SOCKET, SO_ACCEPTCONN)) == 1
        let notice = try? reactor.watch(self.notice.rawValue) { [unowned self] _ in
            if let by = displacement() {
                watching.withLock { $0.deliver }?(.displaced(by: by))
                finish()
            }
        }
        watching.withLock { watching in
            watching.listening = listening
            watching.deliver = deliver
            watching.notice = notice
        }
        refresh()
    }

    /// Brings the watch in line with the armed events and the connect phase; reports a connect that
    /// happened before the socket could be watched; ends the selection once cancelled.
    private func refresh() {
        guard let deliver = watching.withLock({ $0.deliver }) else { return }
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
        if ended { return finish() }
        var interest: UInt32 = 0
        if !armed.isDisjoint(with: [.read, .accept, .close]) { interest |= UInt32(POLLIN) | UInt32(Self.pollReadHangUp) }
        if (armed.contains(.write) && phase != .notStarted) || (phase == .connecting && armed.contains(.connect)) {
            interest |= UInt32(POLLOUT)
        }
        if armed.contains(.outOfBand) { interest |= UInt32(POLLPRI) }
        let current = watching.withLock { $0 }
        let wanted = current.socketLive && phase != .notStarted ? interest : 0
        if wanted == 0 {
            if let watch = current.socket { reactor.unwatch(watch) }
            watching.withLock { $0.socket = nil; $0.interest = 0 }
        } else if let watch = current.socket {
            if wanted != current.interest {
                reactor.setEvents(watch, wanted)
                watching.withLock { $0.interest = wanted }
            }
        } else {
            let watch = try? reactor.watch(socket.rawValue, events: wanted) { [unowned self] events in socketEvents(events) }
            watching.withLock { $0.socket = watch; $0.interest = watch == nil ? 0 : wanted }
        }
        if phase == .notStarted, current.connectCheck == nil {
            let timer = reactor.schedule(at: .now + .milliseconds(10)) { [unowned self] in
                watching.withLock { $0.connectCheck = nil }
                refresh()
            }
            watching.withLock { $0.connectCheck = timer }
        }
    }

    /// The socket has events.
    private func socketEvents(_ events: UInt32) {
        let (listening, deliver) = watching.withLock { ($0.listening, $0.deliver) }
        let revents = CInt(bitPattern: events)
        for record in classify(revents, listening: listening) { deliver?(record) }
        // After a hang-up or an error only displacement and cancellation remain to wait for.
        if revents & (CInt(POLLHUP) | CInt(POLLERR)) != 0 && state.withLock({ $0.closeReported || !$0.armed.contains(.close) }) {
            if !state.withLock({ $0.armed.contains(.read) }) || Self.unread(socket.rawValue) == 0 {
                watching.withLock { $0.socketLive = false }
            }
        }
        refresh()
    }

    /// Ends the selection on its own thread: nothing is watched any more, the thread ends.
    private func finish() {
        let current = watching.withLock { watching in
            defer { watching = Watching(socketLive: false) }
            return watching
        }
        if let watch = current.socket { reactor.unwatch(watch) }
        if let watch = current.notice { reactor.unwatch(watch) }
        if let timer = current.connectCheck { reactor.cancel(timer) }
        end()
        reactor.stop()
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
