import SocketShareCore
/// A min-heap of share deadlines, so the holder finds the next expiry without scanning every share.
///
/// Removal is lazy: a share that ends early leaves its item behind, and whoever pops it checks
/// that the share still exists with that deadline.
package struct DeadlineQueue {
    private var heap: [(deadline: ContinuousClock.Instant, id: UInt64)] = []

    /// An empty queue.
    package init() {}

    /// The earliest deadline queued (possibly of a share that has already ended).
    package var earliest: ContinuousClock.Instant? { heap.first?.deadline }

    /// Items queued, stale ones included.
    package var count: Int { heap.count }

    package mutating func insert(_ deadline: ContinuousClock.Instant, id: UInt64) {
        heap.append((deadline, id))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].deadline < heap[parent].deadline else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    /// Removes and returns the ids whose deadline is at or before `now`.
    package mutating func popDue(_ now: ContinuousClock.Instant) -> [UInt64] {
        var due: [UInt64] = []
        while let first = heap.first, first.deadline <= now {
            due.append(first.id)
            heap.swapAt(0, heap.count - 1)
            heap.removeLast()
            var parent = 0
            while true {
                let left = 2 * parent + 1
                let right = left + 1
                var smallest = parent
                if left < heap.count, heap[left].deadline < heap[smallest].deadline { smallest = left }
                if right < heap.count, heap[right].deadline < heap[smallest].deadline { smallest = right }
                if smallest == parent { break }
                heap.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return due
    }
}
