import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// After a worker crash: finds the runs a previous worker on this host launched and did not finish
/// reporting, and either adopts their still-running jobs or reports them CRASHED.
struct Recovery: Sendable {
    /// Where an adopted job is watched, beside the other runs.
    let runs: RunLifecycle
    let journal: RunJournal
    let identity: JournalEntry.Identity
    let settings: Settings
    let client: PrefectClient
    /// Final states go through it (persisted, then delivered), as a supervisor's do.
    let outbox: Outbox
    let secrets: KnownSecrets
    let log: Logger

    func run() async {
        let orphans = journal.takeOverOrphans(me: identity, pool: settings.pool)
        for entry in orphans {
            await recover(runID: entry.runID, pid: entry.pid, processStart: entry.processStart, owner: entry.stateOwner)
        }
        await recoverLabelledRuns()
    }

    /// A journalled job: adopt it if its process is still the one we started, else report the run CRASHED.
    func recover(runID: String, pid: pid_t, processStart: UInt64?, owner: StateOwner) async {
        if ProcFS.isAlive(pid, startTime: processStart) {
            await adopt(runID: runID, pid: pid, processStart: processStart, owner: owner)
        } else {
            log.info("a previous worker launched this run as pid \(pid), which is gone; reporting CRASHED unless it is final", run: runID)
            await outbox.send(runID, FinalState(type: .crashed, message: "Worker restarted; job process was gone."), secrets: secrets)
            await journal.remove(runID)
        }
    }

    /// Watches a job a previous worker left running, keeping it cancellable, until it exits (`RunLifecycle.adopt`).
    func adopt(runID: String, pid: pid_t, processStart: UInt64?, owner: StateOwner) async {
        log.info("adopting job pid \(pid) left running by a previous worker; watching it until it exits", run: runID)
        if await !runs.adopt(runID: runID, pid: pid, processStart: processStart, owner: owner) {
            log.info("the worker is stopping before it could watch job pid \(pid); its journal entry stays for the next worker", run: runID)
        }
    }

    /// Should the journal be lost: runs in this pool, PENDING or RUNNING, labelled with this worker's name.
    /// Their recorded pid is checked on this host (it must carry the run's id in its environment).
    func recoverLabelledRuns() async {
        let filter = JSON.object([
            "flow_runs": .object(["state": .object(["type": .object(["any_": .array(["PENDING", "RUNNING"])])])]),
            "work_pools": .object(["name": .object(["any_": .array([.string(settings.pool)])])]),
            "limit": .int(200),
        ])
        let runs: [FlowRun]
        do {
            runs = try await client.filterFlowRuns(filter)
        } catch {
            log.warning("cannot look for runs a previous worker named '\(settings.workerName)' left behind: \(error)")
            return
        }
        for run in runs where run.labels?["prefect.worker.name"]?.stringValue == settings.workerName {
            if await self.runs.registry.supervisor(run.id) != nil { continue }
            if let raw = run.infrastructurePID, let pid = pid_t(raw), ProcFS.isAlive(pid, startTime: nil),
               ProcFS.environment(of: pid, contains: "PREFECT__FLOW_RUN_ID=" + run.id) {
                await adopt(runID: run.id, pid: pid, processStart: ProcFS.startTime(of: pid), owner: .engine)
            } else if run.currentStateType == .pending, run.infrastructurePID == nil {
                log.info("claimed by a previous worker named '\(settings.workerName)' but never started; handing it back", run: run.id)
                await StateReporter(runID: run.id, client: client, shutdown: nil, log: log.forRun(run.id))
                    .handBack(because: "Worker '\(settings.workerName)' restarted before the run started.")
            } else {
                log.info("left \(run.currentStateType?.rawValue ?? "?") by a previous worker named '\(settings.workerName)' and its process is gone; reporting CRASHED", run: run.id)
                await outbox.send(run.id, FinalState(type: .crashed, message: "Worker restarted; job process was gone."), secrets: secrets)
            }
        }
    }
}
