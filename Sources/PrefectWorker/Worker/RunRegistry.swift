import Foundation

/// The runs this worker is handling, from reservation (before the claim) to the final report: slots and
/// dedupe. It enforces `--limit`, never lets two supervisors handle one run, and never lets a run this
/// worker claimed be taken again in the same scheduled state. A run that was reserved but not claimed (the
/// claim met failed reads, say) may be taken on the next poll. Each run's own state (its job, a cancel or
/// stop request) lives in its `FlowRunSupervisor`, which the registry finds by run id.
actor RunRegistry {
    private let limit: Int?
    private let metrics: Metrics
    private var supervisorsByID: [String: FlowRunSupervisor] = [:]
    /// `run id + state id` of runs this worker claimed recently: a run is claimed at most once per scheduled
    /// state (a stale poll may still show it SCHEDULED), while a re-run (a new SCHEDULED state) may be taken again.
    private var claimed: [String: Date] = [:]
    /// The `run id + state id` each reserved run was polled in, recorded in `claimed` once it is claimed.
    private var polledKeys: [String: String] = [:]
    /// Releases so far, and those that left the registry empty: a wait notes the count and waits for a change.
    private let released = Condition((runs: 0, emptied: 0))

    init(limit: Int?, metrics: Metrics) {
        self.limit = limit
        self.metrics = metrics
    }

    var count: Int { supervisorsByID.count }
    var runIDs: [String] { supervisorsByID.keys.sorted() }
    var freeSlots: Int? { limit.map { max(0, $0 - supervisorsByID.count) } }

    /// The supervisor of a run in flight.
    func supervisor(_ runID: String) -> FlowRunSupervisor? { supervisorsByID[runID] }

    /// Every run's supervisor, in run id order.
    var supervisors: [FlowRunSupervisor] { supervisorsByID.sorted { $0.key < $1.key }.map(\.value) }

    private static func key(_ run: FlowRun) -> String { run.id + "/" + (run.stateID ?? "") }

    /// Takes a slot for `run`, handled by the supervisor `make` builds then, unless it is already being
    /// handled, was claimed by this worker in this scheduled state before, or no slot is free (nil).
    func reserve(_ run: FlowRun, make: @Sendable () -> FlowRunSupervisor) -> FlowRunSupervisor? {
        if supervisorsByID[run.id] != nil { return nil }
        if let limit, supervisorsByID.count >= limit { return nil }
        let key = Self.key(run)
        if claimed[key] != nil { return nil }
        let supervisor = make()
        supervisorsByID[run.id] = supervisor
        polledKeys[run.id] = key
        metrics.setInFlight(supervisorsByID.count)
        return supervisor
    }

    /// Records that this worker claimed the reserved run (PENDING is ours): it is never taken again in the
    /// scheduled state it was polled in, even after it is released.
    func markClaimed(_ runID: String) {
        guard let key = polledKeys[runID] else { return }
        claimed[key] = Date()
        if claimed.count > 10_000 {
            let cutoff = Date().addingTimeInterval(-3600)
            claimed = claimed.filter { $0.value > cutoff }
        }
    }

    /// Registers the supervisor of a run that is already running (adopted after a worker restart).
    func adopt(_ supervisor: FlowRunSupervisor) {
        supervisorsByID[supervisor.runID] = supervisor
        metrics.setInFlight(supervisorsByID.count)
    }

    /// The run's supervisor is done with it. Unless it was claimed (`markClaimed`), the run may be reserved
    /// again on the next poll.
    func release(_ runID: String) {
        supervisorsByID[runID] = nil
        polledKeys[runID] = nil
        metrics.setInFlight(supervisorsByID.count)
        let empty = supervisorsByID.isEmpty
        released.update { released in
            released.runs += 1
            if empty { released.emptied += 1 }
        }
    }

    /// Returns when no run is in flight, or when the calling task is cancelled.
    func waitUntilEmpty() async {
        if supervisorsByID.isEmpty { return }
        let seen = released.value.emptied
        await released.wait(until: { $0.emptied != seen })
    }

    /// Returns when a run is released (a slot may have freed), or when the calling task is cancelled.
    func waitForRelease() async {
        let seen = released.value.runs
        await released.wait(until: { $0.runs != seen })
    }
}
