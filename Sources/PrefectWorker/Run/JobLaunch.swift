import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Starting a run's job: the prepared job (`PreparedJob`), the last look before the start, PENDING/Submitting
/// (and RUNNING for a plain command), the spawn, the journal entry, the output pumps, the heartbeat, and then
/// the watch, with the pid's delivery to the server as a child task beside it.
extension FlowRunSupervisor {
    func launch(_ run: FlowRun, job: JobConfiguration, deployment: Deployment?, pool: WorkPool) async {
        let id = run.id
        // The job's own secrets (its `env`, the blocks it uses) are kept out of everything the worker writes
        // while it runs, from its first line on (a working directory named after a secret included).
        let runSecrets = Redactor.secretValues(environment: job.environment, patterns: settings.redactedVariablePatterns) + job.secrets
        dependencies.secrets.add(runSecrets)
        defer { dependencies.secrets.remove(runSecrets) }
        // Read once per flow (and cached): the job's environment and the run's events name the flow.
        let flowName = await dependencies.lookups.flowName(run.flowID)
        let prepared: PreparedJob
        do {
            prepared = try PreparedJob.prepare(run: run, job: job, deployment: deployment, flowName: flowName, settings: settings,
                                               workerID: dependencies.lookups.workerID, cgroups: dependencies.lookups.cgroups, log: log)
        } catch {
            log.error("cannot \(error.stage) the job: \(error.message); reporting CRASHED")
            await report(FinalState(type: .crashed, message: "Flow run could not start: \(error.message)"))
            return
        }
        defer { prepared.remove() }
        let (env, workspace, cgroup) = (prepared.environment, prepared.workspace, prepared.cgroup)
        let (executable, arguments) = (prepared.executable, prepared.arguments)

        // Last look before starting: a run cancelled or a worker stopping since the claim does not start.
        // Then PENDING/Submitting, as Prefect's worker proposes it before the job (and before our RUNNING).
        guard await startAllowed(), await proposeSubmitting() else { return }
        if job.stateOwner == .worker {
            guard await proposeRunning() else { return }
            // RUNNING may have taken a while (WAIT answers, retries): a cancel that came meanwhile wins.
            if cancelRequested {
                log.info("cancelled while RUNNING was being proposed; not starting it")
                await report(.cancelledBeforeStart)
                return
            }
        }

        let submitted = dependencies.events.emit("prefect.worker.submitted-flow-run", related: WorkerEvents.runRelated(
            run: run, deployment: deployment, flowName: flowName, pool: pool))
        // Output is captured when it is streamed, or when the worker ships it to the run's logs.
        let shipOutput = job.stateOwner == .worker && settings.logsToAPI.enabled
        let process: SpawnedProcess
        do {
            var request = SpawnRequest(
                executable: executable, arguments: arguments, environment: env,
                workingDirectory: workspace.workingDirectory, captureOutput: job.streamOutput || shipOutput)
            request.cgroupFD = cgroup?.fd
            process = try dependencies.spawner.spawn(request)
        } catch {
            log.error("cannot start the job: \(error.message); reporting CRASHED")
            await report(FinalState(type: .crashed, message: "Flow run could not start: \(error.message)"))
            return
        }
        await dependencies.journal.record(JournalEntry(
            runID: id, pid: process.pid, processStart: ProcFS.startTime(of: process.pid), owner: job.stateOwner.rawValue,
            workerName: settings.workerName, pool: settings.pool, workerPID: dependencies.identity.pid, workerStart: dependencies.identity.start))
        dependencies.metrics.runStarted()
        let logs = dependencies.logs
        let maxLogSize = settings.logsToAPI.maxLogSize
        func shipper(_ level: Log.Level) -> (@Sendable (String) -> Void)? {
            guard shipOutput else { return nil }
            return { line in
                logs.add(FlowRunLog.shippable(runID: id, level: level, message: line, name: "prefect.flow_runs.job", maxSize: maxLogSize))
            }
        }
        let redactor = dependencies.secrets.redactor
        let pumps = [
            process.stdout.map { OutputPump(fd: $0, prefix: "\(id) | ", destination: job.streamOutput ? STDOUT_FILENO : nil, redactor: redactor, onLine: shipper(.info)) },
            process.stderr.map { OutputPump(fd: $0, prefix: "\(id) | ", destination: job.streamOutput ? STDERR_FILENO : nil, redactor: redactor, onLine: shipper(.warning)) },
        ].compactMap { $0 }
        log.info("started \(job.stateOwner == .engine ? "engine" : "command") \(JSON.array(arguments.map(JSON.string)).encoded()) as pid \(process.pid) in \(workspace.workingDirectory)\(cgroup.map { " (cgroup \($0.path))" } ?? "")")

        // Queued here, before the job can end, so it reaches the server before the final state (per-run
        // order); delivered in the background, so a slow server does not hold up the watch.
        let outbox = dependencies.outbox
        await outbox.enqueue(id, .infrastructurePID(pid: process.pid))

        let events = dependencies.events
        // The engine heartbeats for its own runs; for a plain command the worker does, until the job exits.
        var beat: (@Sendable () async -> Void)?
        if job.stateOwner == .worker {
            let heartbeat = FlowRunHeartbeat(events: events, every: FlowRunHeartbeat.seconds(env, log: log))
            beat = { await heartbeat.beat(run, flowName: flowName, pool: pool) }
        }
        let running = RunningJob(
            process: .spawned(process, pumps: pumps), runID: id, timeout: job.timeoutSeconds, cgroup: cgroup, heartbeat: beat,
            spawner: dependencies.spawner, killGrace: settings.killGraceSeconds, log: log)
        await withDiscardingTaskGroup { group in
            group.addTask { await outbox.deliver(id, policy: .quick) }
            // Its `executed-flow-run` event follows `submitted`.
            await watch(running, owner: job.stateOwner, control: prepared.control) { status, usage in
                events.emit("prefect.worker.executed-flow-run", related: WorkerEvents.runRelated(
                    run: run, deployment: deployment, flowName: flowName, pool: pool, pid: process.pid, exitCode: status?.code),
                    payload: usage.payload, follows: submitted)
            }
        }
    }
}
