import Foundation
import Synchronization

/// What the worker's loops and run supervisors share.
final class WorkerContext: Sendable {
    let settings: Settings
    let client: PrefectClient
    /// The counters behind `/metrics` (the client counts its requests into them too).
    let metrics: Metrics
    /// Starts jobs and reports how they ended.
    let spawner: any ProcessSpawner
    let registry: RunRegistry
    let shutdown: Shutdown
    let status: WorkerStatus
    let journal: RunJournal
    let outbox: Outbox
    /// The events stream's news for the loops that would otherwise poll (see `EventWatch`).
    let push = PushSignals()
    /// This worker process, as recorded in journal entries.
    let identity = JournalEntry.Identity.current
    private let poolSnapshot = Mutex<WorkPool?>(nil)
    private let flowNames = Mutex<[String: String]>([:])
    private let deployments = Mutex<[String: (read: Task<Deployment?, Error>, at: Date)]>([:])
    /// How long a deployment read is reused: a burst of runs from one deployment costs one read, and an
    /// edit to its job variables applies to runs submitted after this.
    static let deploymentCacheSeconds = 10.0
    /// Job output of worker-owned runs and the worker's own lines about runs, shipped to `POST /logs/`.
    let logs: APIShipper
    let events: WorkerEvents
    /// The worker's lines: redacted, and those about a run shipped to its logs too (`logs`).
    let log: Logger
    let notifier: SystemdNotifier
    /// The secrets to keep out of job output, the worker's log lines and its events.
    let secrets: KnownSecrets
    /// The worker's delegated cgroup v2 subtree, found at start-up, or why there is none.
    private let cgroupDetection = Mutex<CgroupHost.Detection>(.unusable(reason: "cgroups were not set up"))

    init(settings: Settings, client: PrefectClient, shutdown: Shutdown = Shutdown(), spawner: any ProcessSpawner = ChildProcesses.shared) {
        self.settings = settings
        self.spawner = spawner
        self.client = client
        self.metrics = client.metrics
        self.registry = RunRegistry(limit: settings.limit, metrics: client.metrics)
        self.shutdown = shutdown
        self.status = WorkerStatus()
        let logSettings = settings.logsToAPI
        self.logs = APIShipper(client: client, path: "/logs/", what: "shipping flow run logs", capacity: 20_000, batchSize: 500,
                               maxBatchBytes: logSettings.maxBatchBytes, interval: logSettings.batchInterval) { runID, count in
            FlowRunLog.shippable(runID: runID, level: .warning,
                                 message: "\(count) line(s) of output were dropped: the Prefect API was unreachable for too long.",
                                 maxSize: logSettings.maxLogSize)
        }
        let secrets = KnownSecrets(settings.secretValues)
        self.secrets = secrets
        let logs = self.logs
        var runLine: (@Sendable (Log.Level, String, String) -> Void)?
        if logSettings.enabled {
            runLine = { level, runID, message in
                logs.add(FlowRunLog.shippable(runID: runID, level: level, message: message, maxSize: logSettings.maxLogSize))
            }
        }
        let log = Logger(output: Logger.Output(redact: { secrets.redact($0) }, runLine: runLine))
        self.log = log
        client.log = log
        self.journal = RunJournal(stateDirectory: settings.stateDirectory, log: log)
        self.outbox = Outbox(stateDirectory: settings.stateDirectory, client: client, shutdown: shutdown, log: log)
        let eventsSocket = EventsSocket(client: client, settings: settings)
        self.events = WorkerEvents(settings: settings,
                                   shipper: APIShipper(client: client, path: "/events", what: "emitting worker events",
                                                       capacity: settings.eventsQueueCapacity, interval: 1,
                                                       countDropped: { $0.eventsDropped($1) }, deliver: { try await eventsSocket.deliver($0) }),
                                   secrets: secrets, socket: eventsSocket)
        self.notifier = SystemdNotifier(environment: settings.environment)
    }

    /// The deployment, read at most once per `deploymentCacheSeconds` (concurrent callers share one read);
    /// nil if it no longer exists.
    func deployment(_ id: String) async throws -> Deployment? {
        let now = Date()
        let client = self.client
        let read = deployments.withLock { cache -> Task<Deployment?, Error> in
            if let cached = cache[id], now.timeIntervalSince(cached.at) < Self.deploymentCacheSeconds { return cached.read }
            if cache.count > 1000 { cache = cache.filter { now.timeIntervalSince($0.value.at) < Self.deploymentCacheSeconds } }
            let read = Task { try await client.readDeployment(id) }
            cache[id] = (read, now)
            return read
        }
        do {
            return try await read.value
        } catch {
            deployments.withLock { cache in if cache[id]?.at == now { cache[id] = nil } } // do not cache failures
            throw error
        }
    }

    /// A flow's name, read once per flow (events name the flow).
    func flowName(_ id: String?) async -> String? {
        guard let id else { return nil }
        if let name = flowNames.withLock({ $0[id] }) { return name }
        guard let name = try? await client.readFlowName(id) else { return nil }
        flowNames.withLock { $0[id] = name }
        return name
    }

    /// The worker's id, once Prefect Cloud has told us (a heartbeat with `return_id`); jobs get it as `PREFECT__WORKER_ID`.
    var workerID: String? {
        get { workerIDValue.withLock { $0 } }
        set { workerIDValue.withLock { $0 = newValue } }
    }
    private let workerIDValue = Mutex<String?>(nil)

    /// Per-job cgroups: set once at start-up by `CgroupHost.setUp`.
    var cgroups: CgroupHost.Detection {
        get { cgroupDetection.withLock { $0 } }
        set { cgroupDetection.withLock { $0 = newValue } }
    }

    /// The work pool as last read; each run freezes a copy when it is submitted.
    var pool: WorkPool? {
        get { poolSnapshot.withLock { $0 } }
        set { poolSnapshot.withLock { $0 = newValue } }
    }
}
