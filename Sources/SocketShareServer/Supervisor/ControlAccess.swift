import Glibc
import SocketShareCore

/// Who besides serve's own user and root may use its control socket, and what each may do.
///
/// Serve's own uid and root may do everything. A user or group granted here
/// (`sockshare serve --control-user`/`--control-group`) may ask for the status, reload, and upgrade
/// to the binary serve runs; only serve's own uid and root may name another binary, since serve
/// would run it with its own privileges. Everyone else is refused at connect time, by the kernel's
/// word (`SO_PEERCRED`, `SO_PEERGROUPS`), whatever the socket file's mode.
public struct ControlAccess: Sendable, Codable, Hashable {
    /// Users (uids) granted access.
    public var users: [uid_t]
    /// Groups (gids) whose members, by primary or supplementary group, are granted access.
    public var groups: [gid_t]

    /// Grants `users` and `groups`; with none, only serve's own user and root.
    public init(users: [uid_t] = [], groups: [gid_t] = []) {
        self.users = users
        self.groups = groups
    }

    /// Whether anyone besides serve's own user and root is granted access.
    public var grantsOthers: Bool { !users.isEmpty || !groups.isEmpty }

    /// How far a control client may go.
    package enum Privilege: Equatable, Sendable {
        /// Serve's own uid or root: every command.
        case owner
        /// Granted: status, reload, and an upgrade to the binary serve runs.
        case granted
        /// Nobody serve knows: the connection is closed.
        case refused
    }

    /// The privilege of a peer with these credentials, for a serve running as `serveUID`.
    package func privilege(uid: uid_t, gid: gid_t, groups peerGroups: [gid_t], serveUID: uid_t) -> Privilege {
        if uid == serveUID || uid == 0 { return .owner }
        if users.contains(uid) || groups.contains(gid) || peerGroups.contains(where: groups.contains) { return .granted }
        return .refused
    }

    /// Why a client of `privilege` may not make `request`, or nil when it may.
    package static func refusal(of request: ControlRequest, by privilege: Privilege) -> String? {
        switch (request, privilege) {
        case (_, .refused):
            return "not allowed"
        case (.upgrade(_, let binary?), .granted):
            return "only serve's own user or root may name a binary to upgrade to (\(binary)); "
                + "ask for an upgrade without one to restart the binary serve runs"
        default:
            return nil
        }
    }
}
