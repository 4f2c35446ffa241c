import Glibc
import SocketShare
import SocketShareCore

/// The control socket (`docs/SERVE.md`, `ControlRequest`): `status`, `reload [SECONDS]`,
/// `upgrade [SECONDS [BINARY]]`, from the users `ControlAccess` admits.
/// On the supervisor's reactor thread.
extension Supervisor {
    /// A control client, on the supervisor's reactor thread.
    package final class ControlConnection {
        let channel: DescriptorChannel
        let privilege: ControlAccess.Privilege
        let uid: uid_t
        var watch: Reactor.Watch?
        /// Drops the connection if it has not spoken by then.
        var silence: Reactor.Timer?

        init(channel: DescriptorChannel, privilege: ControlAccess.Privilege, uid: uid_t) {
            self.channel = channel
            self.privilege = privilege
            self.uid = uid
        }
    }

    /// The most control connections one granted uid may have open (serve's own uid and root: no limit).
    static let controlConnectionsPerGrantedUser = 8
    /// The most control connections granted users may have open together.
    static let controlConnectionsForGranted = 64
    /// How long a control client may stay silent after connecting.
    static let controlSilence: Duration = .seconds(10)

    /// Accepts waiting control clients: serve's own user, root, and whoever
    /// ``Configuration/controlAccess`` grants, by `SO_PEERCRED` (and `SO_PEERGROUPS`), a granted
    /// uid at most ``controlConnectionsPerGrantedUser`` at once; the others are told no and closed.
    func acceptControlConnections() {
        for _ in 0..<64 {
            let accepted: SocketDescriptor
            do throws(SocketShareError) {
                guard let next = try control.accept() else { return }
                accepted = next
            } catch where error.code == .limitReached {
                // EMFILE/ENFILE: the socket stays readable, so watching it now would spin.
                if let controlWatch {
                    reactor.setReadable(controlWatch, false)
                    reactor.schedule(at: .now + .milliseconds(100)) { [unowned self] in
                        if let watch = self.controlWatch { reactor.setReadable(watch, true) }
                    }
                }
                logger.warning("out of descriptors: taking control connections again in 100 ms")
                return
            } catch {
                return
            }
            let peer = try? Kernel.peerCredentials(accepted.rawValue)
            let privilege = peer.map { peer in
                let groups = configuration.controlAccess.groups.isEmpty ? [] : Kernel.peerGroups(accepted.rawValue)
                return configuration.controlAccess.privilege(uid: peer.uid, gid: peer.gid, groups: groups, serveUID: geteuid())
            } ?? .refused
            let channel = DescriptorChannel(accepted)
            if let refusal = controlRefusal(privilege, uid: peer?.uid) {
                if let peer, let skipped = controlRefusals.admit(peer.uid, at: .now) {
                    logger.warning("refused a control connection", metadata: [
                        "pid": "\(peer.pid)", "uid": "\(peer.uid)", "gid": "\(peer.gid)", "why": "\(refusal)",
                        "refusedSinceLastLine": "\(skipped)",
                    ])
                }
                channel.turnAway(ControlAnswer(ok: false, reason: refusal, generation: nil).json)
                continue
            }
            let connection = ControlConnection(channel: channel, privilege: privilege, uid: peer?.uid ?? 0)
            let key = ObjectIdentifier(connection)
            controlConnections[key] = connection
            connection.silence = reactor.schedule(at: .now + Self.controlSilence) { [unowned self] in
                closeControlConnection(key)
            }
            watchControlConnection(key)
        }
    }

    /// Why a control client of `privilege` and `uid` may not connect now, or nil.
    private func controlRefusal(_ privilege: ControlAccess.Privilege, uid: uid_t?) -> String? {
        switch privilege {
        case .refused:
            return "not allowed: this supervisor's control socket admits its own user and root"
                + (configuration.controlAccess.grantsOthers ? ", and the users and groups it was told to" : "")
        case .granted:
            let granted = controlConnections.values.filter { $0.privilege == .granted }
            if granted.count >= Self.controlConnectionsForGranted {
                return "too many control connections are open; close one first"
            }
            if granted.filter({ $0.uid == uid }).count >= Self.controlConnectionsPerGrantedUser {
                return "uid \(uid ?? 0) has \(Self.controlConnectionsPerGrantedUser) control connections open, its limit"
            }
            return nil
        case .owner:
            return nil
        }
    }

    /// Answers what the control client `key` sends.
    func watchControlConnection(_ key: ObjectIdentifier) {
        guard let connection = controlConnections[key], connection.watch == nil else { return }
        connection.watch = try? reactor.watch(connection.channel.socket.rawValue) { [unowned self] _ in
            guard let connection = controlConnections[key] else { return }
            if let silence = connection.silence {
                reactor.cancel(silence)
                connection.silence = nil
            }
            if !answerControl(connection.channel, privilege: connection.privilege) { closeControlConnection(key) }
        }
    }

    /// Closes the control client `key`.
    func closeControlConnection(_ key: ObjectIdentifier) {
        guard let connection = controlConnections.removeValue(forKey: key) else { return }
        if let watch = connection.watch { reactor.unwatch(watch) }
        if let silence = connection.silence { reactor.cancel(silence) }
        try? connection.channel.close()
    }

    /// Closes every control client.
    func closeControlConnections() {
        for key in Array(controlConnections.keys) { closeControlConnection(key) }
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
