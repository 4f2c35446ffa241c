// sockshare-test-helper: a second (or third) real process for the multi-process tests.
//
// It reads one command per line on stdin and answers one line on stdout:
//   ok [WORDS…]            the command worked
//   error CODE DETAIL…     it failed with a SocketShareError of that code
// Sockets it holds live in numbered slots. With `--probe-fds` it instead prints its open descriptors
// (used to check what a program exec'd after adoption inherits) and exits.

import Glibc
import SocketShare

nonisolated(unsafe) var slots: [Int: SocketDescriptor] = [:]
nonisolated(unsafe) var nextSlot = 1
nonisolated(unsafe) var filler: [CInt] = []
nonisolated(unsafe) var selection: EventSelection? = nil
let records = Locked<[String]>([])

func answer(_ words: [String]) {
    let line = words.joined(separator: " ") + "\n"
    let bytes = Array(line.utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes[offset...].withUnsafeBytes { Glibc.write(1, $0.baseAddress, $0.count) }
        if written <= 0 { exit(3) }
        offset += written
    }
}

func readLine() -> String? {
    var bytes: [UInt8] = []
    var byte: UInt8 = 0
    while true {
        let count = Glibc.read(0, &byte, 1)
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self) }
        if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
        bytes.append(byte)
    }
}

func store(_ socket: SocketDescriptor) -> Int {
    let slot = nextSlot
    nextSlot += 1
    slots[slot] = socket
    return slot
}

struct HelperFailure: Error { let text: String }

func slot(_ word: String) throws -> SocketDescriptor {
    guard let number = Int(word), let socket = slots[number] else { throw HelperFailure(text: "no slot \(word)") }
    return socket
}

/// libdispatch (under Swift concurrency) opens these lazily, whenever it first needs them; SocketShare
/// never creates them, so leak counts leave them out.
let runtimeDescriptorKinds = ["anon_inode:[eventpoll]", "anon_inode:[eventfd]", "anon_inode:[timerfd]"]

func isRuntimeDescriptor(_ fd: CInt) -> Bool {
    var buffer = [CChar](repeating: 0, count: 256)
    let count = readlink("/proc/self/fd/\(fd)", &buffer, 255)
    guard count > 0 else { return false }
    return runtimeDescriptorKinds.contains(String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self))
}

func openDescriptors() -> [CInt] {
    guard let directory = opendir("/proc/self/fd") else { return [] }
    defer { closedir(directory) }
    let own = dirfd(directory)
    var fds: [CInt] = []
    while let entry = readdir(directory) {
        // Read in place: the record is only as long as its name (copying d_name would overrun it).
        let name = String(cString: (UnsafeRawPointer(entry) + MemoryLayout<dirent>.offset(of: \dirent.d_name)!).assumingMemoryBound(to: CChar.self))
        if let fd = CInt(name), fd != own { fds.append(fd) }
    }
    return fds.sorted()
}

func describe(_ socket: SocketDescriptor) throws -> [String] {
    let description = try socket.socketDescription()
    return [
        "\(description.identity.inode)", "\(description.family)", "\(description.kind)",
        description.isListening ? "listening" : "-", description.isConnected ? "connected" : "-",
        description.isNonBlocking ? "nonblocking" : "blocking", socket.isCloseOnExec ? "cloexec" : "inherit",
        "\(description.localAddress)",
    ]
}

func hex(_ bytes: [UInt8]) -> String { bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined() }

func unhex(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex, let next = text.index(index, offsetBy: 2, limitedBy: text.endIndex) {
        bytes.append(UInt8(text[index..<next], radix: 16) ?? 0)
        index = next
    }
    return bytes
}

func run(_ words: [String]) async throws -> [String] {
    switch words[0] {
    case "pid":
        let me = ProcessIdentity.current
        return ["\(me.pid)", "\(me.startTime)", "\(getuid())"]
    case "adopt":
        let socket = try SocketShare.adopt(try ShareToken(text: words[1]))
        return ["\(store(socket))"] + (try describe(socket))
    case "take":
        // A descriptor placed in this process at spawn time.
        return ["\(store(SocketDescriptor(taking: CInt(words[1])!)))"]
    case "describe":
        return try describe(try slot(words[1]))
    case "getopt":
        return ["\(try slot(words[1]).option(CInt(words[2])!, CInt(words[3])!))"]
    case "setopt":
        try slot(words[1]).setOption(CInt(words[2])!, CInt(words[3])!, CInt(words[4])!)
        return []
    case "nonblock":
        try slot(words[1]).setNonBlocking(words[2] == "1")
        return []
    case "listen":
        let endpoint = try SocketEndpoint(parsing: words[1])
        let socket = try SocketDescriptor.listening(on: endpoint.address, kind: endpoint.kind)
        return ["\(store(socket))"] + (try describe(socket))
    case "connect":
        let endpoint = try SocketEndpoint(parsing: words[1])
        return ["\(store(try SocketDescriptor.connected(to: endpoint.address, kind: endpoint.kind)))"]
    case "accept":
        let listener = try slot(words[1])
        guard try listener.waitUntilReadable(deadline: .now + .seconds(10)), let client = try listener.accept() else {
            throw HelperFailure(text: "no connection within 10 s")
        }
        return ["\(store(client))"]
    case "send":
        try slot(words[1]).sendAll(unhex(words[2]))
        return []
    case "recv":
        let socket = try slot(words[1])
        guard try socket.waitUntilReadable(deadline: .now + .seconds(10)) else { throw HelperFailure(text: "nothing to read within 10 s") }
        return [hex(try socket.receive())]
    case "close":
        try slot(words[1]).close()
        slots[Int(words[1])!] = nil
        return []
    case "fds":
        return openDescriptors().map(String.init)
    case "fd-links":
        return openDescriptors().map { fd in
            var buffer = [CChar](repeating: 0, count: 256)
            let count = readlink("/proc/self/fd/\(fd)", &buffer, 255)
            return "\(fd):" + (count > 0 ? String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?")
        }
    case "fdcount":
        return ["\(openDescriptors().filter { !isRuntimeDescriptor($0) }.count)"]
    case "inherit-audit":
        // Descriptors above stdio that a program exec'd now would inherit.
        return openDescriptors().filter { fd in fd > 2 && fcntl(fd, F_GETFD) & FD_CLOEXEC == 0 }.map(String.init)
    case "share":
        let via = words.count > 3 ? ShareOptions.Via(rawValue: words[3])! : .sharer
        let ttl: Duration = words.count > 4 ? .milliseconds(Int(words[4])!) : ShareOptions.defaultTimeToLive
        let token = try SocketShare.duplicate(try slot(words[1]), for: pid_t(words[2])!, options: ShareOptions(via: via, timeToLive: ttl))
        return [token.text]
    case "deposit":
        // deposit SLOT PID BROKER-PATH TTL-MS [START-TIME]
        let client = BrokerClient(socketPath: words[3])
        let start = words.count > 5 ? UInt64(words[5])! : 0
        let token = try client.deposit(
            try slot(words[1]).rawValue, for: ProcessIdentity(pid: pid_t(words[2])!, startTime: start),
            timeToLive: .milliseconds(Int(words[4])!))
        return [token.text]
    case "broker-round":
        // broker-round SLOT BROKER-PATH: deposits the slot's socket for this very process, claims it
        // back and closes what it claimed; answers how long the deposit and the claim took, in µs.
        let client = BrokerClient(socketPath: words[2])
        let started = ContinuousClock.now
        let token = try client.deposit(try slot(words[1]).rawValue, for: .current, timeToLive: .seconds(30))
        let deposited = ContinuousClock.now
        try SocketShare.adopt(token).close()
        let claimed = ContinuousClock.now
        return ["\((deposited - started) / .microseconds(1))", "\((claimed - deposited) / .microseconds(1))"]
    case "broker-list":
        return try BrokerClient(socketPath: words[1]).list().map { "\($0.id)" }
    case "broker-revoke":
        try BrokerClient(socketPath: words[1]).revoke(shareID: UInt64(words[2])!)
        return []
    case "outcome":
        return ["\(await SocketShare.outcome(of: try ShareToken(text: words[1])))".replacingSpaces]
    case "held":
        return ["\(Sharer.default.heldShareCount)"]
    case "make-sockets":
        // N UDP sockets on loopback, for the large-batch test; answers their inodes.
        var inodes: [String] = []
        for _ in 0..<Int(words[1])! {
            let socket = try SocketDescriptor.socket(.inet, .datagram)
            inodes.append("\(try socket.socketDescription().identity.inode)")
            _ = store(socket)
        }
        return inodes
    case "send-batch":
        // Sends every slot's descriptor, in slot order, over the channel in slot words[1].
        let channel = DescriptorChannel(try slot(words[1]))
        let fds = slots.keys.sorted().filter { $0 != Int(words[1])! }.map { slots[$0]!.rawValue }
        try channel.sendBatch(fds, deadline: .now + .seconds(30))
        return ["\(fds.count)"]
    case "stop-sharing":
        Sharer.default.stop()
        return []
    case "select":
        // select SLOT EVENTS [coop]: records arrive in the background; `records` lists them.
        guard let events = NetworkEvents(names: words[2]) else { throw HelperFailure(text: "bad events \(words[2])") }
        selection = try EventSelection(try slot(words[1]), events: events, cooperative: words.count > 3 && words[3] == "coop") { record in
            records.withLock { $0.append("\(record)".replacingSpaces) }
        }
        return []
    case "records":
        return records.withLock { $0 }
    case "wait-record":
        // wait-record TEXT: until a record with that description (spaces as _) arrived, at most 10 s.
        let deadline = ContinuousClock.now + .seconds(10)
        while !records.withLock({ $0.contains(words[1]) }) {
            guard ContinuousClock.now < deadline else { throw HelperFailure(text: "no record \(words[1]); have \(records.withLock { $0 })") }
            usleep(2_000)
        }
        return []
    case "sel-receive":
        guard let selection else { throw HelperFailure(text: "no selection") }
        return [hex(try selection.receive())]
    case "unselect":
        selection?.cancel()
        selection = nil
        return []
    case "fill-fds":
        // fill-fds SPARE: lowers RLIMIT_NOFILE to what is open now plus 64, then opens /dev/null
        // until only SPARE descriptors are left; answers how many it opened.
        var limit = rlimit(rlim_cur: rlim_t(openDescriptors().count + 64), rlim_max: rlim_t(openDescriptors().count + 64))
        guard setrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit) == 0 else { throw HelperFailure(text: "setrlimit failed") }
        while true {
            let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { break }
            filler.append(fd)
        }
        for _ in 0..<min(Int(words[1])!, filler.count) { close(filler.removeLast()) }
        return ["\(filler.count)"]
    case "free-fds":
        for _ in 0..<min(Int(words[1])!, filler.count) { close(filler.removeLast()) }
        return []
    case "exit":
        exit(CInt(words[1]) ?? 0)
    default:
        throw HelperFailure(text: "unknown command \(words[0])")
    }
}

extension String {
    var replacingSpaces: String { String(map { $0 == " " ? "_" : $0 }) }
}

if CommandLine.arguments.dropFirst().first == "--probe-fds" {
    // Every open descriptor with what it is, as `N:target` words.
    answer(["ok"] + openDescriptors().map { fd in
        var buffer = [CChar](repeating: 0, count: 256)
        let count = readlink("/proc/self/fd/\(fd)", &buffer, 255)
        return "\(fd):" + (count > 0 ? String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?")
    } + ["LISTEN_FDS=\(String(cString: getenv("LISTEN_FDS") ?? strdup("")))",
         "LISTEN_PID=\(String(cString: getenv("LISTEN_PID") ?? strdup("")))",
         "LISTEN_FDNAMES=\(String(cString: getenv("LISTEN_FDNAMES") ?? strdup("")))",
         "PID=\(getpid())"])
    exit(0)
}

/// A handoff worker for the tests, speaking the worker protocol (docs/WORKERS.md) itself, with
/// blocking calls: `--worker MODE [MILLISECONDS]`.
///   serve: answer each connection's first request at once (HTTP/1.0, naming this pid), then close it;
///   slow:  the same, one connection at a time, after MILLISECONDS;
///   refuse: refuse every connection (the dispatcher gives them to another worker);
///   stubborn: serve, but ignore the dispatcher's stop and SIGTERM (only SIGKILL ends it).
func runWorker(_ mode: String, delay: Int) {
    if mode == "stubborn" { signal(SIGTERM, SIG_IGN) }
    guard let socket = try? WorkerChannel.fromEnvironment() else {
        answer(["error", "not a handoff worker"])
        exit(2)
    }
    let channel = DescriptorChannel(socket)
    try? channel.send(WorkerMessage.ready.bytes)
    var active = 0
    receiving: while let message = try? channel.receive(maximumBytes: WorkerMessage.maximumLength) {
        switch try? WorkerMessage(bytes: message.bytes) {
        case .connections(let handed)? where handed.count == message.descriptorCount:
            let descriptors = message.takeDescriptors()
            let ids = handed.map(\.id)
            if mode == "refuse" {
                for descriptor in descriptors { try? descriptor.close() }
                try? channel.send(WorkerMessage.refused(ids).bytes)
                continue
            }
            FaultPoint.reached("worker.beforeAcknowledge")
            active += descriptors.count
            try? channel.send(WorkerMessage.accepted(ids, active: UInt32(active)).bytes)
            for connection in descriptors {
                if mode == "slow" { usleep(useconds_t(delay * 1000)) }
                if (try? connection.waitUntilReadable(deadline: .now + .seconds(10))) == true { _ = try? connection.receive() }
                let body = "hello from \(getpid())\n"
                try? connection.sendAll(Array("HTTP/1.0 200 OK\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8))
                try? connection.close()
                active -= 1
            }
            try? channel.send(WorkerMessage.load(active: UInt32(active)).bytes)
        case .stop?, nil:
            message.closeDescriptors()
            break receiving
        default:
            message.closeDescriptors()
        }
    }
    if mode == "stubborn" {
        while true { sleep(60) }
    }
    exit(0)
}

signal(SIGPIPE, SIG_IGN)
if CommandLine.arguments.dropFirst().first == "--worker" {
    let arguments = Array(CommandLine.arguments.dropFirst(2))
    runWorker(arguments.first ?? "serve", delay: arguments.count > 1 ? Int(arguments[1]) ?? 0 : 0)
}
while let line = readLine() {
    let words = line.split(separator: " ").map(String.init)
    guard !words.isEmpty else { continue }
    do {
        answer(["ok"] + (try await run(words)))
    } catch let error as SocketShareError {
        answer(["error", error.code.rawValue, error.description])
    } catch let error as HelperFailure {
        answer(["error", "helper", error.text])
    }
}
