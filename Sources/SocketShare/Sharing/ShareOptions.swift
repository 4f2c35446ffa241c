import SocketShareCore
/// Options for ``Sharer/duplicate(_:for:options:)-(CInt,pid_t,_)``.
public struct ShareOptions: Sendable, Hashable {
    /// Who holds the share until the target claims it.
    public enum Via: String, Sendable, Hashable, CaseIterable {
        /// The broker when one answers at its socket, else the in-process sharer.
        case auto
        /// The in-process sharer: this process holds a duplicate and serves the claim.
        case sharer
        /// The target pulls the descriptor with `pidfd_getfd(2)`; this process keeps a duplicate until then.
        case pidfd
        /// The broker daemon; fails when none answers.
        case broker
    }

    /// Who holds the share. Default `Via.auto`.
    public var via: Via
    /// How long the share may wait for its claim. Default 60 s. At expiry the held duplicate is closed.
    public var timeToLive: Duration

    /// The broker's socket, for `Via.broker` and `Via.auto`; nil for
    /// ``BrokerClient/defaultSocketPath`` (`$SOCKSHARE_BROKER`, else `broker.sock` in the runtime directory).
    public var brokerSocketPath: String?

    /// The default time to live: 60 s.
    public static let defaultTimeToLive: Duration = .seconds(60)

    /// Creates options.
    public init(via: Via = .auto, timeToLive: Duration = ShareOptions.defaultTimeToLive, brokerSocketPath: String? = nil) {
        self.via = via
        self.timeToLive = timeToLive
        self.brokerSocketPath = brokerSocketPath
    }
}
