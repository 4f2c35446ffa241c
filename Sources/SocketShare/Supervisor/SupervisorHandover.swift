import FoundationEssentials

/// What a supervisor hands its successor on an upgrade, besides descriptors: the configuration,
/// where things are, the generations and every worker. The descriptors follow in this order: the
/// listeners, the control socket, the notify socket, then for each worker its pidfd and, in handoff
/// mode, the supervisor's end of its channel and the worker's doorbell if it has one.
struct SupervisorHandover: Codable {
    struct TransferredWorker: Codable {
        var pid: Int32
        var slot: Int
        var generation: Int
        var isReady: Bool
        var uptimeMilliseconds: Int
        /// Milliseconds left before its drain deadline, if it is draining.
        var drainMilliseconds: Int?
        /// Whether connections go to it (handoff mode).
        var accepting: Bool
        /// Whether its doorbell follows its channel (handoff mode; absent from older supervisors).
        var hasDoorbell: Bool?
    }

    var configuration: Supervisor.Configuration
    var controlPath: String
    var notifyPath: String
    var serviceManagerAddress: String?
    var listenerNames: [String]
    var ownedPaths: [String]
    var generation: Int
    var currentGeneration: Int
    var restarts: [Int: Int]
    var lastReload: ServeStatus.ReloadOutcome?
    var workers: [TransferredWorker]
    var logLevel: String

    var json: [UInt8] { Array((try? JSONEncoder().encode(self)) ?? Data()) }

    init(
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

    init(json: [UInt8]) throws(SocketShareError) {
        do {
            self = try JSONDecoder().decode(SupervisorHandover.self, from: Data(json))
        } catch {
            throw SocketShareError(.protocolViolation, operation: "take over", detail: "the predecessor's state is unreadable: \(error)")
        }
    }
}
