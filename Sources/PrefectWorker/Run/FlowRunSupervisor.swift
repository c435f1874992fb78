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
    let context: WorkerContext
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
    nonisolated var client: PrefectClient { context.client }
    /// The run's set_state loop.
    nonisolated var reporter: StateReporter { StateReporter(runID: runID, client: client, shutdown: context.shutdown, log: log) }
    nonisolated var settings: Settings { context.settings }

    /// A supervisor for the run with id `runID`; `run(_:)` or `watch` gives it its work.
    init(context: WorkerContext, runID: String) {
        self.context = context
        self.runID = runID
        self.log = context.log.forRun(runID)
    }

    func run(_ run: FlowRun) async {
        let id = run.id
        var deployment: Deployment?
        if let deploymentID = run.deploymentID {
            do {
                deployment = try await context.deployment(deploymentID)
            } catch {
                log.warning("cannot read deployment \(deploymentID): \(error); leaving the run for the next poll")
                return
            }
            if deployment == nil {
                log.warning("deployment \(deploymentID) no longer exists; cancelling the run")
                await report(id, FinalState(type: .cancelled, message: "Deployment \(deploymentID) no longer exists, cancelled run."), force: true)
                return
            }
        }
        guard let pool = context.pool, await claim(run) else { return }
        context.metrics.runClaimed()
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
        let id = run.id
        let job: JobConfiguration
        do {
            job = try await configuration(for: run, deployment: deployment, pool: pool)
        } catch let error as JobConfigurationError {
            log.error("bad job configuration: \(error.message); reporting CRASHED")
            await report(id, FinalState(type: .crashed, message: "Flow run could not start: \(error.message)"))
            return
        } catch let error as APIError where error.isRetryable {
            // The server was away while we read what the template refers to: not the run's fault.
            log.warning("cannot build the job configuration now (\(error)); handing the run back to be tried again")
            await handBack(id, because: "Worker '\(settings.workerName)' could not reach the API to build the job configuration; rescheduled.")
            return
        } catch {
            log.error("cannot build the job configuration: \(error); reporting CRASHED")
            await report(id, FinalState(type: .crashed, message: "Flow run could not start: \(error)"))
            return
        }

        if let start = run.scheduledStart, start.timeIntervalSinceNow > 0.05 {
            log.info("scheduled for \(Timestamp.format(start)); starting it then")
            let shutdown = context.shutdown, stopRequested = self.stopRequested
            let slept = await firstOf({ await shutdown.sleep(start.timeIntervalSinceNow) }, {
                await stopRequested.wait()
                return false
            })
            if !slept, !cancelRequested {
                await handBack(id)
                return
            }
        }
        await launch(run, job: job, deployment: deployment, pool: pool)
    }

    // MARK: - Claiming

    /// Claims the run with PENDING (`RunClaim`) and marks it claimed in the registry. False if it is not ours.
    func claim(_ run: FlowRun) async -> Bool {
        let claimed = await RunClaim(client: client, shutdown: context.shutdown, log: log, workerName: settings.workerName).claim(run)
        // Only a claim is remembered: a run left for the next poll is taken on the next poll.
        if claimed { await context.registry.markClaimed(run.id) }
        return claimed
    }

    /// Gives a claimed run that has not started back to the pool, so another worker can take it.
    func handBack(_ id: String, because reason: String? = nil) async {
        let message = reason ?? "Worker '\(settings.workerName)' shut down before the run started."
        do {
            switch try await reporter.propose(StateProposal(.scheduled, message: message), .init(maxWaits: 0)) {
            case .accepted(_, let result), .refused(_, _, let result):
                log.info("handed back to the pool (\(result.status.rawValue))")
            case .waitedTooLong, .stopped:
                log.info("handed back to the pool (WAIT)")
            }
        } catch {
            log.error("could not hand the run back: \(error)")
        }
    }

    // MARK: - Job configuration

    func configuration(for run: FlowRun, deployment: Deployment?, pool: WorkPool) async throws -> JobConfiguration {
        let template = try JobTemplate(pool.hasEmptyTemplate ? JobTemplate.defaultProcessTemplate : pool.baseJobTemplate!)
        let values = JobTemplate.mergeJobVariables(deployment: deployment?.jobVariables, flowRun: run.jobVariables)
        var rendered = try template.render(values: values, environment: settings.environment)
        let blocks = try await BlockReferences.resolve(.object(rendered.configuration), from: client)
        rendered.configuration = blocks.configuration.objectValue ?? [:]
        let names = Templating.variableNames(in: .object(rendered.configuration))
        if !names.isEmpty {
            var variables: [String: JSON?] = [:]
            for name in names { variables[name] = try await client.readVariable(name)?.value }
            rendered.configuration = Templating.resolveVariables(.object(rendered.configuration), variables).objectValue ?? [:]
        }
        return try JobConfiguration(rendered, secrets: blocks.secrets, bundleExecutionStep: pool.bundleExecutionStep)
    }

    /// The job's environment (`JobEnvironment`).
    nonisolated func environment(for run: FlowRun, job: JobConfiguration, flowName: String?, deployment: Deployment?,
                                 parameters: String, parametersFile: String) -> [String: String] {
        JobEnvironment.make(settings: settings, workerID: context.workerID, run: run, job: job, flowName: flowName,
                            deployment: deployment, parameters: parameters, parametersFile: parametersFile, log: log)
    }

    /// False (after reporting CANCELLED or handing the run back) if the run must not start any more.
    func startAllowed(_ id: String) async -> Bool {
        if cancelRequested {
            log.info("cancelled before it started; not starting it")
            await report(id, FinalState(type: .cancelled, message: "Flow run was cancelled before it started."))
            return false
        }
        if context.shutdown.phase >= .draining {
            await handBack(id)
            return false
        }
        return true
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

    /// Why the job is being stopped, for the log line.
    private func stopCause(timeout: Double?) -> String {
        cancelRequested ? "the run is being cancelled"
            : timedOut ? "it ran longer than timeout_seconds=\(String(format: "%g", timeout ?? 0))"
            : "the worker is shutting down"
    }

    // MARK: - Watching

    /// Watches a running job until it exits, stopping it (the declared teardown) when the run is cancelled,
    /// runs past `timeout` seconds, or the worker shuts down, then reports the final state and clears the
    /// journal entry. `exitStatus` is nil for an adopted job, whose status and usage cannot be known.
    /// `executed` gets the job's exit status and its usage (rusage, with the cgroup's figures where it had one)
    /// once the job and everything it left behind are gone.
    func watch(_ id: String, pid: pid_t, owner: StateOwner, timeout: Double? = nil, cgroup: RunCgroup? = nil,
               control: AttemptControlSession? = nil, exitStatus: @escaping @Sendable () async -> JobEnd?,
               executed: @Sendable (ExitStatus?, JobUsage) -> Void = { _, _ in }) async {
        self.pid = pid
        let limit = timeout.map { "Flow run exceeded timeout of \(String(format: "%g", $0)) second(s) (job variable timeout_seconds)" }
        // The job's side tasks are children of one group: its exit, its timer, the wait for a stop request
        // and, once one comes, the teardown. It ends when the job has exited (and, after a stop request, the
        // teardown has finished); what is left (the timer, the wait) is cancelled then.
        enum Event: Sendable { case exited(JobEnd?), timedOut, stopRequested, tornDown(Teardown.Outcome), ended }
        let stopRequested = self.stopRequested
        var end: JobEnd?
        var outcome: Teardown.Outcome?
        await withTaskGroup(of: Event.self) { group in
            group.addTask { .exited(await exitStatus()) }
            if let timeout {
                group.addTask {
                    do { try await Task.sleep(seconds: timeout) } catch { return .ended }
                    return .timedOut
                }
            }
            group.addTask {
                await stopRequested.wait()
                return Task.isCancelled ? .ended : .stopRequested
            }
            var tearingDown = false, hasExited = false
            while let event = await group.next() {
                switch event {
                case .exited(let ended):
                    end = ended
                    hasExited = true
                    self.pid = nil
                    exited.open()
                case .timedOut:
                    requestTimeout(reason: limit!)
                case .stopRequested:
                    tearingDown = true
                    group.addTask { .tornDown(await self.tearDown(pid: pid, runID: id, cgroup: cgroup, control: control, timeout: timeout)) }
                case .tornDown(let result):
                    outcome = result
                    tearingDown = false
                case .ended:
                    break
                }
                // Done once the job has exited and no teardown is under way: the timer and the wait end here.
                if hasExited, !tearingDown { group.cancelAll() }
            }
        }
        let exit = end?.status
        /// The closing line, the metrics and `executed`, with the whole tree's figures from its cgroup (more
        /// exact than rusage for trees that fork) once the cgroup is empty.
        func closing(_ cgroupUsage: CgroupUsage?) {
            var usage = end?.usage ?? .unknown
            if let cgroupUsage, end != nil { usage = usage.overridden(by: cgroupUsage.jobUsage) }
            log.info(JobUsage.closingLine(pid: pid, ending: exit?.description, usage: usage))
            if !usage.isUnknown { context.metrics.runUsage(usage) }
            executed(exit, usage)
        }

        if cancelRequested || stopReason != nil {
            closing(await finishCgroup(cgroup, id))
            let how = outcome.map { "the job \($0)" } ?? "the job " + (exit.map { "\($0)" } ?? "exited")
            if timedOut, !cancelRequested {
                await report(id, FinalState(type: .failed, message: "\(limit ?? "Flow run timed out"); \(how).", name: "TimedOut"), force: true)
            } else if cancelRequested {
                await report(id, FinalState(type: .cancelled, message: "Flow run was cancelled: \(how)."), force: true)
            } else if let handedOver {
                log.info(handedOver == .reschedule
                    ? "\(how.prefix(1).uppercased() + how.dropFirst()); the run went back to its pool (AwaitingRetry) for another worker"
                    : "\(how.prefix(1).uppercased() + how.dropFirst()); the run's state is left to the infrastructure (PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=relinquish)")
            } else {
                await report(id, FinalState(type: .crashed, message: "\(stopReason ?? "Worker shut down"): \(how)."))
            }
        } else {
            let usage = await finishCgroup(cgroup, id)
            closing(usage)
            if let exit {
                if let oom = FinalState.outOfMemory(usage: usage, limits: cgroup?.limits ?? .none, exit: exit) {
                    await report(id, oom)
                } else if let final = FinalState.decide(owner: owner, exit: exit, evidence: Self.evidence(control)) {
                    await report(id, final)
                } else if let state = try? await client.readFlowRun(id, policy: .quick).currentStateType {
                    // The engine reported; count and log what it reported.
                    log.info("the engine reported \(state.rawValue)")
                    if state.isTerminal { context.metrics.runFinished(state) }
                }
            } else {
                await reportAdoptedExit(id, owner: owner)
            }
        }
        await context.journal.remove(id)
    }

    /// Stops the job with the declared teardown (SIGTERM to its process group, the grace, SIGKILL), after
    /// telling an engine why over its control session.
    private func tearDown(pid: pid_t, runID id: String, cgroup: RunCgroup?, control: AttemptControlSession?, timeout: Double?) async -> Teardown.Outcome {
        let grace = settings.killGraceSeconds, spawner = context.spawner
        if let control { handedOver = await tellEngine(control, grace: grace) }
        log.info("\(stopCause(timeout: timeout)): sending SIGTERM to the job's process group, SIGKILL in \(String(format: "%g", grace)) s")
        let outcome = await Teardown.terminate(grace: grace).run(processGroup: pid, runID: id, cgroup: cgroup, leaderExit: exited) {
            spawner.signalGroup($0, $1)
        }
        log.info("job (pid \(pid)) \(outcome)")
        return outcome
    }

    /// Once the job has exited, empties and removes its cgroup and logs what its whole tree used.
    func finishCgroup(_ cgroup: RunCgroup?, _ id: String) async -> CgroupUsage? {
        guard let cgroup else { return nil }
        let usage = await cgroup.finish(log: log)
        log.info("cgroup usage: \(usage.summary)")
        return usage
    }

    /// An adopted job exited with a status we cannot know: a worker-owned run is CRASHED (saying why), an
    /// engine-owned run is left to the engine unless it is still not final.
    func reportAdoptedExit(_ id: String, owner: StateOwner) async {
        switch owner {
        case .worker:
            await report(id, FinalState(type: .crashed, message: "The worker restarted while the job ran; the job has exited, but its exit status could not be observed."))
        case .engine:
            await report(id, FinalState(type: .crashed, message: "The worker restarted while the flow run process ran; the process exited before the flow run reached a final state."))
        }
    }

    /// For worker-owned runs: RUNNING before the job starts. A run the server will not let run is not started.
    /// While the server is away this keeps trying (the same proposal, so a lost answer is recognised), until
    /// the worker is told a second time to stop; the run is then left PENDING for a restarted worker to hand back.
    func proposeRunning(_ id: String) async -> Bool {
        let shutdown = context.shutdown, log = self.log
        var options = StateReporter.Options()
        options.keepTrying = { error in
            guard shutdown.phase < .terminating else {
                log.error("could not propose RUNNING (\(error)) and the worker is stopping; the run stays PENDING")
                return false
            }
            log.warning("could not propose RUNNING yet (\(error)); trying again")
            return true
        }
        let outcome: StateReporter.Outcome
        do {
            outcome = try await reporter.propose(StateProposal(.running), options)
        } catch let error as APIError where error.isRetryable {
            return false  // the worker is stopping: said above
        } catch {
            log.error("could not propose RUNNING: \(error); reporting CRASHED")
            await report(id, FinalState(type: .crashed, message: "Flow run could not start: the server refused RUNNING: \(error)"))
            return false
        }
        switch outcome {
        case .accepted:
            return true
        case .stopped, .waitedTooLong:
            await handBack(id)
            return false
        case .refused(let state, _, let result):
            log.warning("server refused RUNNING (\(result.details?.reason ?? "no reason")); not starting the job")
            if state == .cancelling || state == .cancelled {
                await report(id, FinalState(type: .cancelled, message: "Flow run was cancelled before it started."))
            }
            return false
        }
    }

    // MARK: - Reporting

    /// Reports a final state through the outbox: persisted first, then delivered (reading the run first, so
    /// a final state is never overwritten, and a run being cancelled becomes CANCELLED). If the server is
    /// away, the outbox keeps trying, also after a restart.
    func report(_ id: String, _ final: FinalState, force: Bool = false) async {
        let message = context.secrets.redact(final.message)
        let proposal = StateProposal(final.type, name: final.name, message: message, force: force)
        await context.outbox.send(id, .finalState(type: final.type.rawValue, message: message,
                                                  transitionID: proposal.transitionID, force: force, name: final.name))
    }
}
