import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A report the server must receive even if it is away now, or the worker restarts first.
enum OutboxItem: Codable, Sendable, Equatable {
    /// `PATCH /flow_runs/{id}` with the job's pid.
    case infrastructurePID(pid: Int32)
    /// A final state (transition id kept, so a retry after a lost answer is recognised); `name` if not the
    /// type's default (`TimedOut`).
    case finalState(type: String, message: String, transitionID: String, force: Bool, name: String? = nil)
}

/// Final states and infrastructure pids that have not reached the server yet, persisted in
/// `<state dir>/outbox/<run id>.json` (written atomically and durably) and delivered in order per run: at
/// once when possible, else by a background loop when the server is back, and after a worker restart.
/// An item leaves the outbox only once the server has it, or has said the run is already final or gone.
actor Outbox: Service {
    private let folder: RecordFolder<[OutboxItem]>
    nonisolated var directory: String { folder.directory }
    private let client: PrefectClient
    /// Counts the runs it reports finished (or finds finished).
    private let metrics: Metrics
    /// WAIT answers are waited out unless the worker is terminating; nil in tests that have no shutdown.
    private let shutdown: Shutdown?
    /// Lines about the runs whose reports it carries.
    private let log: Logger
    /// WAIT answers waited out in one delivery attempt before the item is left for the background loop.
    static let waitsPerAttempt = 20
    /// The items, kept in memory as well: the file is for a restart, memory is what we deliver from, so a
    /// disk that cannot be written loses nothing while the worker runs.
    private var memory: [String: [OutboxItem]] = [:]
    private var loaded = false
    /// Runs being delivered now: one delivery per run at a time, so items stay in order.
    private let delivering = Condition(Set<String>())
    /// Each run's file writes and removals go through a serial queue of the run's (in order), off the threads
    /// async code runs on; different runs are written concurrently. A queue lives while it has work.
    private var disks: [String: (queue: DispatchQueue, pending: Int)] = [:]

    init(stateDirectory: String, client: PrefectClient, metrics: Metrics = Metrics(), shutdown: Shutdown? = nil, log: Logger) {
        self.log = log
        self.metrics = metrics
        self.folder = RecordFolder(directory: stateDirectory + "/outbox")
        self.client = client
        self.shutdown = shutdown
    }

    func prepare() throws {
        try folder.prepare("the outbox directory")
    }

    nonisolated func path(_ runID: String) -> String { folder.path(runID) }

    /// Reads what a previous worker left on disk (once). A file that cannot be read is set aside, not lost.
    private func loadFromDisk() {
        guard !loaded else { return }
        loaded = true
        for (runID, file, items) in folder.scan() {
            guard memory[runID] == nil else { continue }
            if let items {
                if !items.isEmpty { memory[runID] = items }
            } else {
                log.error("outbox entry \(file) is unreadable; moved aside to \(file).corrupt", run: runID)
                rename(file, file + ".corrupt")
            }
        }
    }

    func items(_ runID: String) -> [OutboxItem] {
        loadFromDisk()
        return memory[runID] ?? []
    }

    /// Memory first (what is delivered from, so order holds even while the write is under way), then the file.
    func store(_ runID: String, _ items: [OutboxItem]) async {
        memory[runID] = items.isEmpty ? nil : items
        let path = path(runID)
        if items.isEmpty {
            await onDisk(runID) { AtomicFile.remove(path) }
            return
        }
        guard let data = folder.encoded(items) else { return }
        let failure = await onDisk(runID) { () -> AtomicFile.Failure? in
            do throws(AtomicFile.Failure) {
                try AtomicFile.write(data, to: path)
                return nil
            } catch {
                return error
            }
        }
        if let error = failure {
            log.error("cannot write the outbox entry \(path): \(error); the report is kept in memory and is lost if the worker stops before it is delivered", run: runID)
        }
    }

    /// Runs `operation` on the run's serial disk queue and waits for it.
    private func onDisk<T: Sendable>(_ runID: String, _ operation: @escaping @Sendable () -> T) async -> T {
        var disk = disks[runID] ?? (DispatchQueue(label: "prefect-worker.outbox.disk", target: .global(qos: .utility)), 0)
        disk.pending += 1
        disks[runID] = disk
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            disk.queue.async { continuation.resume(returning: operation()) }
        }
        disks[runID]?.pending -= 1
        if disks[runID]?.pending == 0 { disks[runID] = nil }
        return result
    }

    /// Persists `item` after the run's earlier items, without delivering it: once this returns, anything the
    /// caller queues for the run later is delivered after it.
    func enqueue(_ runID: String, _ item: OutboxItem) async {
        await store(runID, items(runID) + [item])
    }

    /// Persists `item` for the run, then tries to deliver the run's items now, with a few quick retries only:
    /// if the server is away the background loop keeps trying, so the caller (a run's supervisor, a drain)
    /// is not held up. Returns true if all arrived.
    @discardableResult
    func send(_ runID: String, _ item: OutboxItem) async -> Bool {
        await enqueue(runID, item)
        return await deliver(runID, policy: .quick)
    }

    /// Runs with undelivered items (after a restart, these come from the previous worker).
    func pendingRuns() -> [String] {
        loadFromDisk()
        return memory.keys.sorted()
    }

    /// Delivers the run's items in order; stops at the first one that cannot be delivered now.
    @discardableResult
    func deliver(_ runID: String, policy: RetryPolicy = .standard) async -> Bool {
        // One delivery per run at a time, so items stay in order; a second caller waits its turn.
        // The wait ends when the worker stops the outbox's loop (a cancelled task), so the stop is never held up.
        guard await delivering.wait(until: { $0.insert(runID).inserted }) else { return false }
        defer { delivering.update { $0.remove(runID) } }
        while let item = items(runID).first {
            do {
                guard try await deliverItem(runID, item, policy: policy) else { return false }
            } catch is CancellationError {
                return false
            } catch let error as APIError where error.isRetryable {
                // A busy server's 503s are routine: a WARNING only once the API has been failing for a while.
                let line = "cannot report to the server now (\(error)); kept in the outbox, will retry"
                if client.hasBeenFailingLong { log.warning(line, run: runID) } else { log.info(line, run: runID) }
                return false
            } catch {
                // Not retryable (404: the run was deleted; 4xx: refused): retrying cannot help.
                log.error("report dropped: \(error)", run: runID)
            }
            // Items may have been added while we were delivering: remove just the one delivered.
            var current = items(runID)
            if current.first == item { current.removeFirst() }
            await store(runID, current)
        }
        return true
    }

    /// Delivers one item. True when it may leave the outbox (the server has it, or said the run is final or
    /// otherwise decided); false when it must stay for a later attempt (the server kept asking to wait).
    private func deliverItem(_ runID: String, _ item: OutboxItem, policy: RetryPolicy) async throws -> Bool {
        switch item {
        case .infrastructurePID(let pid):
            try await client.setInfrastructurePID(runID, pid: pid, policy: policy)
            return true
        case .finalState(let rawType, let message, let transitionID, let force, let name):
            var type = StateType(rawValue: rawType)
            var message = message
            var force = force
            // Read before finalising: never overwrite a final state; a run being cancelled can only be CANCELLED,
            // and a cancelled run ends CANCELLED (FinalState.delivery decides).
            let run = try await client.readFlowRun(runID, policy: policy)
            let current = run.currentStateType
            var proposal: StateProposal
            switch FinalState.delivery(proposing: type, name: name, force: force, current: current) {
            case .skip:
                log.info("not reporting \(type.rawValue): the run is already \(current?.rawValue ?? "gone")", run: runID)
                if let current { metrics.runFinished(current) }
                return true
            case .propose(let proposed, let forced, let copyDetails, let cancelledInstead):
                if cancelledInstead { message = FinalState.cancelledInstead(of: message) }
                type = proposed
                force = forced
                proposal = StateProposal(type, name: type.rawValue == rawType ? name : nil, message: message, force: force)
                if copyDetails, let details = run.state?.stateDetails?.objectValue { proposal.details = details }
            }
            proposal.transitionID = transitionID
            let reporter = StateReporter(runID: runID, client: client, shutdown: shutdown, log: log)
            switch try await reporter.propose(proposal, .init(policy: policy, maxWaits: Self.waitsPerAttempt,
                                                              waitUnless: .terminating, freshAfterWait: false, logWaits: false,
                                                              cancelledWhenCancelling: true)) {
            case .accepted(let landed, let result):
                let type = landed.type, message = landed.message ?? ""
                log.info(result.status == .accept ? "reported \(type.rawValue): \(message)" : "reported \(type.rawValue) (already recorded)", run: runID)
                metrics.runFinished(type)
                return true
            case .waitedTooLong:
                log.warning("the server asked \(Self.waitsPerAttempt + 1) times in a row to wait before \(type.rawValue); kept in the outbox, will propose it again later", run: runID)
                return false
            case .stopped:
                log.info("the worker is stopping while the server asks to wait before \(type.rawValue); kept in the outbox", run: runID)
                return false
            case .refused(let state, let reason, let result):
                // The server's orchestration decided (the run is final, or rescheduled for a retry, ...).
                let now = state.map { "; run is \($0.rawValue)/\(result.state?.name ?? "")" } ?? ""
                log.warning("server did not accept \(type.rawValue): \(reason)\(now); not proposing it again", run: runID)
                return true
            }
        }
    }

    /// Tries to deliver everything pending, for at most `timeout` seconds (at shutdown).
    func flush(timeout: Double) async {
        let runs = pendingRuns()
        guard !runs.isEmpty else { return }
        let delivered = await firstOf({
            for runID in runs where !(await self.deliver(runID)) { return false }
            return true
        }, { try? await Task.sleep(seconds: timeout); return false })
        if !delivered {
            log.warning("\(pendingRuns().count) run(s) have reports the server has not received yet; they stay in \(directory) and are delivered when a worker with this state directory starts again")
        }
    }

    /// Delivers every pending run's items, again and again with backoff while the server is away.
    func run() async {
        var failures = 0
        while !Task.isCancelled {
            var allDelivered = true
            for runID in pendingRuns() where !(await deliver(runID)) { allDelivered = false }
            failures = allDelivered ? 0 : failures + 1
            let delay = failures == 0 ? 5 : RetryPolicy.backoff(base: 1, failures: failures)
            try? await Task.sleep(seconds: delay)
        }
    }
}
