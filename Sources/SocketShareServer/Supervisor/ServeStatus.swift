import FoundationEssentials
import SocketShare
import SocketShareCore

/// What `sockshare status --control PATH` shows of a running `sockshare serve`: listeners, workers
/// and counters. It travels as JSON on the control socket (`docs/SERVE.md`).
public struct ServeStatus: Codable, Sendable, Hashable {
    /// A listener.
    public struct Listener: Codable, Sendable, Hashable {
        /// Its name.
        public var name: String
        /// Its address (`tcp://127.0.0.1:8080`).
        public var address: String
    }

    /// A worker process.
    public struct Worker: Codable, Sendable, Hashable {
        /// Its pid.
        public var pid: Int32
        /// Its slot (0 to workers − 1); a restarted worker takes its predecessor's slot.
        public var slot: Int
        /// Its generation.
        public var generation: Int
        /// Connections it acknowledged (handoff mode; nil in shared mode, where the kernel hands them out).
        public var handled: Int?
        /// Connections sent to it and not acknowledged, plus those it reports open (handoff mode).
        public var inFlight: Int?
        /// Connections sent to it and not acknowledged (handoff mode): another worker gets them if it dies.
        public var unacknowledged: Int?
        /// How often its slot was restarted after a crash.
        public var restarts: Int
        /// Whether it said it is ready (handoff mode: `ready()`).
        public var ready: Bool
        /// Seconds since it started.
        public var uptimeSeconds: Int
        /// Whether its generation was replaced and it is finishing its connections.
        public var draining: Bool
    }

    /// A worker serve did not start, connected at its worker socket (`--worker-socket`).
    public struct ExternalWorker: Codable, Sendable, Hashable {
        /// Its number at serve, in the order they connected.
        public var id: Int
        /// Its pid as serve sees it; 0 when it runs in a pid namespace serve cannot see.
        public var pid: Int32
        /// Its uid, by the kernel's word at connect time.
        public var uid: UInt32
        /// Connections it acknowledged.
        public var handled: Int
        /// Connections sent to it and not acknowledged, plus those it reports open.
        public var inFlight: Int
        /// Connections sent to it and not acknowledged: another worker gets them if it goes away.
        public var unacknowledged: Int
        /// Whether it said it is ready (it gets no connection before).
        public var ready: Bool
        /// Seconds since it connected.
        public var connectedSeconds: Int
    }

    /// How the last reload (or upgrade) ended.
    public struct ReloadOutcome: Codable, Sendable, Hashable {
        /// `reload` or `upgrade`.
        public var kind: String
        /// The generation it started (a reload), or the new supervisor's pid (an upgrade).
        public var generation: Int
        /// Whether it succeeded.
        public var succeeded: Bool
        /// Why it failed (or what happened).
        public var reason: String
        /// When it ended, ISO 8601.
        public var finishedAt: String
        /// How long it took, in milliseconds.
        public var milliseconds: Int
    }

    /// The supervisor's pid.
    public var pid: Int32
    /// `shared` or `handoff`.
    public var mode: String
    /// `rr` or `least` (handoff mode).
    public var policy: String?
    /// The listeners.
    public var listeners: [Listener]
    /// The workers now running.
    public var workers: [Worker]
    /// Connections accepted by the dispatcher (handoff mode).
    public var accepted: Int?
    /// Connections sent again after their worker died, stalled or refused them (handoff mode).
    public var redispatched: Int?
    /// Connections waiting in the dispatcher for a worker with room (handoff mode).
    public var waiting: Int?
    /// The generation new connections go to.
    public var generation: Int
    /// How the last reload or upgrade ended; nil before the first.
    public var lastReload: ReloadOutcome?
    /// Whether a reload or an upgrade is under way.
    public var reloading: Bool
    /// The external workers connected now; nil without a worker socket.
    public var externalWorkers: [ExternalWorker]?
    /// External workers refused by their uid or gid, in all; nil without a worker socket.
    public var externalRefusals: Int?

    /// The JSON form.
    public var json: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array((try? encoder.encode(self)) ?? Data())
    }

    /// Decodes the JSON form.
    public init(json: [UInt8]) throws(SocketShareError) {
        do {
            self = try JSONDecoder().decode(ServeStatus.self, from: Data(json))
        } catch {
            throw SocketShareError(.protocolViolation, operation: "status", detail: "the control socket's answer is not a status: \(error)")
        }
    }

    package init(
        pid: Int32, mode: String, policy: String?, listeners: [Listener], workers: [Worker], accepted: Int?,
        redispatched: Int?, waiting: Int?, generation: Int, lastReload: ReloadOutcome?, reloading: Bool,
        externalWorkers: [ExternalWorker]? = nil, externalRefusals: Int? = nil
    ) {
        self.externalWorkers = externalWorkers
        self.externalRefusals = externalRefusals
        self.lastReload = lastReload
        self.reloading = reloading
        self.pid = pid
        self.mode = mode
        self.policy = policy
        self.listeners = listeners
        self.workers = workers
        self.accepted = accepted
        self.redispatched = redispatched
        self.waiting = waiting
        self.generation = generation
    }
}
