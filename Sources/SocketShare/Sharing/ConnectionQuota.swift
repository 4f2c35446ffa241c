import Glibc

/// How many client connections a holder keeps open at once, and how many of them one uid may take,
/// so that one user's flood of connections — silent ones, or claims parked for a long wait — cannot
/// take the slots everyone else needs.
///
/// A pure value: the holder asks ``admit(_:)`` for each new connection and says ``release(_:)`` when
/// it closes. `trusted` uids (root, the holder's own user) are not limited per uid and may use the
/// last `reserved` slots, which nobody else may: their requests (`status`, claims, deposits) are
/// served even while others fill the rest.
package struct ConnectionQuota: Sendable, Equatable {
    /// The most connections at once.
    package var total: Int
    /// The most one untrusted uid may have open; nil for no such limit.
    package var perUser: Int?
    /// Slots only trusted uids may take.
    package var reserved: Int
    /// Uids with neither limit (root, the holder's own user).
    package var trusted: Set<uid_t>

    private var open: [uid_t: Int] = [:]
    private var untrustedCount = 0
    /// Connections open now.
    package private(set) var count = 0

    /// No per-uid limit: what an in-process sharer uses.
    package init(total: Int = 2048, perUser: Int? = nil, reserved: Int = 0, trusted: Set<uid_t> = [0, geteuid()]) {
        self.total = total
        self.perUser = perUser
        self.reserved = reserved
        self.trusted = trusted
    }

    /// Connections `uid` has open now.
    package func count(of uid: uid_t) -> Int { open[uid, default: 0] }

    /// Takes a slot for a new connection from `uid`: nil when it may stay, else why not.
    package mutating func admit(_ uid: uid_t) -> String? {
        guard count < total else { return "the broker holds \(count) connections, its limit" }
        if !trusted.contains(uid) {
            if let perUser, open[uid, default: 0] >= perUser {
                return "uid \(uid) has \(perUser) connections open at this broker, its limit; close some"
            }
            guard untrustedCount < total - reserved else {
                return "the connections open to users other than root and the broker's own are at their limit"
            }
            untrustedCount += 1
        }
        open[uid, default: 0] += 1
        count += 1
        return nil
    }

    /// Gives back the slot of a connection of `uid` that closed.
    package mutating func release(_ uid: uid_t) {
        guard let held = open[uid], held > 0 else { return }
        open[uid] = held == 1 ? nil : held - 1
        count -= 1
        if !trusted.contains(uid) { untrustedCount -= 1 }
    }
}
