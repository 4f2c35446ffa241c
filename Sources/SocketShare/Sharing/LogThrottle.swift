/// Says when a repeated event is worth a log line: the first of each key, then at most one a
/// second, saying how many were left out meanwhile. So a stranger who knocks 50,000 times a second
/// on a socket gets one line a second in the log, not 50,000.
///
/// A pure value: time comes in as an argument.
package struct LogThrottle<Key: Hashable>: Sendable where Key: Sendable {
    private var last: [Key: (at: ContinuousClock.Instant, skipped: Int)] = [:]
    private let interval: Duration

    package init(interval: Duration = .seconds(1)) {
        self.interval = interval
    }

    /// Whether to log the event of `key` at `now`, and how many of its events went unlogged since
    /// the last line; nil when this one is to go unlogged too.
    package mutating func admit(_ key: Key, at now: ContinuousClock.Instant) -> Int? {
        if let previous = last[key], now - previous.at < interval {
            last[key] = (previous.at, previous.skipped + 1)
            return nil
        }
        let skipped = last[key]?.skipped ?? 0
        last[key] = (now, 0)
        if last.count > 4096 { last = last.filter { now - $0.value.at < interval } }
        return skipped
    }
}
