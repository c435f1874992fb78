import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The one owner of each run's life in this worker: reserve (a slot in the registry; no run twice, `--limit`)
/// → claim (the supervisor's PENDING, recorded in the registry so the run is not claimed again in that
/// scheduled state) → launch (the supervisor, a child task of one task group) → release. The poll offers the
/// runs it finds and the recovery hands over the jobs it adopts; neither builds a supervisor.
///
/// `finish()` says no more runs come; `run()` returns once the last one is done. It is not a stage's service:
/// stopping loops never cancels a run; runs end through their supervisors (cancel, drain, stop).
final class RunLifecycle: Sendable {
    typealias Work = @Sendable () async -> Void
    let registry: RunRegistry
    private let dependencies: RunDependencies
    private let work: AsyncStream<Work>
    private let continuation: AsyncStream<Work>.Continuation
    private let done = Latch()

    init(registry: RunRegistry, dependencies: RunDependencies) {
        self.registry = registry
        self.dependencies = dependencies
        (work, continuation) = AsyncStream.makeStream(of: Work.self)
    }

    /// Takes `run` if the registry has a slot for it and it is not handled or claimed already: its supervisor
    /// claims and runs it beside the other runs, and its slot is released when it is done. False if not taken.
    func offer(_ run: FlowRun) async -> Bool {
        let registry = self.registry
        guard let supervisor = await registry.reserve(run, make: { self.supervisor(run.id) }) else { return false }
        let submitted = submit {
            await supervisor.run(run)
            await registry.release(run.id)
        }
        if !submitted { await registry.release(run.id) }
        return submitted
    }

    /// Watches a job a previous worker left running, keeping it cancellable, until it exits; the run's slot is
    /// held meanwhile. A worker-owned run still gets its heartbeats, at the interval its job was started with
    /// (its environment is still there to read); the engine sends an engine run's own.
    @discardableResult
    func adopt(runID: String, pid: pid_t, processStart: UInt64?, owner: StateOwner) async -> Bool {
        let registry = self.registry, dependencies = self.dependencies
        let supervisor = self.supervisor(runID)
        await registry.adopt(supervisor)
        let submitted = submit {
            // Per-job cgroups: the run's cgroup, if the previous worker made one, still holds the whole tree.
            let cgroup = RunCgroup.existing(host: dependencies.lookups.cgroups.host, runID: runID)
            var beat: (@Sendable () async -> Void)?
            if owner == .worker {
                let log = supervisor.log
                let heartbeat = FlowRunHeartbeat(events: dependencies.events, every: FlowRunHeartbeat.seconds(ProcFS.environment(of: pid) ?? [:], log: log))
                beat = { await heartbeat.beat(adopting: runID, client: dependencies.client, lookups: dependencies.lookups, log: log) }
            }
            let job = RunningJob(
                process: .adopted(pid: pid, startTime: processStart), runID: runID, timeout: nil, cgroup: cgroup, heartbeat: beat,
                spawner: dependencies.spawner, killGrace: dependencies.settings.killGraceSeconds, log: supervisor.log)
            await supervisor.watch(job, owner: owner)
            await registry.release(runID)
        }
        if !submitted { await registry.release(runID) }
        return submitted
    }

    /// A supervisor for the run: its claim is recorded in the registry.
    private func supervisor(_ runID: String) -> FlowRunSupervisor {
        let registry = self.registry
        return FlowRunSupervisor(runID: runID, dependencies: dependencies) { await registry.markClaimed($0) }
    }

    /// Runs `work` beside the runs; false after `finish()` (nothing is started then, so nothing outlives `run()`).
    private func submit(_ work: @escaping Work) -> Bool {
        if case .terminated = continuation.yield(work) { return false }
        return true
    }

    /// No more runs are taken (`offer` and `adopt` return false); `run()` returns once the ones in flight are done.
    func finish() {
        continuation.finish()
    }

    /// Returns once `run()` has returned.
    func finished() async {
        await done.wait()
    }

    /// Where the runs' supervisors run: a child task each, in one task group.
    func run() async {
        await withDiscardingTaskGroup { group in
            for await work in self.work {
                group.addTask { await work() }
            }
        }
        done.open()
    }
}
