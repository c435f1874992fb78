import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A fatal problem the worker cannot ride out (wrong pool type, rejected credentials): exit 1.
struct WorkerError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// The worker: sync the pool, then heartbeat and poll until shutdown, supervising each claimed run.
public final class Worker: Sendable {
    let context: WorkerContext
    var settings: Settings { context.settings }
    var client: PrefectClient { context.client }
    var log: Logger { context.log }

    /// A worker for `settings`, with its own API client.
    public init(settings: Settings) {
        var settings = settings
        let state = StateDirectory.resolve(settings.stateDirectory,
                                           fallbacks: StateDirectory.fallbacks(environment: settings.environment, uid: getuid()))
        if let warning = state.warning { Log.warning(warning) }
        settings.stateDirectory = state.path
        // The client is made with the worker's counters and a logger with its redaction (retries quote the
        // server's error detail); the context gets the same ones.
        let secrets = KnownSecrets(settings.secretValues), metrics = Metrics()
        let client = PrefectClient(baseURL: settings.apiURL, apiKey: settings.apiKey, authString: settings.authString,
                                   settings: settings.client, metrics: metrics,
                                   log: Logger(output: Logger.Output(redact: { secrets.redact($0) }, runLine: nil)))
        // Prefect's worker sends its name with every request it makes (`get_attribution_headers`), Cloud or not.
        client.setHeader("X-Prefect-Worker-Name", settings.workerName)
        self.context = WorkerContext(settings: settings, client: client, secrets: secrets, metrics: metrics)
    }

    /// A worker on a context made elsewhere (the unit tests': a fake API and a fake spawner).
    init(context: WorkerContext) {
        self.context = context
    }

    /// Called for SIGTERM/SIGINT: the first drains, the second terminates the jobs.
    public func handleSignal(_ signal: Int32) {
        guard signal == SIGTERM || signal == SIGINT else { return }
        let name = ExitStatus.signalName(signal)
        switch context.shutdown.phase {
        case .running:
            log.info("received \(name): no longer claiming runs; waiting for runs in flight (send \(name) again to stop them now)")
        case .draining, .terminating:
            log.info("received \(name) again: stopping runs in flight")
        }
        context.shutdown.advance()
    }

    /// Runs until shutdown; returns the process exit code.
    ///
    /// The worker's parts are services in one task group, in three stages that stop in a declared order:
    /// stop claiming (the poll) → drain (the runs in flight, through their supervisors) → stop the loops
    /// (pool sync and heartbeat, cancellation watch, watchdog; the health server answers until the process
    /// exits) → stop and flush the shippers (outbox, run logs, events), which carry the runs' last reports.
    public func run() async -> Int32 {
        log.info("worker '\(settings.workerName)' \(WorkerVersion.current) starting for work pool '\(settings.pool)' at \(redactedURL(settings.apiURL))"
                 + (client.proxyDescription.map { " through proxy \($0)" } ?? ""))
        let health: HealthService?
        do {
            try context.journal.prepare()
            try await context.outbox.prepare()
            health = settings.withHealthcheck ? try HealthService(context.healthSources, log: log) : nil
        } catch {
            log.error("\(error)")
            return 1
        }
        if let policy = settings.installPolicy {
            log.info("--install-policy \(policy): a process worker needs nothing installed; ignoring it")
        }
        if settings.enableCancellation == false {
            log.info("PREFECT_WORKER_ENABLE_CANCELLATION is false, but prefect-worker always cancels its runs in flight when they are CANCELLING")
        }
        if settings.debugMode { log.debug("PREFECT_WORKER_DEBUG_MODE: debug logging for the worker") }
        let mistyped = Settings.apiURLMisconfigurations(settings.apiURL.absoluteString)
        if !mistyped.isEmpty, !settings.silenceAPIURLMisconfiguration {
            log.warning("\(mistyped.joined(separator: "; ")) (e.g. PREFECT_API_URL=https://api.prefect.cloud/api/accounts/[ACCOUNT-ID]/workspaces/[WORKSPACE-ID]); starting anyway. PREFECT_SILENCE_API_URL_MISCONFIGURATION=true silences this")
        }
        ProcFS.becomeSubreaper()
        context.cgroups = CgroupHost.setUp()  // per-job cgroups when the worker's cgroup is delegated
        let context = self.context
        if !settings.logsToAPI.enabled {
            log.info("PREFECT_LOGGING_TO_API_ENABLED is false: job output and the worker's lines about runs stay in the worker's log")
        }

        return await withDiscardingTaskGroup(returning: Int32.self) { group in
            let shippers = ServiceStage(), loops = ServiceStage(), claiming = ServiceStage()
            for shipper in [context.outbox, context.logs, context.events.shipper] as [any Service] {
                shippers.start(shipper, in: &group)
            }
            loops.start(Watchdog(settings: settings, notifier: context.notifier, status: context.status, log: log), in: &group)
            if let health { loops.start(health, in: &group) }
            func stopBeforeServing() async {
                await loops.stop()
                await shippers.stop()
            }

            let pool = PoolService(settings: settings, client: context.client, lookups: context.lookups, status: context.status,
                                   metrics: context.metrics, push: context.push, notifier: context.notifier, log: log)
            switch await startUp(pool) {
            case .failure(let error):
                log.error(error.message)
                await stopBeforeServing()
                return 1
            case .success(false):
                log.info("stopped before the work pool was ready")
                await stopBeforeServing()
                return 0
            case .success(true):
                break
            }

            let runs = RunLifecycle(registry: context.registry, dependencies: context.runDependencies)
            group.addTask { await runs.run() }
            await Recovery(runs: runs, journal: context.journal, identity: context.identity, settings: settings,
                           client: context.client, outbox: context.outbox, secrets: context.secrets, log: log).run()
            let startedEvent = context.events.started(pool: context.pool)
            loops.start(pool, in: &group)
            loops.start(CancellationWatch(settings: settings, client: context.client, registry: context.registry, push: context.push,
                                          log: log), in: &group)
            loops.start(EventWatch(settings: settings, client: context.client, lookups: context.lookups, registry: context.registry,
                                   push: context.push, metrics: context.metrics, log: log), in: &group)
            loops.start(WorkerChannel(settings: settings, client: context.client, lookups: context.lookups, status: context.status,
                                      push: context.push, log: log), in: &group)
            claiming.start(PollService(settings: settings, client: context.client, runs: runs, lookups: context.lookups,
                                       status: context.status, metrics: context.metrics, push: context.push, log: log),
                           in: &group)
            if settings.runOnce {
                // One poll, then the runs it claimed run to the end (a signal still drains or stops them).
                await claiming.finished()
                let registry = context.registry
                await firstOf({ await registry.waitUntilEmpty() }, { await context.shutdown.wait(for: .draining) })
                context.shutdown.advance(to: .draining)
            } else {
                await context.shutdown.wait(for: .draining)
            }
            context.notifier.notify("STOPPING=1\nSTATUS=draining: \(await context.registry.count) run(s) in flight")

            // The declared stop order.
            await claiming.stop()
            runs.finish()
            await drain()
            await runs.finished()
            context.events.stopped(pool: context.pool, follows: startedEvent)
            await loops.stop()
            await shippers.stop()
            await context.outbox.flush(timeout: 5)
            await context.logs.flush(timeout: 3)
            await context.events.shipper.flush(timeout: 2)
            await context.events.socket?.close()
            log.info("worker '\(settings.workerName)' stopped")
            return 0
        }
    }

    /// The pool's start-up (read or create it, first heartbeat) until it succeeds, fails for good, or the
    /// worker is told to stop first (`.success(false)`).
    private func startUp(_ pool: PoolService) async -> Result<Bool, WorkerError> {
        let settings = self.settings, shutdown = context.shutdown
        return await firstOf({ () async -> Result<Bool, WorkerError> in
            do {
                try await pool.startUp()
                return .success(true)
            } catch let error as WorkerError {
                return .failure(error)
            } catch is CancellationError {
                return .success(false)
            } catch {
                return .failure(WorkerError(message: "cannot start serving work pool '\(settings.pool)': \(error)"))
            }
        }, { () async -> Result<Bool, WorkerError> in
            await shutdown.wait(for: .draining)
            return .success(false)
        })
    }

    // MARK: - Shutdown

    /// Waits for runs in flight; on a second signal or when `--drain-timeout` passes, stops them
    /// (SIGTERM to each job's process group, grace, SIGKILL) and waits for their final reports.
    func drain() async {
        let registry = context.registry
        var inFlight = await registry.count
        if inFlight > 0 {
            let ids = await registry.runIDs.joined(separator: ", ")
            log.info("draining: \(inFlight) run(s) in flight: \(ids)"
                     + (settings.drainTimeout.map { "; stopping them in \($0) s" } ?? "; waiting for them to finish"))
            let timeout = settings.drainTimeout
            // Whichever comes first: the runs end, or the drain timeout (or a second signal); meanwhile a line
            // every 15 s says who is still running. The progress lines are a child task, ended with the wait.
            let shutdown = context.shutdown, log = self.log
            let finished = await withTaskGroup(of: Bool?.self) { group -> Bool in
                group.addTask {
                    await registry.waitUntilEmpty()
                    return true
                }
                group.addTask {
                    if let timeout {
                        _ = await shutdown.sleep(timeout, unless: .terminating)
                    } else {
                        await shutdown.wait(for: .terminating)
                    }
                    return false
                }
                group.addTask {
                    while (try? await Task.sleep(seconds: 15)) != nil {
                        let ids = await registry.runIDs
                        if Task.isCancelled || ids.isEmpty { break }
                        log.info("still draining: \(ids.count) run(s) in flight: \(ids.joined(separator: ", ")); "
                                 + (timeout == nil ? "waiting for them (signal again to stop them now)" : "they will be stopped when the drain timeout passes"))
                    }
                    return nil
                }
                var finished = false
                for await outcome in group {
                    guard let outcome else { continue }
                    finished = outcome
                    break
                }
                group.cancelAll()
                return finished
            }
            if !finished {
                inFlight = await registry.count
                let reason = context.shutdown.phase == .terminating
                    ? "Worker '\(settings.workerName)' shut down (stopped a second time before its runs finished)"
                    : "Worker '\(settings.workerName)' shut down and the drain timeout passed"
                log.info("stopping \(inFlight) run(s) in flight")
                for supervisor in await registry.supervisors { await supervisor.requestStop(reason: reason) }
                await registry.waitUntilEmpty()
            }
        }
    }
}
