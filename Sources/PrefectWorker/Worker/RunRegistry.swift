import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The flow runs this worker is handling, from reservation (before the claim) to the final report.
/// It enforces `--limit`, never lets the same scheduled run be submitted twice, and knows each job's
/// process group so shutdown can stop them.
public actor RunRegistry {
    public struct Entry: Sendable {
        public var runID: String
        public var pid: pid_t?
        /// Why the worker stopped this job, if it did (the final state message says so).
        public var stopReason: String?
    }

    private let limit: Int?
    private var entries: [String: Entry] = [:]
    /// `run id + state id` of runs submitted recently: a run is submitted at most once per scheduled state,
    /// while a re-run (a new SCHEDULED state) may be taken again.
    private var submitted: [String: Date] = [:]
    private var emptyWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
    private var slotWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
    private var nextWaiterID = 0

    public init(limit: Int?) {
        self.limit = limit
    }

    public var count: Int { entries.count }
    public var runIDs: [String] { entries.keys.sorted() }
    public var freeSlots: Int? { limit.map { max(0, $0 - entries.count) } }

    /// Takes a slot for `run` unless it is already being handled, was submitted in this scheduled state
    /// before, or no slot is free.
    public func reserve(_ run: FlowRun) -> Bool {
        if entries[run.id] != nil { return false }
        if let limit, entries.count >= limit { return false }
        let key = run.id + "/" + (run.stateID ?? "")
        if submitted[key] != nil { return false }
        submitted[key] = Date()
        if submitted.count > 10_000 {
            let cutoff = Date().addingTimeInterval(-3600)
            submitted = submitted.filter { $0.value > cutoff }
        }
        entries[run.id] = Entry(runID: run.id)
        return true
    }

    public func release(_ runID: String) {
        entries[runID] = nil
        let slots = slotWaiters.values
        slotWaiters = [:]
        for waiter in slots { waiter.resume() }
        if entries.isEmpty {
            let waiters = emptyWaiters.values
            emptyWaiters = [:]
            for waiter in waiters { waiter.resume() }
        }
    }

    public func setPID(_ runID: String, _ pid: pid_t?) {
        entries[runID]?.pid = pid
    }

    public func entry(_ runID: String) -> Entry? { entries[runID] }

    /// Marks every running job as stopped for `reason` and returns their process groups.
    public func markAllStopped(reason: String) -> [(runID: String, pid: pid_t)] {
        var stopped: [(String, pid_t)] = []
        for (id, entry) in entries {
            guard let pid = entry.pid else { continue }
            if entries[id]?.stopReason == nil { entries[id]?.stopReason = reason }
            stopped.append((id, pid))
        }
        return stopped
    }

    /// Returns when no run is in flight, or when the calling task is cancelled.
    public func waitUntilEmpty() async {
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
    public func waitForRelease() async {
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
    }
}
