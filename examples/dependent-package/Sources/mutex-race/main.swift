// docs/RELIABILITY.md, "Sanitizers": the program that shows ThreadSanitizer's reports on Mutex.
// docs: begin
import Glibc
import Synchronization

final class Box: Sendable { let state = Mutex<[Int: Int]>([:]) }
let box = Box()
var threads: [pthread_t] = []
for _ in 0..<2 {
    var thread = pthread_t()
    pthread_create(&thread, nil, { _ in
        for i in 0..<100_000 { box.state.withLock { $0[i % 7, default: 0] += 1 } }
        return nil
    }, nil)
    threads.append(thread)
}
for thread in threads { pthread_join(thread, nil) }
print(box.state.withLock { $0.values.reduce(0, +) })  // 200000, with two race reports
// docs: end
