import Glibc
import SocketShare
import SocketShareCore

/// The control socket (`docs/SERVE.md`, `ControlRequest`): `status`, `reload [SECONDS]`,
/// `upgrade [SECONDS [BINARY]]`, from the users `ControlAccess` admits.
/// On the supervisor's reactor thread.
extension Supervisor {
    /// Accepts waiting control clients: serve's own user, root, and whoever
    /// ``Configuration/controlAccess`` grants, by `SO_PEERCRED` (and `SO_PEERGROUPS`); the others
    /// are told no and closed.
    func acceptControlConnections() {
        while let accepted = try? control.accept() {
            let privilege: ControlAccess.Privilege
            if let peer = try? Kernel.peerCredentials(accepted.rawValue) {
                let groups = configuration.controlAccess.groups.isEmpty ? [] : Kernel.peerGroups(accepted.rawValue)
                privilege = configuration.controlAccess.privilege(uid: peer.uid, gid: peer.gid, groups: groups, serveUID: geteuid())
                if privilege == .refused {
                    logger.warning("refused a control connection", metadata: ["pid": "\(peer.pid)", "uid": "\(peer.uid)", "gid": "\(peer.gid)"])
                }
            } else {
                privilege = .refused
            }
            let channel = DescriptorChannel(accepted)
            guard privilege != .refused else {
                let answer = ControlAnswer(
                    ok: false,
                    reason: "not allowed: this supervisor's control socket admits its own user and root"
                        + (configuration.controlAccess.grantsOthers ? ", and the users and groups it was told to" : ""),
                    generation: nil)
                channel.turnAway(answer.json)
                continue
            }
            let key = ObjectIdentifier(channel)
            controlConnections[key] = (channel, nil, privilege)
            watchControlConnection(key)
        }
    }

    /// Answers what the control client `key` sends.
    func watchControlConnection(_ key: ObjectIdentifier) {
        guard let connection = controlConnections[key], connection.watch == nil else { return }
        controlConnections[key]?.watch = try? reactor.watch(connection.channel.socket.rawValue) { [unowned self] _ in
            guard let connection = controlConnections[key] else { return }
            if !answerControl(connection.channel, privilege: connection.privilege) {
                if let watch = connection.watch { reactor.unwatch(watch) }
                controlConnections.removeValue(forKey: key)
                try? connection.channel.close()
            }
        }
    }

    /// Answers one control request. Returns false when the client has gone.
    ///
    /// A reload or upgrade is answered once it has succeeded or been rolled back.
    func answerControl(_ channel: DescriptorChannel, privilege: ControlAccess.Privilege) -> Bool {
        guard let message = try? channel.receive(maximumBytes: 4096, deadline: .now) else { return false }
        message.closeDescriptors()
        let request: ControlRequest
        do throws(SocketShareError) {
            request = try ControlRequest(bytes: message.bytes)
        } catch {
            reply(channel, ok: false, reason: error.detail, generation: nil)
            return true
        }
        if let refusal = ControlAccess.refusal(of: request, by: privilege) {
            logger.warning("refused a control request: \(refusal)")
            reply(channel, ok: false, reason: refusal, generation: nil)
            return true
        }
        switch request {
        case .status:
            return (try? channel.send(currentStatus().json, deadline: .now + .seconds(1))) != nil
        case .reload(let deadline):
            beginReload(deadline: deadline ?? configuration.reloadDeadline, requester: channel)
            return true
        case .upgrade(let deadline, let binary):
            beginUpgrade(binary: binary ?? executablePath, deadline: deadline ?? configuration.reloadDeadline, requester: channel)
            return true
        }
    }
}
