import FoundationEssentials
import SocketShare
import SocketShareCore

extension SupervisorClient {
    /// The answer to a `reload` or `upgrade` command on a supervisor's control socket.
    public struct Answer: Codable, Sendable, Hashable {
        /// Whether it succeeded.
        public var ok: Bool
        /// What happened, or why it failed.
        public var reason: String
        /// The generation a reload started, or the new supervisor's pid after an upgrade.
        public var generation: Int?

        /// Creates an answer.
        public init(ok: Bool, reason: String, generation: Int?) {
            self.ok = ok
            self.reason = reason
            self.generation = generation
        }

        package var json: [UInt8] {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            return Array((try? encoder.encode(self)) ?? Data())
        }

        package init(json: [UInt8]) throws(SocketShareError) {
            do {
                self = try JSONDecoder().decode(Answer.self, from: Data(json))
            } catch {
                throw SocketShareError(
                    .protocolViolation, operation: "control", detail: "unexpected answer: \(String(decoding: json, as: UTF8.self))")
            }
        }
    }
    }

    /// What the supervisor answers control requests with.
    package typealias ControlAnswer = SupervisorClient.Answer
