import Glibc
import SocketShare
import SocketShareCore

/// The control socket (`docs/SERVE.md`): `status`, `reload [SECONDS]`, `upgrade [SECONDS [BINARY]]`.
/// On the supervisor's reactor thread.
extension Supervisor {
    /// Accepts waiting control clients.
    func acceptControlConnections() {
        while let accepted = try? control.accept() {
            let channel = DescriptorChannel(accepted)
            let key = ObjectIdentifier(channel)
            controlConnections[key] = (channel, nil)
            watchControlConnection(key)
        }
    }

    /// Answers what the control client `key` sends.
    func watchControlConnection(_ key: ObjectIdentifier) {
        guard let connection = controlConnections[key], connection.watch == nil else { return }
        controlConnections[key]?.watch = try? reactor.watch(connection.channel.socket.rawValue) { [unowned self] _ in
            guard let connection = controlConnections[key] else { return }
            if !answerControl(connection.channel) {
                if let watch = connection.watch { reactor.unwatch(watch) }
                controlConnections.removeValue(forKey: key)
                try? connection.channel.close()
            }
        }
    }

    /// Answers one control request. Returns false when the client has gone.
    ///
    /// A reload or upgrade is answered once it has succeeded or been rolled back.
    func answerControl(_ channel: DescriptorChannel) -> Bool {
        guard let message = try? channel.receive(maximumBytes: 4096, deadline: .now) else { return false }
        message.closeDescriptors()
        let words = String(decoding: message.bytes, as: UTF8.self).trimmingSpaces.split(separator: " ", maxSplits: 2).map(String.init)
        let seconds = words.count > 1 ? Double(words[1]) : nil
        let deadline = seconds.flatMap { $0 > 0 && $0.isFinite ? Duration.milliseconds(Int64($0 * 1000)) : nil } ?? configuration.reloadDeadline
        switch words.first {
        case "status":
            return (try? channel.send(currentStatus().json, deadline: .now + .seconds(1))) != nil
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
