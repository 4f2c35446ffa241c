import Glibc
import SocketShare

extension Broker {
    /// What a broker can hold on this machine: every held share and every connection is a
    /// descriptor (a connection two: its socket and its peer's pidfd), so the descriptor limit bounds
    /// them, and a broker that ran out of descriptors would fail everyone. Derived once at start, a
    /// pure value (tested without I/O).
    ///
    /// - A reserve of descriptors stays free for the broker itself and for one message's
    ///   descriptors in flight (a client may send up to 253).
    /// - Connections take at most a quarter of the rest (at most 2,048); one uid other than root and
    ///   the broker's own at most an eighth of those (at least 8, at most 64), unless configured.
    /// - Shares take what is left, at most as many as configured; one untrusted uid a quarter of
    ///   them unless configured, and untrusted uids together leave a sixteenth for root and the
    ///   broker's own user.
    package struct Capacity: Equatable, Sendable {
        /// Descriptors kept for the broker itself and one message in flight.
        package static let reservedDescriptors = 64 + 253

        /// The descriptor limit the broker runs with.
        package var descriptorLimit: Int
        /// The most shares, pid-targeted and named together.
        package var maximumShares: Int
        /// The most shares one uid may hold: for every uid when configured, else for untrusted uids only.
        package var sharesPerUser: Int
        /// Whether ``sharesPerUser`` was configured (and so applies to root and the broker's user too).
        package var sharesPerUserConfigured: Bool
        /// Shares only root and the broker's own user may take.
        package var reservedShares: Int
        /// The connection limits.
        package var connections: ConnectionQuota

        package init(descriptorLimit: Int, configuration: Configuration, brokerUID: uid_t = geteuid()) {
            self.descriptorLimit = descriptorLimit
            let usable = max(16, descriptorLimit - Self.reservedDescriptors)
            let connectionCount = max(4, min(2048, usable / 4 / 2))
            let perUser = configuration.maximumConnectionsPerUser ?? max(8, min(64, connectionCount / 8))
            connections = ConnectionQuota(
                total: connectionCount, perUser: perUser, reserved: max(2, connectionCount / 16), trusted: [0, brokerUID])
            maximumShares = max(1, min(configuration.maximumShares, usable - 2 * connectionCount))
            sharesPerUserConfigured = configuration.maximumSharesPerUser != nil
            sharesPerUser = configuration.maximumSharesPerUser ?? max(1, maximumShares / 4)
            reservedShares = maximumShares / 16
        }

        /// Why `uid`, which holds `held` shares, may not deposit one more while `total` are held;
        /// nil when it may.
        package func depositRefusal(uid: uid_t, held: Int, total: Int) -> String? {
            let trusted = connections.trusted.contains(uid)
            if total >= maximumShares {
                return "\(total) shares are held; the limit is \(maximumShares)"
            }
            if !trusted, total >= maximumShares - reservedShares {
                return "\(total) shares are held; the rest are kept for root and the broker's own user"
            }
            if (sharesPerUserConfigured || !trusted), held >= sharesPerUser {
                return "uid \(uid) holds \(sharesPerUser) shares, its limit; claim or revoke some first"
            }
            return nil
        }
    }
}
