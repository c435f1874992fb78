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
    nonisolated var settings: Settings { context.settings }

    /// A supervisor for the run with id `runID`; `run(_:)` or `watch` gives it its work.
    init(context: WorkerContext, runID: String) {
        self.context = context
        self.runID = runID
        self.log = context.log.forRun(runID)
    }

    /// A poll answer younger than this is taken as the run's state for its first PENDING proposal.
    static let freshPollSeconds = 2.0

    /// Environment variables a job must not inherit from a systemd-managed worker.
    static let serviceVariables: Set<String> = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"]

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

        // Labels are informative: a failure must not hold up the run. One attempt now (at most the request
        // timeout, as Prefect's worker waits for it too), before the run's next state write, as Prefect's worker
        // orders them: sent beside the RUNNING write, a SQLite server answered it 503 ("database is locked")
        // nearly every time, which cost a retry per run. If it fails, it is retried in the background with the
        // ordinary retries while the run goes on.
        let client = self.client
        let labels = [
            "prefect.worker.name": settings.workerName, "prefect.worker.type": "process",
            "prefect.work-pool.name": pool.name, "prefect.work-pool.id": pool.id,
        ]
        do {
            try await client.addLabels(id, labels, policy: .once)
        } catch {
            Task {
                do {
                    try await client.addLabels(id, labels, policy: .standard)
                } catch {
                    log.warning("could not label the run: \(error); it runs unlabelled")
                }
            }
        }

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

    /// Proposes PENDING. Only ACCEPT (or a REJECT that returns our own PENDING after a retried request) makes
    /// the run ours; ABORT or REJECT mean another worker has it or it is no longer scheduled.
    ///
    /// The server accepts PENDING from a final state (that is how a run is re-run), so a proposal that arrives
    /// after another worker claimed, ran and finished the run would run it again. The run is therefore read
    /// right before each proposal, and a proposal is never retried blindly: after a failed attempt the run is
    /// read again, which also recognises our own PENDING if only the answer was lost. The first proposal of a
    /// run the poll returned a moment ago goes without that read: the read after the claim
    /// (`confirmFirstClaim`) catches a run that was finished in between, as it does after any read.
    func claim(_ run: FlowRun) async -> Bool {
        let claimed = await proposePending(run)
        // Only a claim is remembered: a run left for the next poll is taken on the next poll.
        if claimed { await context.registry.markClaimed(run.id) }
        return claimed
    }

    private func proposePending(_ run: FlowRun) async -> Bool {
        let id = run.id
        var ours: Set<String> = []  // every transition id we proposed: any of them may be the one that landed
        func isOurs(_ current: FlowRun) -> Bool {
            current.currentStateType == .pending && current.state?.transitionID.map(ours.contains) == true
        }
        let fresh = run.polledAt.map { Date().timeIntervalSince($0) < Self.freshPollSeconds } ?? false
        var attempt = 0
        var unanswered = false  // a proposal of ours got no answer: it may have landed, making the run ours
        var readFailures = 0
        while true {
            let current: FlowRun
            do {
                // The first proposal of a freshly polled run takes the poll's answer as the run's state.
                current = attempt == 0 && fresh ? run : try await client.readFlowRun(id, policy: .quick)
                readFailures = 0
            } catch {
                guard unanswered else {
                    log.warning("cannot read the run before claiming it: \(error); leaving it for the next poll")
                    return false
                }
                // Left now, a PENDING of ours that landed would stay PENDING with nobody to start it (a poll
                // returns only SCHEDULED runs): keep reading until we know, through a drain too.
                readFailures += 1
                let delay = RetryPolicy.standard.delay(afterAttempt: readFailures, retryAfter: nil)
                log.warning("cannot read the run after a claim attempt whose answer was lost (\(error)); it may be ours, reading it again in \(String(format: "%.1f", delay)) s")
                guard await context.shutdown.sleep(delay, unless: .terminating) else {
                    log.error("the worker is stopping before it could learn whether its claim landed; the run may stay PENDING")
                    return false
                }
                continue
            }
            if isOurs(current) { return await confirmFirstClaim(run) }
            guard current.currentStateType == .scheduled else {
                log.debug("no longer scheduled (\(current.currentStateType?.rawValue ?? "?")); not claiming it")
                return false
            }
            guard context.shutdown.phase < .draining else {
                log.info("the worker is stopping; not claiming it")
                return false
            }
            // Given up only here, right after a read that shows the run still SCHEDULED, not ours.
            guard attempt < 20 else {
                log.warning("not claimed after \(attempt) attempts (the server kept asking to wait, or failing); leaving it for the next poll")
                return false
            }
            attempt += 1
            let proposal = StateProposal(.pending)
            ours.insert(proposal.transitionID)
            let result: OrchestrationResult
            do {
                result = try await client.setState(id, proposal, policy: .once)
            } catch let error as APIError where error.isRetryable {
                unanswered = true
                let delay = RetryPolicy.quick.delay(afterAttempt: attempt, retryAfter: error.retryAfter)
                log.debug("claim attempt failed (\(error)); checking the run again in \(String(format: "%.1f", delay)) s")
                // Not cut short by a drain: the run is read once more in any case, as the proposal may have landed.
                _ = await context.shutdown.sleep(delay, unless: .terminating)
                continue
            } catch {
                log.warning("could not claim: \(error); leaving it for the next poll")
                return false
            }
            switch Orchestration.decide(proposed: .pending, result, ours: ours) {
            case .accepted:
                return await confirmFirstClaim(run)
            case .refused, .proposeCancelled:
                // An earlier attempt of ours may have landed late (its answer was lost): then the run is ours.
                if ours.count > 1, let again = try? await client.readFlowRun(id, policy: .quick), isOurs(again) {
                    return await confirmFirstClaim(run)
                }
                let now = result.state.map { " (run is \($0.type.rawValue))" } ?? ""
                log.info("not claimed: \(result.details?.reason ?? result.status.rawValue)\(now)")
                return false
            case .wait(let delay):
                log.info("server asked to wait \(String(format: "%.1f", delay)) s before PENDING")
                // After an unanswered proposal the run is read once more even if a drain starts meanwhile.
                if await !context.shutdown.sleep(delay, unless: unanswered ? .terminating : .draining) {
                    log.info("the worker is stopping; not claiming it")
                    return false
                }
            }
        }
    }

    /// The server accepts PENDING from a final state, so a slow PENDING can land after another worker ran the
    /// run to the end: it would reopen a finished run. After a claim the run is read once more; if it ran
    /// since it was polled (its run count or start time moved), its last final state is put back and the run
    /// is left alone.
    func confirmFirstClaim(_ polled: FlowRun) async -> Bool {
        let id = polled.id
        guard let now = try? await client.readFlowRun(id, policy: .quick) else { return true }
        let ranMeanwhile = (now.runCount ?? 0) > (polled.runCount ?? 0) || (now.startTime != nil && now.startTime != polled.startTime)
        guard ranMeanwhile else { return true }
        log.warning("claimed a run another worker finished meanwhile (run count \(polled.runCount ?? 0) → \(now.runCount ?? 0)); restoring its final state, not running it again")
        do {
            let states = try await client.flowRunStates(id)
            if let final = states.last(where: { $0.type.isTerminal }) {
                _ = try await client.restoreState(id, final, message: final.message ?? "Restored by worker '\(settings.workerName)' after a duplicate claim.")
            }
        } catch {
            log.error("could not restore the run's final state: \(error)")
        }
        return false
    }

    /// Gives a claimed run that has not started back to the pool, so another worker can take it.
    func handBack(_ id: String, because reason: String? = nil) async {
        let message = reason ?? "Worker '\(settings.workerName)' shut down before the run started."
        do {
            let result = try await client.setState(id, StateProposal(.scheduled, message: message))
            log.info("handed back to the pool (\(result.status.rawValue))")
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

    /// The job's environment: the worker's, then the job's `env`, then what identifies the run (with the flow's
    /// and the deployment's names when they have one, as Prefect's `_base_attribution_environment` sets them).
    nonisolated func environment(for run: FlowRun, job: JobConfiguration, flowName: String?, deployment: Deployment?,
                                 parameters: String, parametersFile: String) -> [String: String] {
        var env = settings.environment.filter { !Self.serviceVariables.contains($0.key) }
        env.merge(job.environment) { $1 }
        env["PREFECT__FLOW_RUN_ID"] = run.id
        env["PREFECT_API_URL"] = settings.apiURL.absoluteString
        if let key = settings.apiKey { env["PREFECT_API_KEY"] = key }
        if let auth = settings.authString { env["PREFECT_API_AUTH_STRING"] = auth }
        env["PREFECT__WORKER_NAME"] = settings.workerName
        if let workerID = context.workerID { env["PREFECT__WORKER_ID"] = workerID }
        if let flowID = run.flowID { env["PREFECT__FLOW_ID"] = flowID }
        if let flowName, !flowName.isEmpty { env["PREFECT__FLOW_NAME"] = flowName }
        if let deploymentID = run.deploymentID { env["PREFECT__DEPLOYMENT_ID"] = deploymentID }
        if let name = deployment?.name, !name.isEmpty { env["PREFECT__DEPLOYMENT_NAME"] = name }
        env["PREFECT_FLOW_RUN_PARAMETERS_FILE"] = parametersFile
        // Linux refuses a single environment string over 128 KiB (MAX_ARG_STRLEN); the file always has them.
        let entryBytes = "PREFECT_FLOW_RUN_PARAMETERS=".utf8.count + parameters.utf8.count + 1
        if entryBytes <= 128 * 1024 {
            env["PREFECT_FLOW_RUN_PARAMETERS"] = parameters
        } else {
            env["PREFECT_FLOW_RUN_PARAMETERS"] = nil
            log.warning("parameters are \(parameters.utf8.count) bytes, too large for one environment variable; the job gets them only through PREFECT_FLOW_RUN_PARAMETERS_FILE")
        }
        return env
    }

    // MARK: - Running

    func launch(_ run: FlowRun, job: JobConfiguration, deployment: Deployment?, pool: WorkPool) async {
        let id = run.id
        // The job's own secrets (its `env`, the blocks it uses) are kept out of everything the worker writes
        // while it runs, from its first line on (a working directory named after a secret included).
        let runSecrets = Redactor.secretValues(environment: job.environment, patterns: settings.redactedVariablePatterns) + job.secrets
        context.secrets.add(runSecrets)
        defer { context.secrets.remove(runSecrets) }
        let parameters = (run.parameters ?? .object([:])).encoded()
        let workspace: JobWorkspace
        do {
            workspace = try JobWorkspace.create(parameters: parameters, workingDirectory: job.workingDirectory,
                                                environment: settings.environment)
        } catch {
            log.error("cannot prepare the job: \(error.message); reporting CRASHED")
            await report(id, FinalState(type: .crashed, message: "Flow run could not start: \(error.message)"))
            return
        }
        defer { workspace.remove() }

        // Read once per flow (and cached): the job's environment and the run's events name the flow.
        let flowName = await context.flowName(run.flowID)
        var env = environment(for: run, job: job, flowName: flowName, deployment: deployment,
                              parameters: parameters, parametersFile: workspace.parametersFile)
        // An engine gets its attempt control session, so a cancellation or a hand-back reaches it before our
        // SIGTERM (Run/AttemptControlSession.swift).
        var control: AttemptControlSession?
        if job.stateOwner == .engine {
            do {
                control = try AttemptControlSession(log: log)
            } catch {
                log.warning("\(error); the job runs without it: a cancellation then stops it as a crash")
            }
        }
        defer { control?.close() }
        env.merge(control?.environment ?? [:]) { $1 }
        var arguments = job.arguments
        let executable: String
        do {
            executable = try resolveProgram(&arguments, commandIsDefault: job.command == nil, env: env, directory: workspace.workingDirectory)
        } catch {
            log.error("cannot start the job: \(error.message); reporting CRASHED")
            await report(id, FinalState(type: .crashed, message: "Flow run could not start: \(error.message)"))
            return
        }

        // The job's own cgroup, with its limits, before anything starts (Process/RunCgroup.swift).
        let cgroup: RunCgroup?
        do {
            cgroup = try RunCgroup.prepare(host: context.cgroups.host, whyNoHost: context.cgroups.reason, runID: id, limits: job.limits)
        } catch {
            log.error("cannot start the job: \(error.message); reporting CRASHED")
            await report(id, FinalState(type: .crashed, message: "Flow run could not start: \(error.message)"))
            return
        }
        defer { cgroup?.remove() }

        // Last look before starting: a run cancelled or a worker stopping since the claim does not start.
        // Then PENDING/Submitting, as Prefect's worker proposes it before the job (and before our RUNNING).
        guard await startAllowed(id), await proposeSubmitting(id) else { return }
        if job.stateOwner == .worker {
            guard await proposeRunning(id) else { return }
            // RUNNING may have taken a while (WAIT answers, retries): a cancel that came meanwhile wins.
            if cancelRequested {
                log.info("cancelled while RUNNING was being proposed; not starting it")
                await report(id, FinalState(type: .cancelled, message: "Flow run was cancelled before it started."))
                return
            }
        }

        let submitted = context.events.emit("prefect.worker.submitted-flow-run", related: WorkerEvents.runRelated(
            run: run, deployment: deployment, flowName: flowName, pool: pool))
        // Output is captured when it is streamed, or when the worker ships it to the run's logs.
        let shipOutput = job.stateOwner == .worker && settings.logsToAPI.enabled
        let process: SpawnedProcess
        do {
            var request = SpawnRequest(
                executable: executable, arguments: arguments, environment: env,
                workingDirectory: workspace.workingDirectory, captureOutput: job.streamOutput || shipOutput)
            request.cgroupFD = cgroup?.fd
            process = try context.spawner.spawn(request)
        } catch {
            log.error("cannot start the job: \(error.message); reporting CRASHED")
            await report(id, FinalState(type: .crashed, message: "Flow run could not start: \(error.message)"))
            return
        }
        await context.journal.record(JournalEntry(
            runID: id, pid: process.pid, processStart: ProcFS.startTime(of: process.pid), owner: job.stateOwner.rawValue,
            workerName: settings.workerName, pool: settings.pool, workerPID: context.identity.pid, workerStart: context.identity.start))
        context.metrics.runStarted()
        let logs = context.logs
        let maxLogSize = settings.logsToAPI.maxLogSize
        func shipper(_ level: Log.Level) -> (@Sendable (String) -> Void)? {
            guard shipOutput else { return nil }
            return { line in
                logs.add(FlowRunLog.shippable(runID: id, level: level, message: line, name: "prefect.flow_runs.job", maxSize: maxLogSize))
            }
        }
        let redactor = context.secrets.redactor
        let pumps = [
            process.stdout.map { OutputPump(fd: $0, prefix: "\(id) | ", destination: job.streamOutput ? STDOUT_FILENO : nil, redactor: redactor, onLine: shipper(.info)) },
            process.stderr.map { OutputPump(fd: $0, prefix: "\(id) | ", destination: job.streamOutput ? STDERR_FILENO : nil, redactor: redactor, onLine: shipper(.warning)) },
        ].compactMap { $0 }
        log.info("started \(job.stateOwner == .engine ? "engine" : "command") \(JSON.array(arguments.map(JSON.string)).encoded()) as pid \(process.pid) in \(workspace.workingDirectory)\(cgroup.map { " (cgroup \($0.path))" } ?? "")")

        // Queued here, before the job can end, so it reaches the server before the final state (per-run
        // order); delivered in the background, so a slow server does not hold up the watch.
        let outbox = context.outbox
        await outbox.enqueue(id, .infrastructurePID(pid: process.pid))
        Task { await outbox.deliver(id, policy: .quick) }

        let events = context.events, spawner = context.spawner
        // The engine heartbeats for its own runs; for a plain command the worker does.
        let heartbeat = job.stateOwner == .worker
            ? FlowRunHeartbeat(run: run, flowName: flowName, pool: pool, events: events, every: FlowRunHeartbeat.seconds(env, log: log)) : nil
        await watch(id, pid: process.pid, owner: job.stateOwner, timeout: job.timeoutSeconds, cgroup: cgroup, control: control, exitStatus: {
            let end = await spawner.waitForEnd(process.pid)
            heartbeat?.stop()
            for pump in pumps { await pump.finish(timeout: 2) }
            return end
        }, executed: { status, usage in
            events.emit("prefect.worker.executed-flow-run", related: WorkerEvents.runRelated(
                run: run, deployment: deployment, flowName: flowName, pool: pool, pid: process.pid, exitCode: status?.code),
                payload: usage.payload, follows: submitted)
        })
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
        let grace = settings.killGraceSeconds
        let limit = timeout.map { "Flow run exceeded timeout of \(String(format: "%g", $0)) second(s) (job variable timeout_seconds)" }
        let timer = timeout.map { seconds in
            Task {
                do { try await Task.sleep(seconds: seconds) } catch { return }
                self.requestTimeout(reason: limit!)
            }
        }
        let stopRequested = self.stopRequested, exited = self.exited, spawner = context.spawner
        let stopper = Task { () -> Teardown.Outcome? in
            await stopRequested.wait()
            if Task.isCancelled { return nil }
            if let control { self.handedOver = await self.tellEngine(control, grace: grace) }
            log.info("\(self.stopCause(timeout: timeout)): sending SIGTERM to the job's process group, SIGKILL in \(String(format: "%g", grace)) s")
            let outcome = await Teardown.terminate(grace: grace).run(processGroup: pid, runID: id, cgroup: cgroup, leaderExit: exited) {
                spawner.signalGroup($0, $1)
            }
            log.info("job (pid \(pid)) \(outcome)")
            return outcome
        }
        let end = await exitStatus()
        timer?.cancel()
        let exit = end?.status
        self.pid = nil
        exited.open()
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
            let outcome = await stopper.value
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
            stopper.cancel()
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

    /// Resolves the program with the job's PATH. The default engine command falls back from `python` to
    /// `python3`, since many Linux hosts have only the latter.
    func resolveProgram(_ arguments: inout [String], commandIsDefault: Bool, env: [String: String], directory: String) throws(SpawnError) -> String {
        do {
            return try ExecutableLookup.resolve(arguments[0], path: env["PATH"], workingDirectory: directory)
        } catch {
            guard commandIsDefault, arguments[0] == "python",
                  let python3 = try? ExecutableLookup.resolve("python3", path: env["PATH"], workingDirectory: directory)
            else { throw error }
            arguments[0] = "python3"
            return python3
        }
    }

    /// For worker-owned runs: RUNNING before the job starts. A run the server will not let run is not started.
    /// While the server is away this keeps trying (the same proposal, so a lost answer is recognised), until
    /// the worker is told a second time to stop; the run is then left PENDING for a restarted worker to hand back.
    func proposeRunning(_ id: String) async -> Bool {
        var proposal = StateProposal(.running)
        while true {
            let result: OrchestrationResult
            do {
                result = try await client.setState(id, proposal)
            } catch let error as APIError where error.isRetryable {
                guard context.shutdown.phase < .terminating else {
                    log.error("could not propose RUNNING (\(error)) and the worker is stopping; the run stays PENDING")
                    return false
                }
                log.warning("could not propose RUNNING yet (\(error)); trying again")
                continue
            } catch {
                log.error("could not propose RUNNING: \(error); reporting CRASHED")
                await report(id, FinalState(type: .crashed, message: "Flow run could not start: the server refused RUNNING: \(error)"))
                return false
            }
            switch Orchestration.decide(proposed: .running, result) {
            case .accepted:
                return true
            case .wait(let delay):
                log.info("server asked to wait \(String(format: "%.1f", delay)) s before RUNNING")
                guard await context.shutdown.sleep(delay) else { await handBack(id); return false }
                proposal = StateProposal(.running)
            case .refused, .proposeCancelled:
                let state = result.state?.type
                log.warning("server refused RUNNING (\(result.details?.reason ?? "no reason")); not starting the job")
                if state == .cancelling || state == .cancelled {
                    await report(id, FinalState(type: .cancelled, message: "Flow run was cancelled before it started."))
                }
                return false
            }
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
