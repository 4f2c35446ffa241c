import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// A `sockshare broker` running in its own process, for the tests, with its log in a file.
final class BrokerProcess {
    let process: ChildProcess
    let socketPath: String
    let logPath: String
    private var stopped = false

    /// Starts a broker at `directory/broker.sock` (a fresh 0700 directory by default) and waits
    /// until it answers.
    init(
        arguments: [String] = [], directory: String? = nil, takeover: Bool = false, wrapper: [String] = [],
        logLevel: String = "debug", environment: [String: String]? = nil
    ) throws {
        let base = directory ?? Self.freshDirectory()
        socketPath = base + "/broker.sock"
        logPath = base + "-broker-\(UInt32.random(in: 0...UInt32.max)).log"
        let log = try Kernel.open(logPath, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        defer { try? Kernel.close(log) }
        let program = wrapper.isEmpty ? Paths.sockshare : wrapper[0]
        let prefix = wrapper.isEmpty ? [] : Array(wrapper.dropFirst()) + [Paths.sockshare]
        process = try ProcessSpawner.spawn(
            program, arguments: prefix + ["broker", "--socket", socketPath, "--log-level", logLevel] + arguments
                + (takeover ? ["--takeover"] : []),
            environment: environment, descriptors: [2: log])
        let ready = eventually(timeout: .seconds(20)) {
            if (try? process.wait(deadline: .now)) ?? nil != nil { return true }
            return (try? BrokerClient(socketPath: socketPath).list()) != nil
        }
        guard ready, Kernel.processExists(process.pid), (try? BrokerClient(socketPath: socketPath).list()) != nil else {
            stopped = true
            throw HelperError(code: "broker", text: "the broker did not start: \(Self.log(of: logPath))")
        }
    }

    deinit {
        if !stopped {
            try? process.signal(SIGKILL)
            _ = try? process.wait()
        }
    }

    var client: BrokerClient { BrokerClient(socketPath: socketPath) }

    /// The broker's log so far.
    var log: String { Self.log(of: logPath) }

    /// The broker's open descriptors.
    var descriptorCount: Int { Kernel.directoryEntries("/proc/\(process.pid)/fd").count }

    /// The broker's descriptor count once it has settled (a client that just closed its connection
    /// is still counted until the broker has read the end of it).
    var settledDescriptorCount: Int {
        var previous = descriptorCount
        while true {
            var pause = timespec(tv_sec: 0, tv_nsec: 100_000_000)
            nanosleep(&pause, nil)
            let current = descriptorCount
            if current == previous { return current }
            previous = current
        }
    }

    /// The broker's resident memory, in KiB.
    var residentKilobytes: Int {
        let status = String(decoding: (try? Kernel.readFile("/proc/\(process.pid)/status")) ?? [], as: UTF8.self)
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    /// SIGTERM, then waits for the exit.
    @discardableResult
    func stop() throws -> ChildProcess.Termination? {
        stopped = true
        try process.signal(SIGTERM)
        return try process.wait(deadline: .now + .seconds(20))
    }

    /// Waits for the broker to exit on its own (after a takeover).
    func waitForExit() throws -> ChildProcess.Termination? {
        stopped = true
        return try process.wait(deadline: .now + .seconds(20))
    }

    static func freshDirectory() -> String {
        var template = Array((TestEnvironment.root + "/broker-XXXXXX").utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    private static func log(of path: String) -> String {
        String(decoding: (try? Kernel.readFile(path)) ?? [], as: UTF8.self)
    }
}

private func log(of path: String) -> String { String(decoding: (try? Kernel.readFile(path)) ?? [], as: UTF8.self) }
