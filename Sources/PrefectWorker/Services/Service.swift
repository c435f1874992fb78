import Foundation

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
    /// Services of the stage that have not returned yet.
    private let running = Condition(0)

    init() {}

    /// Runs `service` in a child task of `group` until it returns or the stage is stopped.
    func start(_ service: any Service, in group: inout DiscardingTaskGroup) {
        running.update { $0 += 1 }
        let stopRequested = self.stopRequested
        let running = self.running
        group.addTask {
            await firstOf({ await service.run() }, { await stopRequested.wait() })
            running.update { $0 -= 1 }
        }
    }

    /// Returns once every service of the stage has returned (by itself, or because the stage was stopped).
    func finished() async {
        await running.wait(until: { $0 == 0 }, cancellation: .ignored)
    }

    /// Stops every service of the stage and waits for them to return.
    func stop() async {
        stopRequested.open()
        await finished()
    }
}
