import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The flow runs this worker is handling, from reservation (before the claim) to the final report.
/// It enforces `--limit`, never lets two supervisors handle one run, never lets a run this worker claimed be
/// taken again in the same scheduled state, and knows each job's process group so shutdown can stop them.
/// A run that was reserved but not claimed (the claim met failed reads, say) may be taken on the next poll.
actor RunRegistry {
    struct Entry: Sendable {
        var runID: String
        var pid: pid_t?
        /// Why the worker stopped this job, if it did (the final state message says so).
        var stopReason: String?
        /// The run was seen CANCELLING (or CANCELLED): do not start it, or stop it, and report CANCELLED.
        var cancelRequested = false
        /// The job ran past its `timeout_seconds`: stop it and report FAILED (TimedOut).
        var timedOut = false
    }

    private let limit: Int?
    private var entries: [String: Entry] = [:]
    /// `run id + state id` of runs this worker claimed recently: a run is claimed at most once per scheduled
    /// state (a stale poll may still show it SCHEDULED), while a re-run (a new SCHEDULED state) may be taken again.
    private var claimed: [String: Date] = [:]
    /// The `run id + state id` each reserved run was polled in, recorded in `claimed` once it is claimed.
    private var polledKeys: [String: String] = [:]
    private var emptyWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
    private var slotWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
    private var stopWaiters: [String: [Int: CheckedContinuation<Void, Never>]] = [:]
    private var nextWaiterID = 0

    init(limit: Int?) {
        self.limit = limit
    }

    var count: Int { entries.count }
    var runIDs: [String] { entries.keys.sorted() }
    var freeSlots: Int? { limit.map { max(0, $0 - entries.count) } }

    private static func key(_ run: FlowRun) -> String { run.id + "/" + (run.stateID ?? "") }

    /// Takes a slot for `run` unless it is already being handled, was claimed by this worker in this
    /// scheduled state before, or no slot is free.
    func reserve(_ run: FlowRun) -> Bool {
        if entries[run.id] != nil { return false }
        if let limit, entries.count >= limit { return false }
        let key = Self.key(run)
        if claimed[key] != nil { return false }
        entries[run.id] = Entry(runID: run.id)
        polledKeys[run.id] = key
        Metrics.shared.setInFlight(entries.count)
        return true
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

    /// Registers a run that is already running (adopted after a worker restart).
    func adopt(_ runID: String, pid: pid_t) {
        entries[runID] = Entry(runID: runID, pid: pid)
        Metrics.shared.setInFlight(entries.count)
    }

    /// The run's supervisor is done with it. Unless it was claimed (`markClaimed`), the run may be reserved
    /// again on the next poll.
    func release(_ runID: String) {
        entries[runID] = nil
        polledKeys[runID] = nil
        Metrics.shared.setInFlight(entries.count)
        wakeStopWaiters(runID)
        let slots = slotWaiters.values
        slotWaiters = [:]
        for waiter in slots { waiter.resume() }
        if entries.isEmpty {
            let waiters = emptyWaiters.values
            emptyWaiters = [:]
            for waiter in waiters { waiter.resume() }
        }
    }

    func setPID(_ runID: String, _ pid: pid_t?) {
        entries[runID]?.pid = pid
    }

    func entry(_ runID: String) -> Entry? { entries[runID] }

    /// Records that the run is to be cancelled and wakes its supervisor, which stops the job (or does not
    /// start it) and reports CANCELLED. Returns false if the run is unknown or was already being cancelled.
    @discardableResult
    func requestCancel(_ runID: String) -> Bool {
        guard let entry = entries[runID], !entry.cancelRequested else { return false }
        entries[runID]?.cancelRequested = true
        wakeStopWaiters(runID)
        return true
    }

    /// Records that every run in flight is to be stopped because the worker shuts down, and wakes their
    /// supervisors. Returns the runs that have a job process.
    @discardableResult
    func requestStopAll(reason: String) -> [String] {
        for id in entries.keys where entries[id]?.stopReason == nil {
            entries[id]?.stopReason = reason
            wakeStopWaiters(id)
        }
        return entries.values.filter { $0.pid != nil }.map(\.runID).sorted()
    }

    /// Records that the run's job exceeded its time limit and wakes its supervisor, which stops the job.
    /// Does nothing if the run is already being stopped.
    func requestTimeout(_ runID: String, reason: String) {
        guard let entry = entries[runID], !entry.cancelRequested, entry.stopReason == nil else { return }
        entries[runID]?.timedOut = true
        entries[runID]?.stopReason = reason
        wakeStopWaiters(runID)
    }

    private func wakeStopWaiters(_ runID: String) {
        for waiter in (stopWaiters.removeValue(forKey: runID) ?? [:]).values { waiter.resume() }
    }

    func isCancelRequested(_ runID: String) -> Bool { entries[runID]?.cancelRequested ?? false }

    /// Returns when the run is to be cancelled or stopped (or is gone), or when the calling task is cancelled.
    func waitForStopRequest(_ runID: String) async {
        func requested() -> Bool { entries[runID].map { $0.cancelRequested || $0.stopReason != nil } ?? true }
        if requested() { return }
        nextWaiterID += 1
        let id = nextWaiterID
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if Task.isCancelled || requested() { continuation.resume() }
                else { stopWaiters[runID, default: [:]][id] = continuation }
            }
        } onCancel: {
            Task { await self.cancelWaiter(id) }
        }
    }

    /// Returns when no run is in flight, or when the calling task is cancelled.
    func waitUntilEmpty() async {
        if entries.isEmpty { return }
        nextWaiterID += 1
        let id = nextWaiterID
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if Task.isCancelled || entries.isEmpty { continuation.resume() } else { emptyWaiters[id] = continuation }
            }
        } onCancel: {
            Task { await self.cancelWaiter(id) }
        }
    }

    /// Returns when a run is released (a slot may have freed), or when the calling task is cancelled.
    func waitForRelease() async {
        nextWaiterID += 1
        let id = nextWaiterID
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if Task.isCancelled { continuation.resume() } else { slotWaiters[id] = continuation }
            }
        } onCancel: {
            Task { await self.cancelWaiter(id) }
        }
    }

    private func cancelWaiter(_ id: Int) {
        slotWaiters.removeValue(forKey: id)?.resume()
        emptyWaiters.removeValue(forKey: id)?.resume()
        for runID in stopWaiters.keys { stopWaiters[runID]?.removeValue(forKey: id)?.resume() }
    }
}
