import SocketShare
import SocketShareCore
extension Supervisor {
    /// Answers one control request. Returns false when the client has gone.
    ///
    /// Commands: `status`; `reload [SECONDS]`; `upgrade [SECONDS [BINARY]]`. A reload or upgrade is
    /// answered once it has succeeded or been rolled back.
    package func answerControl(_ channel: DescriptorChannel) -> Bool {
        guard let message = try? channel.receive(maximumBytes: 4096, deadline: .now) else { return false }
        message.closeDescriptors()
        let words = String(decoding: message.bytes, as: UTF8.self).trimmingSpaces.split(separator: " ", maxSplits: 2).map(String.init)
        let seconds = words.count > 1 ? Double(words[1]) : nil
        let deadline = seconds.flatMap { $0 > 0 && $0.isFinite ? Duration.milliseconds(Int64($0 * 1000)) : nil } ?? configuration.reloadDeadline
        switch words.first {
        case "status":
            return (try? channel.send(status().json, deadline: .now + .seconds(1))) != nil
        case "reload":
            beginReload(deadline: deadline, requester: channel)
            return true
        case "upgrade":
            beginUpgrade(binary: words.count > 2 ? words[2] : executablePath, deadline: deadline, requester: channel)
            return true
        default:
            reply(channel, ok: false, reason: "unknown command; this supervisor answers: status, reload [SECONDS], upgrade [SECONDS [BINARY]]", generation: nil)
            return true
        }
    }
}
