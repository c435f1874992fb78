import Foundation

/// Polls the pool for scheduled runs and offers each to `runs`, the owner of their lifecycle, which takes
/// those it can (a free slot, not handled or claimed before). Polls every `--query-seconds`, and at once when the events
/// stream reports a run of the pool becoming due (`EventWatch`); while the stream is up, the poll rests
/// (`PollCadence`).
struct PollService: Service {
    let settings: Settings
    let client: PrefectClient
    /// The owner of the runs' lifecycle, and the registry's free slots.
    let runs: RunLifecycle
    /// The pool as last read: no poll before it is known.
    let lookups: RunLookups
    let status: WorkerStatus
    let metrics: Metrics
    /// The events stream's state and doorbell: a run of the pool becoming due, or the pool changing.
    let push: PushSignals
    let log: Logger

    /// Polls for scheduled runs and offers each new one, within `--limit`.
    func run() async {
        var lastCount: Date?
        var cadence = PollCadence(settings: settings)
        while !Task.isCancelled {
            status.pollLoopTicked()
            let resting = cadence.rests(socket: push.socketState, poolHasLimit: lookups.pool?.concurrencyLimit != nil,
                                        lastChange: push.lastPoolChange, now: Date())
            let free = await runs.registry.freeSlots
            if free == 0 {
                // No poll while every slot is busy: the backlog is counted instead (the autoscaling signal).
                let interval = cadence.interval(resting: resting)
                await countDueRuns(&lastCount, every: interval)
                let registry = runs.registry
                await firstOf({ await registry.waitForRelease() },
                              { try? await Task.sleep(seconds: interval) })
                continue
            }
            let batchLimit = min(free ?? 200, 200)
            var runs: [FlowRun] = []
            var polled = false
            // Resting, the poll looks past the prefetch: a limit could fill with runs not yet due (the server
            // orders by queue priority first) and hide a due one, so it asks for all (the server caps at 200)
            // and the registry takes what its free slots allow.
            let limit = settings.limit == nil || resting ? nil : batchLimit
            if lookups.pool != nil {
                do {
                    let horizon = settings.runOnce ? 0 : cadence.lookahead(resting: resting)
                    runs = try await client.scheduledFlowRuns(pool: settings.pool, queues: settings.workQueues,
                                                              before: Date().addingTimeInterval(horizon),
                                                              limit: limit)
                    status.pollSucceeded()
                    polled = true
                } catch is CancellationError {
                    return
                } catch {
                    log.warning("polling for flow runs failed: \(error); next poll in \(String(format: "%g", cadence.wait(resting: resting, polled: false, now: Date()))) s")
                }
            }
            var taken = 0, takenDue = 0
            let now = Date()
            // A failed poll forgets no run it knew of.
            let offered = polled ? cadence.polled(runs, at: now) : []
            for run in offered.sorted(by: { ($0.scheduledStart ?? .distantPast) < ($1.scheduledStart ?? .distantPast) }) {
                if Task.isCancelled { return }  // claiming stopped: the rest are left for other workers
                guard await self.runs.offer(run) else { continue }
                taken += 1
                if DueRuns.isDue(run, now: now) { takenDue += 1 }
            }
            if polled {
                if let due = DueRuns.fromPoll(runs, limit: limit, takenDue: takenDue, now: now) {
                    metrics.setRunsDue(due)
                } else {
                    await countDueRuns(&lastCount, every: settings.querySeconds)
                }
            }
            if settings.runOnce { return }
            // A full batch means more may be waiting: poll again as soon as there is room.
            if runs.count >= batchLimit, taken > 0 { continue }
            // Until the next poll, or sooner when the events stream says a run of the pool became due.
            await push.pollNow.wait(timeout: cadence.wait(resting: resting, polled: polled, now: Date()))
        }
    }

    /// One `POST /flow_runs/count` for the gauge of due runs, unless one was sent within `interval`.
    private func countDueRuns(_ lastCount: inout Date?, every interval: Double) async {
        guard lookups.pool != nil, DueRuns.mayCount(lastCount: lastCount, interval: interval, now: Date()) else { return }
        lastCount = Date()
        do {
            let due = try await client.countDueFlowRuns(pool: settings.pool, queues: settings.workQueues, before: Date())
            metrics.setRunsDue(due)
        } catch {
            log.debug("counting the due flow runs of work pool '\(settings.pool)' failed: \(error); the gauge keeps its last value until the next poll")
        }
    }
}
