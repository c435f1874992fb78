import Foundation

/// Polls the pool for scheduled runs and hands each one it can take (a free slot, not handled or claimed
/// before) to `launcher`, which runs its supervisor. Polls every `--query-seconds`, and at once when the events
/// stream reports a run of the pool becoming due (`EventWatch`).
struct PollService: Service {
    let context: WorkerContext
    let launcher: RunLauncher
    var settings: Settings { context.settings }
    var client: PrefectClient { context.client }

    /// Polls for scheduled runs and hands each new one to a supervisor, within `--limit`.
    func run() async {
        while !Task.isCancelled {
            context.status.pollLoopTicked()
            let free = await context.registry.freeSlots
            if free == 0 {
                let registry = context.registry
                await firstOf({ await registry.waitForRelease() },
                              { try? await Task.sleep(seconds: self.settings.querySeconds) })
                continue
            }
            let batchLimit = min(free ?? 200, 200)
            var runs: [FlowRun] = []
            if context.pool != nil {
                do {
                    let horizon = settings.runOnce ? 0 : settings.prefetchSeconds
                    runs = try await client.scheduledFlowRuns(pool: settings.pool, queues: settings.workQueues,
                                                              before: Date().addingTimeInterval(horizon),
                                                              limit: settings.limit == nil ? nil : batchLimit)
                    context.status.pollSucceeded()
                } catch is CancellationError {
                    return
                } catch {
                    context.log.warning("polling for flow runs failed: \(error); next poll in \(settings.querySeconds) s")
                }
            }
            var taken = 0
            for run in runs.sorted(by: { ($0.scheduledStart ?? .distantPast) < ($1.scheduledStart ?? .distantPast) }) {
                if Task.isCancelled { return }  // claiming stopped: the rest are left for other workers
                let supervisor = FlowRunSupervisor(context: context, runID: run.id)
                guard await context.registry.reserve(run, for: supervisor) else { continue }
                taken += 1
                launcher.submit(run, to: supervisor)
            }
            if settings.runOnce { return }
            // A full batch means more may be waiting: poll again as soon as there is room.
            if runs.count >= batchLimit, taken > 0 { continue }
            // Until the next poll, or sooner when the events stream says a run of the pool became due.
            await context.push.pollNow.wait(timeout: settings.querySeconds)
        }
    }
}
