/// How long a crashed worker's slot waits before it is started again: 100 ms, doubling per crash up
/// to 10 s, back to 100 ms once a worker had run 10 s (it was healthy; this crash is news).
///
/// A pure value: the supervisor asks it for each delay and counts restarts per slot with it.
package struct RestartBackoff: Sendable, Equatable {
    package var initial: Duration = .milliseconds(100)
    package var maximum: Duration = .seconds(10)
    /// A worker that ran this long before it ended was healthy: its slot's delay starts over.
    package var healthyUptime: Duration = .seconds(10)
    /// The next delay per slot.
    private var delays: [Int: Duration] = [:]
    /// Restarts per slot so far.
    package private(set) var restarts: [Int: Int] = [:]

    package init() {}

    /// A backoff that continues counting where a predecessor left off.
    package init(restarts: [Int: Int]) {
        self.restarts = restarts
    }

    /// The delay before slot `slot` starts again, its worker having run `uptime` (nil: it never
    /// started). Counts the restart.
    package mutating func delay(forSlot slot: Int, uptime: Duration?) -> Duration {
        var delay = delays[slot] ?? initial
        if let uptime, uptime >= healthyUptime { delay = initial }
        delays[slot] = min(delay * 2, maximum)
        restarts[slot, default: 0] += 1
        return delay
    }
}
