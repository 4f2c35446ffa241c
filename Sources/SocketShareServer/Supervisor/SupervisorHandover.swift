import FoundationEssentials
import SocketShare
import SocketShareCore

/// What a supervisor hands its successor on an upgrade, besides descriptors: the configuration,
/// where things are, the generations and every worker. The descriptors follow in this order: the
/// listeners, the control socket, the notify socket, then for each worker its pidfd and, in handoff
/// mode, the supervisor's end of its channel and the worker's doorbell if it has one.
package struct SupervisorHandover: Codable {
    package struct TransferredWorker: Codable {
        package var pid: Int32
        package var slot: Int
        package var generation: Int
        package var isReady: Bool
        package var uptimeMilliseconds: Int
        /// Milliseconds left before its drain deadline, if it is draining.
        package var drainMilliseconds: Int?
        /// Whether connections go to it (handoff mode).
        package var accepting: Bool
        /// Whether its doorbell follows its channel (handoff mode; absent from older supervisors).
        package var hasDoorbell: Bool?
    }

    package var configuration: Supervisor.Configuration
    package var controlPath: String
    package var notifyPath: String
    package var serviceManagerAddress: String?
    package var listenerNames: [String]
    package var ownedPaths: [String]
    package var generation: Int
    package var currentGeneration: Int
    package var restarts: [Int: Int]
    package var lastReload: ServeStatus.ReloadOutcome?
    package var workers: [TransferredWorker]
    package var logLevel: String

    package var json: [UInt8] { Array((try? JSONEncoder().encode(self)) ?? Data()) }

    package init(
        configuration: Supervisor.Configuration, controlPath: String, notifyPath: String, serviceManagerAddress: String?,
        listenerNames: [String], ownedPaths: [String], generation: Int, currentGeneration: Int, restarts: [Int: Int],
        lastReload: ServeStatus.ReloadOutcome?, workers: [TransferredWorker], logLevel: String
    ) {
        self.configuration = configuration
        self.controlPath = controlPath
        self.notifyPath = notifyPath
        self.serviceManagerAddress = serviceManagerAddress
        self.listenerNames = listenerNames
        self.ownedPaths = ownedPaths
        self.generation = generation
        self.currentGeneration = currentGeneration
        self.restarts = restarts
        self.lastReload = lastReload
        self.workers = workers
        self.logLevel = logLevel
    }

    package init(json: [UInt8]) throws(SocketShareError) {
        do {
            self = try JSONDecoder().decode(SupervisorHandover.self, from: Data(json))
        } catch {
            throw SocketShareError(.protocolViolation, operation: "take over", detail: "the predecessor's state is unreadable: \(error)")
        }
    }
}
