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

    /// A worker for `settings`, with its own API client.
    public init(settings: Settings) {
        let client = PrefectClient(baseURL: settings.apiURL, apiKey: settings.apiKey, authString: settings.authString, settings: settings.client)
        // Prefect's worker sends its name with every request it makes (`get_attribution_headers`), Cloud or not.
        client.setHeader("X-Prefect-Worker-Name", settings.workerName)
        self.context = WorkerContext(settings: settings, client: client)
    }

    /// Called for SIGTERM/SIGINT: the first drains, the second terminates the jobs.
    public func handleSignal(_ signal: Int32) {
        guard signal == SIGTERM || signal == SIGINT else { return }
        let name = ExitStatus.signalName(signal)
        switch context.shutdown.phase {
        case .running:
            Log.info("received \(name): no longer claiming runs; waiting for runs in flight (send \(name) again to stop them now)")
        case .draining, .terminating:
            Log.info("received \(name) again: stopping runs in flight")
        }
        context.shutdown.advance()
    }

    /// Runs until shutdown; returns the process exit code.
    public func run() async -> Int32 {
        let secrets = context.secrets
        Log.setRedaction { secrets.redact($0) }
        defer { Log.setRedaction(nil) }
        Log.info("worker '\(settings.workerName)' \(WorkerVersion.current) starting for work pool '\(settings.pool)' at \(redactedURL(settings.apiURL))"
                 + (client.proxyDescription.map { " through proxy \($0)" } ?? ""))
        do {
            try context.journal.prepare()
            try await context.outbox.prepare()
        } catch {
            Log.error("\(error)")
            return 1
        }
        if let policy = settings.installPolicy {
            Log.info("--install-policy \(policy): a process worker needs nothing installed; ignoring it")
        }
        if settings.enableCancellation == false {
            Log.info("PREFECT_WORKER_ENABLE_CANCELLATION is false, but prefect-worker always cancels its runs in flight when they are CANCELLING")
        }
        if settings.debugMode { Log.debug("PREFECT_WORKER_DEBUG_MODE: debug logging for the worker") }
        ProcFS.becomeSubreaper()
        context.cgroups = CgroupHost.setUp()  // issue 13: per-job cgroups when the worker's cgroup is delegated
        let context = self.context
        if settings.logsToAPI.enabled {
            Log.setRunSink { level, runID, message in
                context.logs.add(context.logRecord(runID: runID, level: level, message: message))
            }
        } else {
            Log.info("PREFECT_LOGGING_TO_API_ENABLED is false: job output and the worker's lines about runs stay in the worker's log")
        }
        defer { Log.setRunSink(nil) }
        if settings.withHealthcheck {
            do {
                let server = try HealthServer(host: settings.webserverHost, port: settings.webserverPort, handler: healthResponse)
                server.start()
                Log.info("health and metrics on http://\(settings.webserverHost):\(server.port)/health and /metrics")
            } catch {
                Log.error("\(error)")
                return 1
            }
        }
        let shippers = [Task { await context.logs.run() }, Task { await self.context.events.shipper.run() },
                        Task { await self.context.outbox.run() }]
        let watchdog = Task { await self.watchdogLoop() }
        let started = await firstOf({ () async -> Result<Bool, WorkerError> in
            do {
                try await self.startUp()
                return .success(true)
            } catch let error as WorkerError {
                return .failure(error)
            } catch is CancellationError {
                return .success(false)
            } catch {
                return .failure(WorkerError(message: "cannot start serving work pool '\(self.settings.pool)': \(error)"))
            }
        }, { () async -> Result<Bool, WorkerError> in
            await self.context.shutdown.wait(for: .draining); return .success(false)
        })
        switch started {
        case .failure(let error):
            Log.error(error.message)
            watchdog.cancel()
            return 1
        case .success(false):
            Log.info("stopped before the work pool was ready")
            watchdog.cancel()
            return 0
        case .success(true):
            break
        }

        await Recovery(context: context).run()
        let startedEvent = context.events.started(pool: context.pool)
        let heartbeat = Task { await self.heartbeatLoop() }
        let cancellations = Task { await self.cancellationLoop() }
        let poller = Task { await self.pollLoop() }
        if settings.runOnce {
            // One poll, then the runs it claimed run to the end (a signal still drains or stops them).
            await poller.value
            let registry = context.registry
            await firstOf({ await registry.waitUntilEmpty() }, { await self.context.shutdown.wait(for: .draining) })
            context.shutdown.advance(to: .draining)
        } else {
            await context.shutdown.wait(for: .draining)
        }
        context.notifier.notify("STOPPING=1\nSTATUS=draining: \(await context.registry.count) run(s) in flight")
        poller.cancel()
        await poller.value
        await drain()
        heartbeat.cancel()
        cancellations.cancel()
        await heartbeat.value
        await cancellations.value
        context.events.stopped(pool: context.pool, follows: startedEvent)
        watchdog.cancel()
        for shipper in shippers { shipper.cancel() }
        await context.outbox.flush(timeout: 5)
        await context.logs.flush(timeout: 3)
        await context.events.shipper.flush(timeout: 2)
        Log.info("worker '\(settings.workerName)' stopped")
        return 0
    }

    // MARK: - Start-up and pool sync

    /// Reads (or creates) the pool until the server answers, then sends the first heartbeat.
    func startUp() async throws {
        var attempt = 0
        while true {
            attempt += 1
            do {
                try await syncPool()
                if context.pool != nil { break }
            } catch let error as APIError where !error.isRetryable && error.status != 404 {
                if error.status == 401 || error.status == 403 {
                    throw WorkerError(message: "the Prefect API at \(redactedURL(settings.apiURL)) refused our credentials (\(error)); check PREFECT_API_KEY / PREFECT_API_AUTH_STRING")
                }
                throw WorkerError(message: "cannot set up work pool '\(settings.pool)': \(error)")
            } catch let error as APIError {
                let delay = RetryPolicy(maxAttempts: .max, maxDelay: 30).delay(afterAttempt: attempt, retryAfter: error.retryAfter)
                Log.warning("cannot reach the Prefect API at \(redactedURL(settings.apiURL)): \(error); retrying in \(String(format: "%.1f", delay)) s")
                try await Task.sleep(nanoseconds: UInt64(delay * 1_000_000_000))
                continue
            }
            // Pool missing and not to be created.
            try await Task.sleep(nanoseconds: UInt64(settings.querySeconds * 1_000_000_000))
        }
        try await ensureQueues()
        await sendHeartbeat()
        Log.info("serving work pool '\(settings.pool)'" + (settings.workQueues.isEmpty ? "" : " queues \(settings.workQueues)")
                 + "; polling every \(settings.querySeconds) s, heartbeat every \(settings.heartbeatSeconds) s")
    }

    /// Reads the pool into the shared snapshot, creating it (type `process`, Prefect's default template) when
    /// missing, and installing the default template when it is empty.
    func syncPool() async throws {
        var pool = try await client.readWorkPool(settings.pool, policy: .quick)
        var created = false
        if pool == nil {
            guard settings.createPoolIfNotFound else {
                Log.warning("work pool '\(settings.pool)' not found; waiting for it to be created")
                context.pool = nil
                return
            }
            do {
                pool = try await client.createWorkPool(name: settings.pool, type: "process",
                                                       baseJobTemplate: settings.baseJobTemplate ?? JobTemplate.defaultProcessTemplate)
                Log.info("created work pool '\(settings.pool)' of type 'process'"
                         + (settings.baseJobTemplatePath.map { " with the base job template in \($0)" } ?? ""))
                created = true
            } catch let error as APIError where error.status == 409 {
                pool = try await client.readWorkPool(settings.pool, policy: .quick) // created by another worker meanwhile
            }
        }
        guard var pool else { return }
        if context.pool == nil, !created, let path = settings.baseJobTemplatePath {
            Log.warning("ignoring the base job template in \(path) because work pool '\(pool.name)' already exists")
        }
        guard pool.type == "process" else {
            throw WorkerError(message: "work pool '\(pool.name)' has type '\(pool.type)', but prefect-worker runs only 'process' pools; use a process pool, or Prefect's own worker for '\(pool.type)'")
        }
        if pool.hasEmptyTemplate {
            try await client.updateWorkPoolTemplate(name: pool.name, baseJobTemplate: JobTemplate.defaultProcessTemplate)
            pool.baseJobTemplate = JobTemplate.defaultProcessTemplate
            Log.info("installed the default process job template on work pool '\(pool.name)'")
        }
        if context.pool == nil, pool.isPaused == true {
            Log.warning("work pool '\(pool.name)' is paused; no runs will be claimed until it is resumed")
        }
        context.pool = pool
    }

    /// Creates the `--work-queue`s that do not exist yet, so polling them does not fail.
    func ensureQueues() async throws {
        for queue in settings.workQueues where try await client.readWorkQueue(pool: settings.pool, name: queue) == nil {
            do {
                try await client.createWorkQueue(pool: settings.pool, name: queue)
                Log.info("created work queue '\(queue)' in work pool '\(settings.pool)'")
            } catch let error as APIError where error.status == 409 {
                continue
            }
        }
    }

    func sendHeartbeat() async {
        do {
            let interval = max(1, Int(settings.heartbeatSeconds.rounded()))
            // Like Prefect's worker, ask Prefect Cloud for our id until it has told us.
            if settings.isCloud, context.workerID == nil {
                let id: String?
                do {
                    id = try await client.heartbeat(pool: settings.pool, worker: settings.workerName, intervalSeconds: interval, returnID: true)
                } catch let error as APIError where error.status == 422 {
                    id = try await client.heartbeat(pool: settings.pool, worker: settings.workerName, intervalSeconds: interval)
                }
                if let id {
                    context.workerID = id
                    client.setHeader("X-Prefect-Worker-Id", id)
                    Log.info("Prefect Cloud knows this worker as \(id)")
                } else {
                    Log.warning("failed to retrieve the worker id from the Prefect API; sending requests without X-Prefect-Worker-Id")
                }
            } else {
                try await client.heartbeat(pool: settings.pool, worker: settings.workerName, intervalSeconds: interval)
            }
            let first = context.status.lastHeartbeat == nil
            context.status.heartbeatSucceeded()
            let status = "STATUS=pool \(settings.pool): \(Metrics.shared.inFlight) run(s) in flight"
            context.notifier.notify(first ? "READY=1\n" + status : status)
        } catch is CancellationError {
            return  // the worker is stopping
        } catch {
            let last = context.status.lastHeartbeat.map { String(format: "; last success %.0f s ago", Date().timeIntervalSince($0)) } ?? ""
            Log.warning("heartbeat failed: \(error); retrying in \(String(format: "%.0f", settings.heartbeatSeconds)) s\(last)")
        }
    }

    /// Every interval: re-read the pool (template edits apply to later runs; a deleted pool is recreated),
    /// then heartbeat. Runs until cancelled, through the drain, so the worker stays ONLINE while runs finish.
    func heartbeatLoop() async {
        while !Task.isCancelled {
            context.status.heartbeatLoopTicked()
            try? await Task.sleep(nanoseconds: UInt64(settings.heartbeatSeconds * 1_000_000_000))
            if Task.isCancelled { return }
            do {
                try await syncPool()
            } catch let error as WorkerError {
                Log.error("\(error.message); not claiming new runs")
                context.pool = nil
            } catch {
                Log.warning("cannot read work pool '\(settings.pool)': \(error); using the last known copy")
            }
            await sendHeartbeat()
        }
    }

    // MARK: - Polling

    /// Polls for scheduled runs and hands each new one to a supervisor, within `--limit`.
    func pollLoop() async {
        let supervisor = FlowRunSupervisor(context: context)
        while !Task.isCancelled {
            context.status.pollLoopTicked()
            let free = await context.registry.freeSlots
            if free == 0 {
                let registry = context.registry
                await firstOf({ await registry.waitForRelease() },
                              { try? await Task.sleep(nanoseconds: UInt64(self.settings.querySeconds * 1_000_000_000)) })
                continue
            }
            let batchLimit = min(free ?? 200, 200)
            var runs: [FlowRun] = []
            if context.pool != nil {
                do {
                    let horizon = settings.runOnce ? 0 : settings.prefetchSeconds
                    runs = try await client.scheduledFlowRuns(pool: settings.pool, queues: settings.workQueues,
                                                              before: Date().addingTimeInterval(horizon),
                                                              limit: settings.limit == nil ? nil : batchLimit)
                    context.status.pollSucceeded()
                } catch is CancellationError {
                    return
                } catch {
                    Log.warning("polling for flow runs failed: \(error); next poll in \(settings.querySeconds) s")
                }
            }
            var taken = 0
            for run in runs.sorted(by: { ($0.scheduledStart ?? .distantPast) < ($1.scheduledStart ?? .distantPast) }) {
                guard await context.registry.reserve(run) else { continue }
                taken += 1
                let registry = context.registry
                Task {
                    await supervisor.run(run)
                    await registry.release(run.id)
                }
            }
            if settings.runOnce { return }
            // A full batch means more may be waiting: poll again as soon as there is room.
            if runs.count >= batchLimit, taken > 0 { continue }
            try? await Task.sleep(nanoseconds: UInt64(settings.querySeconds * 1_000_000_000))
        }
    }

    // MARK: - Health

    /// `/health` follows Prefect's rule: healthy while the last successful poll (or the start, before the
    /// first poll) is within 30 query intervals. `/metrics` is the Prometheus exposition.
    func healthResponse(method: String, path: String) -> HealthServer.Response {
        guard method == "GET" || method == "HEAD" else {
            return HealthServer.Response(status: 405, body: #"{"message":"method not allowed"}"#)
        }
        let status = context.status
        switch path {
        case "/health":
            let last = status.lastPoll ?? status.started
            let age = Date().timeIntervalSince(last)
            // A draining worker no longer polls, on purpose; it is healthy while it waits for its runs.
            let healthy = age < settings.querySeconds * 30 || context.shutdown.phase >= .draining
            let body = JSON.object([
                "message": .string(healthy ? "OK" : "Worker may be unresponsive at this time"),
                "worker": .string(settings.workerName), "pool": .string(settings.pool),
                "runs_in_flight": .int(Metrics.shared.inFlight),
                "last_poll": status.lastPoll.map { .string(Timestamp.format($0)) } ?? .null,
                "last_heartbeat": status.lastHeartbeat.map { .string(Timestamp.format($0)) } ?? .null,
            ])
            return HealthServer.Response(status: healthy ? 200 : 503, body: body.encoded())
        case "/metrics":
            return HealthServer.Response(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8",
                                         body: Metrics.shared.render(lastHeartbeat: status.lastHeartbeat, lastPoll: status.lastPoll))
        default:
            return HealthServer.Response(status: 404, body: #"{"message":"not found"}"#)
        }
    }

    /// Under systemd with `WatchdogSec=`: WATCHDOG=1 at half the interval, but only while the poll and
    /// heartbeat loops keep ticking, so a stuck loop gets the worker restarted.
    func watchdogLoop() async {
        guard let interval = context.notifier.watchdogInterval else { return }
        // A loop iteration may legitimately wait for its interval plus a request with its retries.
        let pollBound = settings.querySeconds * 2 + 180
        let heartbeatBound = settings.heartbeatSeconds * 2 + 180
        while !Task.isCancelled {
            let ticks = context.status.loopTicks
            let now = Date()
            if now.timeIntervalSince(ticks.poll) < pollBound, now.timeIntervalSince(ticks.heartbeat) < heartbeatBound {
                context.notifier.notify("WATCHDOG=1")
            } else {
                Log.error("a worker loop has not run for too long (poll \(Int(now.timeIntervalSince(ticks.poll))) s, heartbeat \(Int(now.timeIntervalSince(ticks.heartbeat))) s ago); withholding the systemd watchdog ping")
            }
            try? await Task.sleep(nanoseconds: UInt64(interval * 1_000_000_000))
        }
    }

    // MARK: - Cancellation

    /// While runs are in flight, asks the server which of them are CANCELLING (or were CANCELLED) and has
    /// their supervisors stop them. An idle worker makes no request.
    func cancellationLoop() async {
        while !Task.isCancelled {
            try? await Task.sleep(nanoseconds: UInt64(settings.cancellationPollSeconds * 1_000_000_000))
            let ids = await context.registry.runIDs
            for start in stride(from: 0, to: ids.count, by: 200) {
                let chunk = Array(ids[start..<min(start + 200, ids.count)])
                let filter = JSON.object([
                    "flow_runs": .object([
                        "id": .object(["any_": .array(chunk.map(JSON.string))]),
                        "state": .object(["type": .object(["any_": .array(["CANCELLING", "CANCELLED"])])]),
                    ]),
                    "limit": .int(chunk.count),
                ])
                guard let runs = try? await client.filterFlowRuns(filter, policy: .once) else { continue }
                for run in runs where await context.registry.requestCancel(run.id) {
                    Log.info("run is \(run.currentStateType?.rawValue ?? "being cancelled"); cancelling it", run: run.id)
                }
            }
        }
    }

    // MARK: - Shutdown

    /// Waits for runs in flight; on a second signal or when `--drain-timeout` passes, stops them
    /// (SIGTERM to each job's process group, grace, SIGKILL) and waits for their final reports.
    func drain() async {
        let registry = context.registry
        var inFlight = await registry.count
        if inFlight > 0 {
            let ids = await registry.runIDs.joined(separator: ", ")
            Log.info("draining: \(inFlight) run(s) in flight: \(ids)"
                     + (settings.drainTimeout.map { "; stopping them in \($0) s" } ?? "; waiting for them to finish"))
            let timeout = settings.drainTimeout
            let progress = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(nanoseconds: 15_000_000_000)
                    let ids = await registry.runIDs
                    if Task.isCancelled || ids.isEmpty { return }
                    Log.info("still draining: \(ids.count) run(s) in flight: \(ids.joined(separator: ", ")); "
                             + (timeout == nil ? "waiting for them (signal again to stop them now)" : "they will be stopped when the drain timeout passes"))
                }
            }
            defer { progress.cancel() }
            let finished = await firstOf({ await registry.waitUntilEmpty(); return true }, {
                if let timeout {
                    _ = await self.context.shutdown.sleep(timeout, unless: .terminating)
                } else {
                    await self.context.shutdown.wait(for: .terminating)
                }
                return false
            })
            if !finished {
                inFlight = await registry.count
                let reason = context.shutdown.phase == .terminating
                    ? "Worker '\(settings.workerName)' shut down (stopped a second time before its runs finished)"
                    : "Worker '\(settings.workerName)' shut down and the drain timeout passed"
                progress.cancel()
                Log.info("stopping \(inFlight) run(s) in flight")
                await registry.requestStopAll(reason: reason)
                await registry.waitUntilEmpty()
            }
        }
    }
}
