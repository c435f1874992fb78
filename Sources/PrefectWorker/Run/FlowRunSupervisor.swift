import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Takes one flow run from claim to final state: claim with PENDING, render the job configuration, start
/// the job at its scheduled time, watch it, and report how it ended. One per run, for the run's whole life
/// in this worker: it owns the job's pid and exit, the run's cancel or stop request, the job's output pumps
/// and the run's reports. The cancellation watch and the drain reach it through the registry, by run id;
/// its own timer (`timeout_seconds`) calls it directly.
actor FlowRunSupervisor {
    nonisolated let runID: String
    /// What the run uses from the worker.
    nonisolated let dependencies: RunDependencies
    /// Tells the run's owner (`RunLifecycle`) that the claim landed.
    private let onClaimed: @Sendable (String) async -> Void
    /// Lines about this run (the worker's log and the run's logs).
    nonisolated let log: Logger
    /// The job's process (group leader), while it runs.
    private(set) var pid: pid_t?
    /// The run was seen CANCELLING (or CANCELLED): do not start it, or stop it, and report CANCELLED.
    private(set) var cancelRequested = false
    /// Why the worker stopped this job, if it did (the final state message says so).
    private(set) var stopReason: String?
    /// The job ran past its `timeout_seconds`: it is stopped and reported FAILED (TimedOut).
    private(set) var timedOut = false
    /// The engine took our shutdown intent (`PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR`): the run was handed
    /// back to its pool (reschedule) or left to the infrastructure (relinquish), and is not reported CRASHED.
    private(set) var handedOver: AttemptControl.Intent?
    /// Opened by the first cancel, stop or timeout request.
    private let stopRequested = Latch()
    /// Opened once the job has exited and been reaped (and its output read).
    let exited = Latch()
    nonisolated var client: PrefectClient { dependencies.client }
    nonisolated var settings: Settings { dependencies.settings }
    /// The run's set_state loop.
    nonisolated var reporter: StateReporter { StateReporter(runID: runID, client: client, shutdown: dependencies.shutdown, log: log) }

    /// A supervisor for the run with id `runID`; `run(_:)` or `watch` gives it its work.
    init(runID: String, dependencies: RunDependencies, onClaimed: @escaping @Sendable (String) async -> Void) {
        self.runID = runID
        self.dependencies = dependencies
        self.onClaimed = onClaimed
        self.log = dependencies.log.forRun(runID)
    }

    func run(_ run: FlowRun) async {
        let id = run.id
        var deployment: Deployment?
        if let deploymentID = run.deploymentID {
            do {
                deployment = try await dependencies.lookups.deployment(deploymentID)
            } catch {
                log.warning("cannot read deployment \(deploymentID): \(error); leaving the run for the next poll")
                return
            }
            if deployment == nil {
                log.warning("deployment \(deploymentID) no longer exists; cancelling the run")
                await report(FinalState(type: .cancelled, message: "Deployment \(deploymentID) no longer exists, cancelled run."), force: true)
                return
            }
        }
        guard let pool = dependencies.lookups.pool, await claim(run) else { return }
        dependencies.metrics.runClaimed()
        log.info("claimed (PENDING); worker '\(settings.workerName)' submitting it")

        // Labels are informative: a failure must not hold up the run for long. They are written before the job
        // starts, with a few quick retries (Prefect's worker awaits them with its ordinary retries): written
        // beside the job, a retry met the engine's own labels write (its trace context) and the server's
        // read-merge-write kept only one of them. If they still fail, they are retried with the ordinary retries
        // beside the run, as a child task of the run's, which ends with it (after a bounded grace).
        let client = self.client
        let labels = [
            "prefect.worker.name": settings.workerName, "prefect.worker.type": "process",
            "prefect.work-pool.name": pool.name, "prefect.work-pool.id": pool.id,
        ]
        var labelled = true
        do {
            try await client.addLabels(id, labels, policy: .quick)
        } catch {
            labelled = false
        }
        await withTaskGroup(of: Void.self) { group in
            if !labelled {
                let log = self.log
                group.addTask {
                    do {
                        try await client.addLabels(id, labels, policy: .standard)
                    } catch is CancellationError {
                        log.info("the run ended before its labels could be written; it stays unlabelled")
                    } catch {
                        log.warning("could not label the run: \(error); it runs unlabelled")
                    }
                }
            }
            await prepareAndLaunch(run, deployment: deployment, pool: pool)
            guard !labelled else { return }
            // A short run may end while its labels are still being retried: they get a little longer, bounded,
            // so the run's slot is not held for a server that stays away.
            group.addTask { try? await Task.sleep(seconds: Self.labelsGraceSeconds) }
            await group.next()
            group.cancelAll()
        }
    }

    /// How long a run's end waits for labels still being retried.
    static let labelsGraceSeconds = 30.0

    /// Builds the job configuration, waits for the run's scheduled time, then launches the job.
    private func prepareAndLaunch(_ run: FlowRun, deployment: Deployment?, pool: WorkPool) async {
        let job: JobConfiguration
        do {
            job = try await configuration(for: run, deployment: deployment, pool: pool)
        } catch let error as JobConfigurationError {
            log.error("bad job configuration: \(error.message); reporting CRASHED")
            await report(FinalState(type: .crashed, message: "Flow run could not start: \(error.message)"))
            return
        } catch let error as APIError where error.isRetryable {
            // The server was away while we read what the template refers to: not the run's fault.
            log.warning("cannot build the job configuration now (\(error)); handing the run back to be tried again")
            await handBack(because: "Worker '\(settings.workerName)' could not reach the API to build the job configuration; rescheduled.")
            return
        } catch {
            log.error("cannot build the job configuration: \(error); reporting CRASHED")
            await report(FinalState(type: .crashed, message: "Flow run could not start: \(error)"))
            return
        }

        if let start = run.scheduledStart, start.timeIntervalSinceNow > 0.05 {
            log.info("scheduled for \(Timestamp.format(start)); starting it then")
            let shutdown = dependencies.shutdown, stopRequested = self.stopRequested
            let slept = await firstOf({ await shutdown.sleep(start.timeIntervalSinceNow) }, {
                await stopRequested.wait()
                return false
            })
            if !slept, !cancelRequested {
                await handBack()
                return
            }
        }
        await launch(run, job: job, deployment: deployment, pool: pool)
    }
    // MARK: - Claiming

    /// Claims the run with PENDING (`RunClaim`) and tells its owner, which records the claim. False if it is not ours.
    func claim(_ run: FlowRun) async -> Bool {
        let claimed = await RunClaim(client: client, shutdown: dependencies.shutdown, log: log, workerName: settings.workerName).claim(run)
        // Only a claim is remembered: a run left for the next poll is taken on the next poll.
        if claimed { await onClaimed(run.id) }
        return claimed
    }

    /// Gives a claimed run that has not started back to the pool, so another worker can take it.
    func handBack(because reason: String? = nil) async {
        await reporter.handBack(because: reason ?? "Worker '\(settings.workerName)' shut down before the run started.")
    }

    // MARK: - Stop requests (from the cancellation watch, the drain and the run's timer)

    /// Records that the run is to be cancelled and wakes the supervisor, which stops the job (or does not
    /// start it) and reports CANCELLED. False if it was already being cancelled. A cancel that arrives while
    /// the job is being stopped for another reason still makes the final state CANCELLED.
    @discardableResult
    func requestCancel() -> Bool {
        guard !cancelRequested else { return false }
        cancelRequested = true
        stopRequested.open()
        return true
    }

    /// Records that the job is to be stopped because the worker shuts down, and wakes the supervisor.
    func requestStop(reason: String) {
        guard stopReason == nil else { return }
        stopReason = reason
        stopRequested.open()
    }

    /// Records that the job ran past its time limit and wakes the supervisor. Does nothing if the run is
    /// already being stopped.
    func requestTimeout(reason: String) {
        guard !cancelRequested, stopReason == nil else { return }
        timedOut = true
        stopReason = reason
        stopRequested.open()
    }

    // MARK: - The running job

    /// Watches the run's job (`RunningJob`) until it exits, stopping it when the run is cancelled, runs past its
    /// `timeout_seconds` or the worker shuts down, then reports how the run ended (`finish`). `control` is the
    /// job's attempt control session (an engine is told why before its SIGTERM). `executed` gets the job's exit
    /// status and usage once the job and everything it left behind are gone.
    func watch(_ job: RunningJob, owner: StateOwner, control: AttemptControlSession? = nil,
               executed: @Sendable (ExitStatus?, JobUsage) -> Void = { _, _ in }) async {
        pid = job.pid
        let limit = job.timeout.map { "Flow run exceeded timeout of \(String(format: "%g", $0)) second(s) (job variable timeout_seconds)" }
        let ending = await job.watch(stopRequested: stopRequested, exited: exited, hooks: RunningJob.Hooks(
            exited: { await self.jobExited() },
            timedOut: { await self.requestTimeout(reason: limit ?? "Flow run timed out") },
            stopping: { await self.prepareTeardown(control: control, timeout: job.timeout) }))
        await finish(job, ending, owner: owner, control: control, limit: limit, executed: executed)
    }

    private func jobExited() {
        pid = nil
    }

    /// Before the teardown: an engine is told why (`tellEngine`; a hand-back it acknowledged is remembered).
    /// Returns why the job is stopped, for the log line.
    private func prepareTeardown(control: AttemptControlSession?, timeout: Double?) async -> String {
        if let control { handedOver = await tellEngine(control, grace: settings.killGraceSeconds) }
        return cancelRequested ? "the run is being cancelled"
            : timedOut ? "it ran longer than timeout_seconds=\(String(format: "%g", timeout ?? 0))"
            : "the worker is shutting down"
    }
}
