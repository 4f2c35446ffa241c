// sockshare-bench: whole-process measurements of SocketShare against the kernel's own floor,
// measured in the same run (these machines are shared and noisy; ratios travel, absolute times do not).
//
//   sockshare-bench broker [--count N] [--shares N]
//     Starts `sockshare broker` (from the same build), then: the claim round trip through it (connect,
//     claim, receive the descriptor, acknowledge, close), p50/p99 over N claims; and the broker's
//     resident memory per held share, with N shares held at once.
//
//   sockshare-bench load --address HOST:PORT [--threads N] [--seconds S] [--count N]
//     A bounded closed-loop HTTP/1.1 client (`Connection: close`, one request per connection, loopback
//     only): each thread connects, asks GET /, reads the whole answer, and starts over, until S
//     seconds passed, N connections were opened, or SIGINT/SIGTERM arrived. Prints one line:
//       attempted N answered N failed N reset N refused N timedOut N
//     failed: the connection ended without a complete 200 answer; reset: ECONNRESET; refused:
//     ECONNREFUSED; timedOut: no answer within 10 s.
//
//   sockshare-bench channel [--per-message N] [--count MESSAGES]
//     DescriptorChannel throughput between two processes: MESSAGES messages of N descriptors each;
//     the receiver closes what arrives and answers once at the end. Prints fds_per_s.
//
//   sockshare-bench pidfd [--count N]
//     SocketShare.adopt of pidfd tokens (pidfd_open, pidfd_getfd, inode check, acknowledgement to the
//     holder): a child makes N shares for this process; each adopt is timed. Prints p50_us p99_us.
//
//   sockshare-bench cycles [--count N] [--via sharer|pidfd]
//     Endurance: N share/adopt cycles with a target process (as roundtrip's), sampling both
//     processes' open descriptors and resident memory 11 times (at 0, 10%, … 100%). Prints the
//     samples and "flat: yes" when the descriptor counts never moved after the first cycle.
//
//   sockshare-bench roundtrip [--count N] [--via sharer|pidfd] [--pin]
//     share/adopt round trip between two processes: the source duplicates a socket for the target,
//     passes the token on a socketpair, the target adopts it, closes it and says "done".
//     Reference: the same two processes passing the descriptor itself with SCM_RIGHTS and "done".
//
//   sockshare-bench named [--count N]
//     A named claim across sibling pid namespaces against a pid-targeted claim in one namespace
//     (Named.swift).
//
// Run a release build: swift build -c release && .build/release/sockshare-bench roundtrip

import Glibc
import CSocketShare
import SocketShare
import Synchronization

struct Arguments {
    var command = "roundtrip"
    var count = 2000
    var via = ShareOptions.Via.sharer
    var role = "source"
    var shares = 10_000
    var address = "127.0.0.1:8080"
    var threads = 4
    var seconds = 10.0
    var countGiven = false
    var perMessage = 1
    /// roundtrip: the source (and its holder thread) on CPU 0, the target on CPU 1.
    var pin = false

    init(_ words: [String]) {
        var words = words[...]
        if let first = words.first, !first.hasPrefix("-") { command = first; words = words.dropFirst() }
        while let word = words.popFirst() {
            switch word {
            case "--count":
                count = Int(words.popFirst() ?? "") ?? count
                countGiven = true
            case "--via": via = ShareOptions.Via(rawValue: words.popFirst() ?? "") ?? via
            case "--role": role = words.popFirst() ?? role
            case "--shares": shares = Int(words.popFirst() ?? "") ?? shares
            case "--address": address = words.popFirst() ?? address
            case "--per-message": perMessage = Int(words.popFirst() ?? "") ?? perMessage
            case "--threads": threads = Int(words.popFirst() ?? "") ?? threads
            case "--seconds": seconds = Double(words.popFirst() ?? "") ?? seconds
            case "--pin": pin = true
            default:
                FileHandle.standardError("sockshare-bench: unknown argument \(word)")
                exit(64)
            }
        }
    }
}

enum FileHandle {
    static func standardError(_ text: String) {
        let bytes = Array((text + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}

func microseconds(_ duration: Duration) -> Double {
    let (seconds, attoseconds) = duration.components
    return Double(seconds) * 1e6 + Double(attoseconds) / 1e12
}

/// The target: reads a line ("T <token>" or "F" with a descriptor attached), adopts or receives,
/// closes, answers "done".
func runTarget() throws {
    let channel = DescriptorChannel(SocketDescriptor(taking: 3))
    while let message = try channel.receive(maximumBytes: 4096) {
        if message.bytes.first == UInt8(ascii: "T") {
            let token = try ShareToken(text: String(decoding: message.bytes.dropFirst(), as: UTF8.self))
            try SocketShare.adopt(token).close()
        } else {
            message.closeDescriptors()
        }
        try channel.send(Array("done".utf8))
    }
}

/// Open descriptors and resident KiB of a process, from /proc.
func footprint(_ pid: pid_t) -> (descriptors: Int, residentKilobytes: Int) {
    var descriptors = 0
    if let directory = opendir("/proc/\(pid)/fd") {
        while readdir(directory) != nil { descriptors += 1 }
        closedir(directory)
        descriptors -= 3  // ".", ".." and the directory's own descriptor, when it is ours
        if pid != getpid() { descriptors += 1 }
    }
    var bytes = [UInt8](repeating: 0, count: 8192)
    let fd = open("/proc/\(pid)/status", O_RDONLY | O_CLOEXEC)
    let count = fd >= 0 ? read(fd, &bytes, bytes.count) : 0
    if fd >= 0 { close(fd) }
    let text = String(decoding: bytes[0..<max(0, count)], as: UTF8.self)
    let line = text.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return (descriptors, Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0)
}

/// A target process (`roundtrip --role target`, see ``runTarget()``) and the channel to it.
func spawnTarget() throws -> (ChildProcess, DescriptorChannel) {
    let (mine, theirs) = try SocketDescriptor.pair(kind: .seqpacket)
    let target = try ProcessSpawner.spawn(
        "/proc/self/exe", arguments: ["roundtrip", "--role", "target"], descriptors: [3: theirs.rawValue])
    try theirs.close()
    return (target, DescriptorChannel(mine))
}

func runCycles(_ arguments: Arguments) throws {
    let (target, channel) = try spawnTarget()
    let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
    let options = ShareOptions(via: arguments.via)
    let count = arguments.countGiven ? arguments.count : 1_000_000
    print("endurance: \(count) share/adopt cycles via \(arguments.via)")
    print("| cycles | source descriptors | source resident KiB | target descriptors | target resident KiB |")
    print("|---:|---:|---:|---:|---:|")
    var descriptorSamples: [[Int]] = []
    let started = ContinuousClock.now
    for cycle in 0...count {
        if cycle % max(1, count / 10) == 0 || cycle == count {
            // The holder's thread reads the last acknowledgement and hang-up after the target has
            // answered: sample once it has (the counts hold still), within a second.
            var (ours, theirs) = (footprint(getpid()), footprint(target.pid))
            let settleBy = ContinuousClock.now + .seconds(1)
            while ContinuousClock.now < settleBy {
                usleep(5000)
                let again = (footprint(getpid()), footprint(target.pid))
                if Sharer.default.heldShareCount == 0, again.0 == ours, again.1 == theirs { break }
                (ours, theirs) = again
            }
            if cycle > 0 { descriptorSamples.append([ours.descriptors, theirs.descriptors]) }
            print("| \(cycle) | \(ours.descriptors) | \(ours.residentKilobytes) | \(theirs.descriptors) | \(theirs.residentKilobytes) |")
            if cycle == count { break }
        }
        let token = try SocketShare.duplicate(socket, for: target.pid, options: options)
        try channel.send(Array(("T" + token.text).utf8))
        _ = try channel.receive(maximumBytes: 64)
    }
    let seconds = microseconds(ContinuousClock.now - started) / 1e6
    try channel.close()
    _ = try target.wait()
    let flat = descriptorSamples.allSatisfy { $0 == descriptorSamples.first }
    print("\(count) cycles in \(String(format: seconds)) s; flat: \(flat ? "yes" : "no")")
    if !flat { exit(1) }
}

/// Runs process `pid` (0: this one, and the threads it starts from now on) on CPU `cpu` only.
func pin(_ pid: pid_t, to cpu: CInt) {
    _ = cs_pin_to_cpu(pid, cpu)
}

func runRoundTrip(_ arguments: Arguments) throws {
    // Pinned, every hop crosses CPUs the same way in every run; unpinned, the scheduler's placement
    // makes the figures bimodal (a hop on one CPU costs a fifth of one across two).
    if arguments.pin { pin(0, to: 0) }
    let (target, channel) = try spawnTarget()
    if arguments.pin { pin(target.pid, to: 1) }
    let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))

    func measure(_ step: () throws -> Void) throws -> [Double] {
        for _ in 0..<min(200, arguments.count) { try step() }  // warm up
        var samples: [Double] = []
        samples.reserveCapacity(arguments.count)
        for _ in 0..<arguments.count {
            let start = ContinuousClock.now
            try step()
            samples.append(microseconds(ContinuousClock.now - start))
        }
        return samples.sorted()
    }
    let options = ShareOptions(via: arguments.via)
    let ours = try measure {
        let token = try SocketShare.duplicate(socket, for: target.pid, options: options)
        try channel.send(Array(("T" + token.text).utf8))
        _ = try channel.receive(maximumBytes: 64)
    }
    let reference = try measure {
        try channel.send(Array("F".utf8), descriptors: [socket.rawValue])
        _ = try channel.receive(maximumBytes: 64)
    }
    try channel.close()
    _ = try target.wait()
    func line(_ name: String, _ samples: [Double]) -> String {
        "| \(name) | \(String(format: percentile(samples, 0.5))) | \(String(format: percentile(samples, 0.99))) |"
    }
    print("share/adopt round trip between two processes, \(arguments.count) samples, via \(arguments.via)"
        + (arguments.pin ? ", source and holder on CPU 0, target on CPU 1" : ", unpinned"))
    print("| what | p50 µs | p99 µs |")
    print("|---|---:|---:|")
    print(line("duplicate + token over IPC + adopt (claim, SCM_RIGHTS, ack) + close", ours))
    print(line("reference: SCM_RIGHTS of the descriptor itself + close", reference))
    print("ratio p50: \(String(format: percentile(ours, 0.5) / percentile(reference, 0.5)))x the kernel's floor")
}

/// Shares deposited at once before they are claimed one by one.
let claimBatch = 500

func runBroker(_ arguments: Arguments) throws {
    var template = Array("/tmp/sockshare-bench-XXXXXX".utf8CString)
    let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    let path = directory + "/broker.sock"
    var buffer = [CChar](repeating: 0, count: 4096)
    let length = readlink("/proc/self/exe", &buffer, 4095)
    let executablePath = String(decoding: buffer[0..<max(0, length)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let sockshare = String(executablePath[..<executablePath.lastIndex(of: "/")!]) + "/sockshare"
    let broker = try ProcessSpawner.spawn(
        sockshare, arguments: ["broker", "--socket", path, "--log-level", "warning", "--max-shares", "\(max(arguments.shares, claimBatch) + 10)"])
    defer {
        try? broker.signal(SIGTERM)
        _ = try? broker.wait()
    }
    let client = BrokerClient(socketPath: path)
    let started = ContinuousClock.now
    while (try? client.list()) == nil {
        guard ContinuousClock.now - started < .seconds(20) else { throw SocketShareError(.timedOut, operation: "bench", detail: "no broker") }
        var pause = timespec(tv_sec: 0, tv_nsec: 10_000_000)
        nanosleep(&pause, nil)
    }
    func residentKilobytes() -> Int { footprint(broker.pid).residentKilobytes }
    let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
    let me = ProcessIdentity.current

    // Claim round trip: deposit a batch outside the timed part (so the broker is idle, as the C
    // reference's holder is), then time each adopt (connect … close).
    var samples: [Double] = []
    var claimed = 0
    while claimed < arguments.count + 200 {
        let batch = min(claimBatch, arguments.count + 200 - claimed)
        let tokens = try (0..<batch).map { _ in try client.deposit(socket.rawValue, for: me) }
        var pause = timespec(tv_sec: 0, tv_nsec: 20_000_000)
        nanosleep(&pause, nil)
        for token in tokens {
            let start = ContinuousClock.now
            try SocketShare.adopt(token).close()
            if claimed >= 200 { samples.append(microseconds(ContinuousClock.now - start)) }
            claimed += 1
        }
    }
    samples.sort()

    var pause = timespec(tv_sec: 0, tv_nsec: 300_000_000)
    nanosleep(&pause, nil)
    let before = residentKilobytes()
    for _ in 0..<arguments.shares { _ = try client.deposit(socket.rawValue, for: me, timeToLive: .seconds(600)) }
    nanosleep(&pause, nil)
    let after = residentKilobytes()
    let held = try client.list().count
    print("broker: claim round trip over \(arguments.count) claims; memory with \(held) shares held")
    print("| what | value |")
    print("|---|---:|")
    print("| claim p50 (connect, claim, SCM_RIGHTS, verify, acknowledge, close) | \(String(format: percentile(samples, 0.5))) µs |")
    print("| claim p99 | \(String(format: percentile(samples, 0.99))) µs |")
    print("| broker resident memory, idle → \(held) held | \(before) KiB → \(after) KiB |")
    print("| memory per held share | \(String(format: Double(after - before) * 1024 / Double(max(held, 1)))) bytes |")
}

func runChannel(_ arguments: Arguments) throws {
    let (mine, theirs) = try SocketDescriptor.pair(kind: .seqpacket)
    let child = try ProcessSpawner.spawn("/proc/self/exe", arguments: ["channel", "--role", "target"], descriptors: [3: theirs.rawValue])
    try theirs.close()
    let channel = DescriptorChannel(mine)
    let socket = try SocketDescriptor.socket(.inet, .datagram)
    let descriptors = [CInt](repeating: socket.rawValue, count: arguments.perMessage)
    let messages = arguments.countGiven ? arguments.count : (arguments.perMessage == 1 ? 200_000 : 5_000)
    let start = ContinuousClock.now
    for _ in 0..<messages { try channel.send([1], descriptors: descriptors) }
    try channel.send([2])  // the end
    _ = try channel.receive(maximumBytes: 16)
    let elapsed = microseconds(ContinuousClock.now - start) / 1e6
    try channel.close()
    _ = try child.wait()
    print("fds_per_s \(Int(Double(messages * arguments.perMessage) / elapsed))")
}

func channelTarget() throws {
    let channel = DescriptorChannel(SocketDescriptor(taking: 3))
    while let message = try channel.receive(maximumBytes: 16) {
        message.closeDescriptors()
        if message.bytes == [2] { try channel.send([1]) }
    }
}

func runPidfd(_ arguments: Arguments) throws {
    let count = arguments.countGiven ? arguments.count : 3000
    let (mine, theirs) = try SocketDescriptor.pair()
    let child = try ProcessSpawner.spawn(
        "/proc/self/exe", arguments: ["pidfd", "--role", "target", "--count", "\(count)"], descriptors: [1: theirs.rawValue])
    try theirs.close()
    var buffer: [UInt8] = []
    var tokens: [ShareToken] = []
    while tokens.count < count, try mine.waitUntilReadable(deadline: .now + .seconds(60)) {
        let chunk = try mine.receive()
        if chunk.isEmpty { break }
        buffer += chunk
        while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
            tokens.append(try ShareToken(text: String(decoding: buffer[..<newline], as: UTF8.self)))
            buffer.removeSubrange(...newline)
        }
    }
    var samples: [Double] = []
    for token in tokens {
        let start = ContinuousClock.now
        let socket = try SocketShare.adopt(token)
        samples.append(microseconds(ContinuousClock.now - start))
        try socket.close()
    }
    try mine.close()
    _ = try child.wait()
    samples.sort()
    print("p50_us \(String(format: percentile(samples, 0.5))) p99_us \(String(format: percentile(samples, 0.99)))")
}

/// Makes `count` pidfd shares of one socket for the parent, prints their tokens, and holds them
/// until the parent closes stdout's other end.
func pidfdHolder(_ arguments: Arguments) throws {
    let socket = try SocketDescriptor.socket(.inet, .stream)
    var lines = ""
    for _ in 0..<arguments.count {
        lines += try SocketShare.duplicate(socket, for: getppid(), options: ShareOptions(via: .pidfd, timeToLive: .seconds(600))).text + "\n"
    }
    let out = SocketDescriptor(taking: 1)
    try out.sendAll(Array(lines.utf8))
    _ = try out.waitUntilReadable(deadline: .now + .seconds(600))
    _ = out.release()
    Sharer.default.stop()
}

/// Set by SIGINT or SIGTERM: the load client stops early (an async-signal-safe store).
let loadInterrupted = Atomic<Bool>(false)

/// The load client's tally.
final class Tally: @unchecked Sendable {
    let lock = Locked<[String: Int]>([:])
    func add(_ key: String) { lock.withLock { $0[key, default: 0] += 1 } }
}

func runLoad(_ arguments: Arguments) throws {
    guard let colon = arguments.address.lastIndex(of: ":"), let port = UInt16(arguments.address[arguments.address.index(after: colon)...]) else {
        throw SocketShareError(.invalidArgument, operation: "load", detail: "--address \(arguments.address): expected HOST:PORT")
    }
    let host = String(arguments.address[..<colon]).filter { $0 != "[" && $0 != "]" }
    let address = try SocketAddress.ip(host, port: port)
    let tally = Tally()
    let count = arguments.countGiven ? arguments.count : Int.max
    let end = ContinuousClock.now + .milliseconds(Int64(arguments.seconds * 1000))

    signal(SIGINT) { _ in loadInterrupted.store(true, ordering: .relaxed) }
    signal(SIGTERM) { _ in loadInterrupted.store(true, ordering: .relaxed) }
    let started = Atomic<Int>(0)
    let request = Array("GET / HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n".utf8)
    let finished = Atomic<Int>(0)
    for _ in 0..<arguments.threads {
        DetachedLoop.start {
            while ContinuousClock.now < end, !loadInterrupted.load(ordering: .relaxed), started.add(1, ordering: .relaxed).newValue <= count {
                tally.add("attempted")
                tally.add(LoadRequest.outcome(of: request, to: address))
            }
            finished.add(1, ordering: .relaxed)
        }
    }
    while finished.load(ordering: .relaxed) < arguments.threads { usleep(10_000) }
    let result = tally.lock.withLock { $0 }
    let keys = ["attempted", "answered", "failed", "reset", "refused", "timedOut"]
    print(keys.map { "\($0) \(result[$0] ?? 0)" }.joined(separator: " "))
}

enum LoadRequest {
    static func outcome(of request: [UInt8], to address: SocketAddress) -> String {
        let socket: SocketDescriptor
        do throws(SocketShareError) {
            socket = try SocketDescriptor.connected(to: address)
        } catch {
            return error.errno?.rawValue == ECONNREFUSED ? "refused" : (error.errno?.rawValue == ECONNRESET ? "reset" : "failed")
        }
        defer { try? socket.close() }
        var response: [UInt8] = []
        do throws(SocketShareError) {
            try socket.sendAll(request)
            let deadline = ContinuousClock.now + .seconds(10)
            while true {
                guard try socket.waitUntilReadable(deadline: deadline) else { return "timedOut" }
                let chunk = try socket.receive()
                if chunk.isEmpty { break }
                response += chunk
            }
        } catch {
            return error.errno?.rawValue == ECONNRESET ? "reset" : "failed"
        }
        let text = String(decoding: response, as: UTF8.self)
        return text.hasPrefix("HTTP/1.") && text.contains(" 200 ") && text.hasSuffix("\n") ? "answered" : "failed"
    }
}

/// A detached POSIX thread.
enum DetachedLoop {
    static func start(_ body: @escaping @Sendable () -> Void) {
        final class Box { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
        var thread = pthread_t()
        pthread_create(&thread, nil, { Unmanaged<Box>.fromOpaque($0!).takeRetainedValue().body(); return nil },
                       Unmanaged.passRetained(Box(body)).toOpaque())
        pthread_detach(thread)
    }
}

extension String {
    init(format value: Double) {
        let scaled = (value * 10).rounded() / 10
        self = scaled == scaled.rounded() ? "\(Int(scaled)).0" : "\(scaled)"
    }
}

let arguments = Arguments(Array(CommandLine.arguments.dropFirst()))
do {
    switch (arguments.command, arguments.role) {
    case ("roundtrip", "target"): try runTarget()
    case ("roundtrip", _): try runRoundTrip(arguments)
    case ("broker", _): try runBroker(arguments)
    case ("load", _): try runLoad(arguments)
    case ("cycles", _): try runCycles(arguments)
    case ("channel", "target"): try channelTarget()
    case ("channel", _): try runChannel(arguments)
    case ("pidfd", "target"): try pidfdHolder(arguments)
    case ("pidfd", _): try runPidfd(arguments)
    case ("named", "claimant"): try namedClaimant(arguments)
    case ("named", _): try runNamed(arguments)
    default:
        FileHandle.standardError("sockshare-bench: unknown command \(arguments.command) (roundtrip)")
        exit(64)
    }
} catch {
    FileHandle.standardError("sockshare-bench: \(error)")
    exit(1)
}
