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
         environment: [String: String]? = nil, waitForReady: Bool = true) throws {
        let base = BrokerProcess.freshDirectory()
        controlPath = base + "/control.sock"
        logPath = base + "/serve.log"
        let log = try Kernel.open(logPath, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        defer { try? Kernel.close(log) }
        var placed = descriptors
        placed[2] = log
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
            try? process.signal(SIGKILL)
            _ = try? process.wait()
        }
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
