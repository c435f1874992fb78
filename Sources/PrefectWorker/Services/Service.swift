import Foundation
import Synchronization

/// A long-running part of the worker (a loop, a server, a shipper): `run()` returns when its work is done or
/// its task is cancelled.
protocol Service: Sendable {
    func run() async
}

/// Services that start in the worker's task group and stop together: `stop()` cancels each one (its `run()`
/// sees a cancelled task) and returns once all of them have returned. `Worker` stops its stages in a
/// declared order, so what a later stage needs (the outbox, say) outlives what feeds it.
final class ServiceStage: Sendable {
    private let stopRequested = Latch()
    private struct State {
        var running = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    init() {}

    /// Runs `service` in a child task of `group` until it returns or the stage is stopped.
    func start(_ service: any Service, in group: inout DiscardingTaskGroup) {
        state.withLock { $0.running += 1 }
        let stopRequested = self.stopRequested
        group.addTask {
            await firstOf({ await service.run() }, { await stopRequested.wait() })
            self.serviceReturned()
        }
    }

    private func serviceReturned() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.running -= 1
            guard state.running == 0 else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once every service of the stage has returned (by itself, or because the stage was stopped).
    func finished() async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                if state.running == 0 { return true }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Stops every service of the stage and waits for them to return.
    func stop() async {
        stopRequested.open()
        await finished()
    }
}
