import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// After a worker crash: finds the runs a previous worker on this host launched and did not finish
/// reporting, and either adopts their still-running jobs or reports them CRASHED.
struct Recovery: Sendable {
    let context: WorkerContext
    /// Where an adopted job's watch runs, beside the other runs.
    let launcher: RunLauncher
    /// A supervisor for the recovered run: it reports for it, or watches its adopted job.
    func supervisor(_ runID: String) -> FlowRunSupervisor { FlowRunSupervisor(context: context, runID: runID) }

    func run() async {
        let orphans = context.journal.takeOverOrphans(me: context.identity, pool: context.settings.pool)
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
            context.log.info("a previous worker launched this run as pid \(pid), which is gone; reporting CRASHED unless it is final", run: runID)
            await supervisor(runID).report(runID, FinalState(type: .crashed, message: "Worker restarted; job process was gone."))
            await context.journal.remove(runID)
        }
    }

    /// Watches a job a previous worker left running, keeping it cancellable, until it exits.
    func adopt(runID: String, pid: pid_t, processStart: UInt64?, owner: StateOwner) async {
        context.log.info("adopting job pid \(pid) left running by a previous worker; watching it until it exits", run: runID)
        let registry = context.registry
        let supervisor = self.supervisor(runID)
        await registry.adopt(supervisor)
        launcher.submit {
            // Per-job cgroups: the run's cgroup, if the previous worker made one, still holds the whole tree.
            let cgroup = RunCgroup.existing(host: supervisor.context.cgroups.host, runID: runID)
            // A worker-owned run still needs its heartbeats (the engine sends an engine run's own), at the
            // interval the job was started with: its environment is still there to read.
            let heartbeat = owner == .worker
                ? FlowRunHeartbeat(adopting: runID, context: supervisor.context, log: supervisor.log,
                                   every: FlowRunHeartbeat.seconds(ProcFS.environment(of: pid) ?? [:], log: supervisor.log))
                : nil
            await supervisor.watch(runID, pid: pid, owner: owner, cgroup: cgroup) {
                await ProcFS.waitForExit(of: pid, startTime: processStart)
                heartbeat?.stop()
                return nil
            }
            await registry.release(runID)
        }
    }

    /// Should the journal be lost: runs in this pool, PENDING or RUNNING, labelled with this worker's name.
    /// Their recorded pid is checked on this host (it must carry the run's id in its environment).
    func recoverLabelledRuns() async {
        let settings = context.settings
        let filter = JSON.object([
            "flow_runs": .object(["state": .object(["type": .object(["any_": .array(["PENDING", "RUNNING"])])])]),
            "work_pools": .object(["name": .object(["any_": .array([.string(settings.pool)])])]),
            "limit": .int(200),
        ])
        let runs: [FlowRun]
        do {
            runs = try await context.client.filterFlowRuns(filter)
        } catch {
            context.log.warning("cannot look for runs a previous worker named '\(settings.workerName)' left behind: \(error)")
            return
        }
        for run in runs where run.labels?["prefect.worker.name"]?.stringValue == settings.workerName {
            if await context.registry.supervisor(run.id) != nil { continue }
            if let raw = run.infrastructurePID, let pid = pid_t(raw), ProcFS.isAlive(pid, startTime: nil),
               ProcFS.environment(of: pid, contains: "PREFECT__FLOW_RUN_ID=" + run.id) {
                await adopt(runID: run.id, pid: pid, processStart: ProcFS.startTime(of: pid), owner: .engine)
            } else if run.currentStateType == .pending, run.infrastructurePID == nil {
                context.log.info("claimed by a previous worker named '\(settings.workerName)' but never started; handing it back", run: run.id)
                await supervisor(run.id).handBack(run.id, because: "Worker '\(settings.workerName)' restarted before the run started.")
            } else {
                context.log.info("left \(run.currentStateType?.rawValue ?? "?") by a previous worker named '\(settings.workerName)' and its process is gone; reporting CRASHED", run: run.id)
                await supervisor(run.id).report(run.id, FinalState(type: .crashed, message: "Worker restarted; job process was gone."))
            }
        }
    }
}
