// sockshare-bench: whole-process measurements of SocketShare against the kernel's own floor,
// measured in the same run (these machines are shared and noisy; ratios travel, absolute times do not).
//
//   sockshare-bench roundtrip [--count N] [--via sharer|pidfd]
//     share/adopt round trip between two processes: the source duplicates a socket for the target,
//     passes the token on a socketpair, the target adopts it, closes it and says "done".
//     Reference: the same two processes passing the descriptor itself with SCM_RIGHTS and "done".
//
// Run a release build: swift build -c release && .build/release/sockshare-bench roundtrip

import Glibc
import SocketShare

struct Arguments {
    var command = "roundtrip"
    var count = 2000
    var via = ShareOptions.Via.sharer
    var role = "source"

    init(_ words: [String]) {
        var words = words[...]
        if let first = words.first, !first.hasPrefix("-") { command = first; words = words.dropFirst() }
        while let word = words.popFirst() {
            switch word {
            case "--count": count = Int(words.popFirst() ?? "") ?? count
            case "--via": via = ShareOptions.Via(rawValue: words.popFirst() ?? "") ?? via
            case "--role": role = words.popFirst() ?? role
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
    sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
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

func runRoundTrip(_ arguments: Arguments) throws {
    let (mine, theirs) = try SocketDescriptor.pair(kind: .seqpacket)
    let target = try ProcessSpawner.spawn(
        "/proc/self/exe", arguments: ["roundtrip", "--role", "target"], descriptors: [3: theirs.rawValue])
    try theirs.close()
    let channel = DescriptorChannel(mine)
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
    print("share/adopt round trip between two processes, \(arguments.count) samples, via \(arguments.via)")
    print("| what | p50 µs | p99 µs |")
    print("|---|---:|---:|")
    print(line("duplicate + token over IPC + adopt (claim, SCM_RIGHTS, ack) + close", ours))
    print(line("reference: SCM_RIGHTS of the descriptor itself + close", reference))
    print("ratio p50: \(String(format: percentile(ours, 0.5) / percentile(reference, 0.5)))x the kernel's floor")
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
    default:
        FileHandle.standardError("sockshare-bench: unknown command \(arguments.command) (roundtrip)")
        exit(64)
    }
} catch {
    FileHandle.standardError("sockshare-bench: \(error)")
    exit(1)
}
