import Glibc
import SocketShare

// sockshare-bench named [--count N]
//   A named claim across sibling pid namespaces against a pid-targeted claim in one namespace,
//   measured in the same run. Ours: a broker in a pid namespace of its own (`unshare --pid --fork
//   --mount-proc`), a claimant in another one that cannot see the broker's pids nor the broker its
//   pid; each of N single-use names is claimed (connect, claim by name, the policy checked from
//   SO_PEERCRED, SCM_RIGHTS, acknowledge, close). Reference: a broker and this process in the host's
//   namespace, each of N pid-targeted tokens adopted. Both deposit everything first, then time each
//   claim alone. Needs root and unshare(1); without them both run in this namespace, and say so.
//   Also prints the broker's open descriptors before the named deposits and after every claim.

/// Starts `sockshare broker` at `path`, under `wrapper` (empty: as a child), and waits until it answers.
func startBroker(at path: String, wrapper: [String], maximumShares: Int) throws -> ChildProcess {
    let sockshare = siblingExecutable("sockshare")
    let words = wrapper + [sockshare, "broker", "--socket", path, "--log-level", "warning", "--max-shares", "\(maximumShares)"]
    let broker = try ProcessSpawner.spawn(words[0], arguments: Array(words.dropFirst()))
    let client = BrokerClient(socketPath: path)
    let started = ContinuousClock.now
    while (try? client.list()) == nil {
        guard ContinuousClock.now - started < .seconds(20) else {
            try? broker.signal(SIGKILL)
            throw SocketShareError(.timedOut, operation: "bench", detail: "no broker at \(path)")
        }
        var pause = timespec(tv_sec: 0, tv_nsec: 10_000_000)
        nanosleep(&pause, nil)
    }
    return broker
}

/// The pid of the only child of `pid` (the process `unshare --fork` started), if it has one.
func onlyChild(of pid: pid_t) -> pid_t? {
    var bytes = [UInt8](repeating: 0, count: 256)
    let fd = open("/proc/\(pid)/task/\(pid)/children", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    let count = read(fd, &bytes, bytes.count)
    let children = String(decoding: bytes[0..<max(0, count)], as: UTF8.self).split(separator: " ").compactMap { pid_t($0) }
    return children.count == 1 ? children[0] : nil
}

/// A program installed beside this one (same build).
func siblingExecutable(_ name: String) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let length = readlink("/proc/self/exe", &buffer, 4095)
    let path = String(decoding: buffer[0..<max(0, length)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(path[..<path.lastIndex(of: "/")!]) + "/" + name
}

func runNamed(_ arguments: Arguments) throws {
    let unshare: String = ["/usr/bin/unshare", "/bin/unshare"].first { (path: String) in access(path, X_OK) == 0 } ?? "unshare"
    let container = [unshare, "--pid", "--fork", "--mount-proc", "--kill-child"]
    let probe = try? ProcessSpawner.spawn(unshare, arguments: ["--pid", "--fork", "--mount-proc", "true"])
    let namespaces = geteuid() == 0 && ((try? probe?.wait()) ?? nil) == .exited(0)
    var template = Array("/tmp/sockshare-bench-XXXXXX".utf8CString)
    let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    defer { rmdir(directory) }
    let total = arguments.count + 200
    let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))

    // Reference: pid-targeted tokens, claimed by this process from a broker in its own namespace.
    let local = try startBroker(at: directory + "/local.sock", wrapper: [], maximumShares: total + 10)
    defer {
        try? local.signal(SIGTERM)
        _ = try? local.wait()
    }
    let localClient = BrokerClient(socketPath: directory + "/local.sock")
    let me = ProcessIdentity.current
    let tokens = try (0..<total).map { _ in try localClient.deposit(socket.rawValue, for: me, timeToLive: .seconds(600)) }
    var pause = timespec(tv_sec: 0, tv_nsec: 50_000_000)
    nanosleep(&pause, nil)
    var reference: [Double] = []
    for (index, token) in tokens.enumerated() {
        let start = ContinuousClock.now
        try SocketShare.adopt(token).close()
        if index >= 200 { reference.append(microseconds(ContinuousClock.now - start)) }
    }
    reference.sort()

    // Ours: names at a broker in one pid namespace, claimed from another.
    let remote = try startBroker(at: directory + "/named.sock", wrapper: namespaces ? container : [], maximumShares: total + 10)
    defer {
        try? remote.signal(SIGKILL)
        _ = try? remote.wait()
    }
    let remoteClient = BrokerClient(socketPath: directory + "/named.sock")
    // The broker's own process: the child of unshare (or the broker itself without namespaces).
    let brokerPID = namespaces ? (onlyChild(of: remote.pid) ?? remote.pid) : remote.pid
    var settle = timespec(tv_sec: 0, tv_nsec: 300_000_000)
    nanosleep(&settle, nil)   // the readiness probes' connections are closed and read by now
    let descriptorsBefore = footprint(brokerPID).descriptors
    for index in 0..<total {
        _ = try remoteClient.deposit(socket.rawValue, named: "n-\(index)", policy: ClaimPolicy(uid: geteuid()), timeToLive: .seconds(600))
    }
    try socket.close()
    let (mine, theirs) = try SocketDescriptor.pair()
    let claimant = try ProcessSpawner.spawn(
        namespaces ? container[0] : siblingExecutable("sockshare-bench"),
        arguments: (namespaces ? Array(container.dropFirst()) + [siblingExecutable("sockshare-bench")] : [])
            + ["named", "--role", "claimant", "--address", directory + "/named.sock", "--count", "\(total)"],
        descriptors: [1: theirs.rawValue, 2: 2])
    try theirs.close()
    var output: [UInt8] = []
    while true {
        let chunk = try mine.receive()
        if chunk.isEmpty { break }
        output += chunk
    }
    try mine.close()
    guard try claimant.wait() == .exited(0) else { throw SocketShareError(.system, operation: "bench", detail: "the claimant failed") }
    nanosleep(&settle, nil)
    let descriptorsAfter = footprint(brokerPID).descriptors
    let heldAfter = try remoteClient.namedShares().count
    let ours = String(decoding: output, as: UTF8.self).split(separator: "\n").compactMap { Double($0) }.dropFirst(200).sorted()
    let placement = namespaces ? "across sibling pid namespaces" : "in one pid namespace (no unshare here)"
    print("named: \(arguments.count) claims each")
    print("| what | p50 | p99 |")
    print("|---|---:|---:|")
    print("| named claim \(placement) | \(String(format: percentile(Array(ours), 0.5))) | \(String(format: percentile(Array(ours), 0.99))) |")
    print("| reference: pid-targeted claim, one namespace | \(String(format: percentile(reference, 0.5))) | \(String(format: percentile(reference, 0.99))) |")
    print("broker descriptors: \(descriptorsBefore) before \(total) named deposits, \(descriptorsAfter) after all were claimed (\(heldAfter) still held)")
}

/// The claimant in its own pid namespace: claims n-0 … n-(count-1), prints each claim's µs.
func namedClaimant(_ arguments: Arguments) throws {
    let client = BrokerClient(socketPath: arguments.address)
    var lines = ""
    for index in 0..<arguments.count {
        let start = ContinuousClock.now
        try client.claim(named: "n-\(index)").close()
        lines += "\(microseconds(ContinuousClock.now - start))\n"
    }
    print(lines, terminator: "")
}
