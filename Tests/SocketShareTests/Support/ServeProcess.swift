import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// A `sockshare serve` in its own process, for the tests.
final class ServeProcess {
    let process: ChildProcess
    let controlPath: String
    let logPath: String
    private var stopped = false

    /// Starts `sockshare serve ARGUMENTS -- COMMAND` and waits until every worker runs.
    init(_ arguments: [String], command: [String], workers: Int = 2, descriptors: [CInt: CInt] = [:],
         environment: [String: String]? = nil, waitForReady: Bool = true, controlPath: String? = nil) throws {
        let base = BrokerProcess.freshDirectory()
        self.controlPath = controlPath ?? base + "/control.sock"
        logPath = base + "/serve.log"
        let log = try Kernel.open(logPath, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        defer { try? Kernel.close(log) }
        var placed = descriptors
        placed[2] = log
        let controlPath = self.controlPath
        process = try ProcessSpawner.spawn(
            Paths.sockshare,
            arguments: ["serve", "--control", controlPath, "--workers", "\(workers)", "--log-level", "debug"] + arguments + ["--"] + command,
            environment: environment, descriptors: placed)
        let ready = eventually(timeout: .seconds(30)) {
            if (try? process.wait(deadline: .now)) ?? nil != nil { return true }
            guard let status = try? SupervisorClient(controlPath: controlPath).status() else { return false }
            return status.workers.count == workers && (!waitForReady || status.mode == "shared" || status.workers.allSatisfy(\.ready))
        }
        guard ready, Kernel.processExists(process.pid), (try? status()) != nil else {
            stopped = true
            throw HelperError(code: "serve", text: "sockshare serve did not start: \(log)")
        }
    }

    deinit {
        if !stopped {
            // Its workers too: a worker left running would outlive the test run and hold its output open.
            let descendants = Self.descendants(of: process.pid)
            try? process.signal(SIGKILL)
            for pid in descendants { _ = Glibc.kill(pid, SIGKILL) }
            _ = try? process.wait()
        }
    }

    /// Every process below `pid` (its children, theirs, …), from `/proc/*/stat`.
    static func descendants(of pid: pid_t) -> [pid_t] {
        var parents: [pid_t: [pid_t]] = [:]
        for name in Kernel.directoryEntries("/proc") {
            guard let child = pid_t(name), let stat = try? Kernel.readFile("/proc/\(name)/stat", limit: 4096),
                  let close = stat.lastIndex(of: UInt8(ascii: ")")) else { continue }
            let fields = stat[(close + 2)...].split(separator: UInt8(ascii: " "))
            guard fields.count > 1, let parent = pid_t(String(decoding: fields[1], as: UTF8.self)) else { continue }
            parents[parent, default: []].append(child)
        }
        var found: [pid_t] = []
        var queue = [pid]
        while let next = queue.popLast() {
            for child in parents[next] ?? [] {
                found.append(child)
                queue.append(child)
            }
        }
        return found
    }

    func status() throws -> ServeStatus { try SupervisorClient(controlPath: controlPath).status() }

    var log: String { String(decoding: (try? Kernel.readFile(logPath, limit: 8 << 20)) ?? [], as: UTF8.self) }

    /// The first listener's address.
    func address() throws -> SocketAddress {
        let text = try status().listeners[0].address
        return try SocketEndpoint(parsing: text).address
    }

    /// Open descriptors of a process.
    static func descriptorCount(_ pid: pid_t) -> Int { Kernel.directoryEntries("/proc/\(pid)/fd").count }

    @discardableResult
    func stop() throws -> ChildProcess.Termination? {
        stopped = true
        try process.signal(SIGTERM)
        return try process.wait(deadline: .now + .seconds(40))
    }
}
