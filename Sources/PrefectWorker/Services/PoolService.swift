import Foundation

/// Keeps the work pool in sync and the worker ONLINE: at start-up reads (or creates) the pool and its queues
/// and sends the first heartbeat; then, every heartbeat interval, re-reads the pool and heartbeats.
struct PoolService: Service {
    let settings: Settings
    let client: PrefectClient
    /// Where the pool and the worker id go, for the runs and the poll.
    let lookups: RunLookups
    let status: WorkerStatus
    let metrics: Metrics
    /// Whether the worker channel is up (it heartbeats and pushes the pool then).
    let push: PushSignals
    let notifier: SystemdNotifier
    let log: Logger

    /// Reads (or creates) the pool until the server answers, then sends the first heartbeat.
    func startUp() async throws {
        var attempt = 0
        while true {
            attempt += 1
            do {
                try await syncPool()
                if lookups.pool != nil { break }
            } catch let error as APIError where !error.isRetryable && error.status != 404 {
                if error.status == 401 || error.status == 403 {
                    throw WorkerError(message: "the Prefect API at \(redactedURL(settings.apiURL)) refused our credentials (\(error)); check PREFECT_API_KEY / PREFECT_API_AUTH_STRING")
                }
                throw WorkerError(message: "cannot set up work pool '\(settings.pool)': \(error)")
            } catch let error as APIError {
                let delay = RetryPolicy(maxAttempts: .max, maxDelay: 30).delay(afterAttempt: attempt, retryAfter: error.retryAfter)
                log.warning("cannot reach the Prefect API at \(redactedURL(settings.apiURL)): \(error); retrying in \(String(format: "%.1f", delay)) s")
                try await Task.sleep(seconds: delay)
                continue
            }
            // Pool missing and not to be created.
            try await Task.sleep(seconds: settings.querySeconds)
        }
        try await ensureQueues()
        await sendHeartbeat()
        log.info("serving work pool '\(settings.pool)'" + (settings.workQueues.isEmpty ? "" : " queues \(settings.workQueues)")
                 + "; polling every \(settings.querySeconds) s"
                 + (settings.querySecondsIsSet ? "" : " (every \(PollCadence.restSeconds) s while the events stream pushes new runs)")
                 + ", heartbeat every \(settings.heartbeatSeconds) s")
    }

    /// Reads the pool into the shared snapshot, creating it (type `process`, Prefect's default template) when
    /// missing, and installing the default template when it is empty.
    func syncPool() async throws {
        var pool = try await client.readWorkPool(settings.pool, policy: .quick)
        var created = false
        if pool == nil {
            guard settings.createPoolIfNotFound else {
                log.warning("work pool '\(settings.pool)' not found; waiting for it to be created")
                lookups.pool = nil
                return
            }
            do {
                pool = try await client.createWorkPool(name: settings.pool, type: "process",
                                                       baseJobTemplate: settings.baseJobTemplate ?? JobTemplate.defaultProcessTemplate)
                log.info("created work pool '\(settings.pool)' of type 'process'"
                         + (settings.baseJobTemplatePath.map { " with the base job template in \($0)" } ?? ""))
                created = true
            } catch let error as APIError where error.status == 409 {
                pool = try await client.readWorkPool(settings.pool, policy: .quick) // created by another worker meanwhile
            }
        }
        guard var pool else { return }
        if lookups.pool == nil, !created, let path = settings.baseJobTemplatePath {
            log.warning("ignoring the base job template in \(path) because work pool '\(pool.name)' already exists")
        }
        guard pool.type == "process" else {
            throw WorkerError(message: "work pool '\(pool.name)' has type '\(pool.type)', but prefect-worker runs only 'process' pools; use a process pool, or Prefect's own worker for '\(pool.type)'")
        }
        if pool.hasEmptyTemplate {
            try await client.updateWorkPoolTemplate(name: pool.name, baseJobTemplate: JobTemplate.defaultProcessTemplate)
            pool.baseJobTemplate = JobTemplate.defaultProcessTemplate
            log.info("installed the default process job template on work pool '\(pool.name)'")
        }
        if lookups.pool == nil, pool.isPaused == true {
            log.warning("work pool '\(pool.name)' is paused; no runs will be claimed until it is resumed")
        }
        lookups.pool = pool
    }

    /// Creates the `--work-queue`s that do not exist yet, so polling them does not fail.
    func ensureQueues() async throws {
        for queue in settings.workQueues where try await client.readWorkQueue(pool: settings.pool, name: queue) == nil {
            do {
                try await client.createWorkQueue(pool: settings.pool, name: queue)
                log.info("created work queue '\(queue)' in work pool '\(settings.pool)'")
            } catch let error as APIError where error.status == 409 {
                continue
            }
        }
    }

    func sendHeartbeat() async {
        do {
            let interval = max(1, Int(settings.heartbeatSeconds.rounded()))
            // Like Prefect's worker, ask Prefect Cloud for our id until it has told us.
            if settings.isCloud, lookups.workerID == nil {
                let id: String?
                do {
                    id = try await client.heartbeat(pool: settings.pool, worker: settings.workerName, intervalSeconds: interval, returnID: true)
                } catch let error as APIError where error.status == 422 {
                    id = try await client.heartbeat(pool: settings.pool, worker: settings.workerName, intervalSeconds: interval)
                }
                if let id {
                    lookups.workerID = id
                    client.setHeader("X-Prefect-Worker-Id", id)
                    log.info("Prefect Cloud knows this worker as \(id)")
                } else {
                    log.warning("failed to retrieve the worker id from the Prefect API; sending requests without X-Prefect-Worker-Id")
                }
            } else {
                try await client.heartbeat(pool: settings.pool, worker: settings.workerName, intervalSeconds: interval)
            }
            let first = status.lastHeartbeat == nil
            status.heartbeatSucceeded()
            let status = "STATUS=pool \(settings.pool): \(metrics.inFlight) run(s) in flight"
            notifier.notify(first ? "READY=1\n" + status : status)
        } catch is CancellationError {
            return  // the worker is stopping
        } catch {
            let last = status.lastHeartbeat.map { String(format: "; last success %.0f s ago", Date().timeIntervalSince($0)) } ?? ""
            log.warning("heartbeat failed: \(error); retrying in \(String(format: "%.0f", settings.heartbeatSeconds)) s\(last)")
        }
    }

    /// Every interval: re-read the pool (template edits apply to later runs; a deleted pool is recreated),
    /// then heartbeat. Runs until cancelled, through the drain, so the worker stays ONLINE while runs finish.
    func run() async {
        while !Task.isCancelled {
            status.heartbeatLoopTicked()
            try? await Task.sleep(seconds: settings.heartbeatSeconds)
            if Task.isCancelled { return }
            if push.isChannelUp { continue }  // the worker channel heartbeats and pushes the pool
            do {
                try await syncPool()
            } catch let error as WorkerError {
                log.error("\(error.message); not claiming new runs")
                lookups.pool = nil
            } catch {
                log.warning("cannot read work pool '\(settings.pool)': \(error); using the last known copy")
            }
            await sendHeartbeat()
        }
    }
}
