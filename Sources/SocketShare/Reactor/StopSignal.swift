import SocketShareCore

/// A one-way switch that tasks can wait on: once `signal()` is called, every `wait()`, past
/// and future, returns. For a `Service`'s `run()` that must last until a component stops.
package final class StopSignal: Sendable {
    private struct State {
        var signalled = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Locked(State())

    package init() {}

    /// Whether `signal()` was called.
    package var isSignalled: Bool { state.withLock { $0.signalled } }

    /// Flips the switch; later calls do nothing.
    package func signal() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard !state.signalled else { return [] }
            state.signalled = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the switch is flipped.
    package func wait() async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                if state.signalled { return true }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }
}
