import Foundation

/// The autoscaling signal: runs due in the pool (or the worker's queues) that no worker has claimed, served
/// as the gauge `prefect_worker_pool_runs_due` in /metrics (a KEDA or HPA target). Cheap: a poll that
/// returned every scheduled run already shows them; only a poll cut short by its limit, or no poll at all
/// (every slot busy), costs one `POST /flow_runs/count`, at most once per poll interval.
enum DueRuns {
    /// The server caps `get_scheduled_flow_runs` at PREFECT_API_DEFAULT_LIMIT (200) when no limit is sent.
    static let serverDefaultLimit = 200

    /// From a poll that asked for at most `limit` runs and got `runs`: those due by `now` that this worker
    /// did not take (`takenDue` of them). nil when the poll may have been cut short, so it cannot tell.
    static func fromPoll(_ runs: [FlowRun], limit: Int?, takenDue: Int, now: Date) -> Int? {
        guard runs.count < (limit ?? serverDefaultLimit) else { return nil }
        let due = runs.filter { isDue($0, now: now) }.count
        return max(0, due - takenDue)
    }

    /// Whether the run's scheduled start has come (a run without one is due).
    static func isDue(_ run: FlowRun, now: Date) -> Bool {
        (run.scheduledStart ?? .distantPast) <= now
    }

    /// Whether a count may be sent now: the last one is at least `interval` seconds old.
    static func mayCount(lastCount: Date?, interval: Double, now: Date) -> Bool {
        guard let lastCount else { return true }
        return now.timeIntervalSince(lastCount) >= interval
    }
}
