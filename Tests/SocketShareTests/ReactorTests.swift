import Glibc
import Synchronization
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

/// The reactor under the dispatcher and the shared-listener acceptor: callbacks on its one thread,
/// timers in order, answers across threads, and a stop that joins and closes what it opened.
extension SocketShareTests {
    @Suite struct ReactorTests {
        @Test func tasksAndAnswersRunOnTheReactorsThread() throws {
            let reactor = try Reactor(name: "test")
            try reactor.start()
            let caller = pthread_self()
            let onReactor = reactor.sync { pthread_equal(pthread_self(), caller) == 0 && reactor.inReactor }
            #expect(onReactor == true)
            #expect(!reactor.inReactor, "the test's thread is not the reactor's")
            let seen = Atomic(0)
            for _ in 0..<100 { reactor.execute { seen.add(1, ordering: .relaxed) } }
            #expect(reactor.sync { seen.load(ordering: .relaxed) } == 100, "tasks run in order, before a later answer")
            reactor.stop()
        }

        @Test func aWatchedDescriptorCallsBackUntilItIsDrainedOrUnwatched() throws {
            let reactor = try Reactor(name: "test")
            try reactor.start()
            let (mine, theirs) = try SocketDescriptor.pair(kind: .stream)
            let reads = Atomic(0)
            let watch = reactor.sync { () -> Reactor.Watch? in
                try? reactor.watch(mine.rawValue) { _ in
                    _ = try? mine.receive()   // drains
                    reads.add(1, ordering: .relaxed)
                }
            }
            #expect(watch != nil)
            try theirs.sendAll([1])
            #expect(eventually { reads.load(ordering: .relaxed) == 1 })
            try theirs.sendAll([2])
            #expect(eventually { reads.load(ordering: .relaxed) == 2 })
            _ = reactor.sync { reactor.unwatch(watch!!) }
            try theirs.sendAll([3])
            usleep(50_000)
            #expect(reads.load(ordering: .relaxed) == 2, "no callback once unwatched")
            reactor.stop()
            try mine.close()
            try theirs.close()
        }

        @Test func timersFireInDeadlineOrderAndCancelledOnesDoNot() throws {
            let reactor = try Reactor(name: "test")
            try reactor.start()
            let fired = Locked<[Int]>([])
            _ = reactor.sync {
                let now = ContinuousClock.now
                reactor.schedule(at: now + .milliseconds(60)) { fired.withLock { $0.append(3) } }
                reactor.schedule(at: now + .milliseconds(20)) { fired.withLock { $0.append(1) } }
                let cancelled = reactor.schedule(at: now + .milliseconds(30)) { fired.withLock { $0.append(99) } }
                reactor.schedule(at: now + .milliseconds(40)) { fired.withLock { $0.append(2) } }
                reactor.cancel(cancelled)
            }
            #expect(eventually { fired.withLock { $0.count } == 3 })
            usleep(50_000)
            #expect(fired.withLock { $0 } == [1, 2, 3])
            reactor.stop()
        }

        @Test func stopJoinsClosesItsDescriptorsAndAnswersWhoeverStillWaits() throws {
            let before = Set(Kernel.directoryEntries("/proc/self/fd"))
            let reactor = try Reactor(name: "test")
            try reactor.start()
            // A wait that nothing answers: the stop answers it (nil) instead of leaving it hanging.
            let answered = Atomic(false)
            let gotNil = Atomic(false)
            try DetachedThread.start {
                let value: Int? = reactor.wait { _ in }
                gotNil.store(value == nil, ordering: .relaxed)
                answered.store(true, ordering: .releasing)
            }
            usleep(50_000)
            let early = answered.load(ordering: .acquiring)
            #expect(!early)
            reactor.stop()
            #expect(eventually { answered.load(ordering: .acquiring) })
            let wasNil = gotNil.load(ordering: .relaxed)
            #expect(wasNil)
            #expect(reactor.sync { 1 } == nil, "nothing runs after the stop")
            reactor.execute { Issue.record("a task ran after the stop") }
            reactor.stop()   // idempotent
            #expect(Set(Kernel.directoryEntries("/proc/self/fd")).subtracting(before).isEmpty, "epoll and eventfd closed")
        }

        @Test func aReactorNeverStartedAnswersNothingAndDoesNotBlock() throws {
            let reactor = try Reactor(name: "test")
            #expect(reactor.sync { 1 } == nil)
            reactor.stop()
        }
    }
}
