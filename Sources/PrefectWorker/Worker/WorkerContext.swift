import Foundation
import Synchronization

/// The worker's parts, made once and held by `Worker`, which hands each service and each run's owner the
/// parts it uses (no type takes the whole context; the unit tests build parts from one).
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
    /// The pool, the worker id, cgroups, deployments and flow names, as runs read them.
    let lookups: RunLookups
    /// Job output of worker-owned runs and the worker's own lines about runs, shipped to `POST /logs/`.
    let logs: APIShipper
    let events: WorkerEvents
    /// The worker's lines: redacted, and those about a run shipped to its logs too (`logs`).
    let log: Logger
    let notifier: SystemdNotifier
    /// The secrets to keep out of job output, the worker's log lines and its events.
    let secrets: KnownSecrets

    /// `secrets` and `metrics` are the ones the client was made with (`Worker.init`); by default (the unit
    /// tests' contexts) the settings' secrets and the client's counters.
    init(settings: Settings, client: PrefectClient, secrets: KnownSecrets? = nil, metrics: Metrics? = nil,
         shutdown: Shutdown = Shutdown(), spawner: any ProcessSpawner = ChildProcesses.shared) {
        self.settings = settings
        self.spawner = spawner
        self.client = client
        let metrics = metrics ?? client.metrics
        self.metrics = metrics
        self.lookups = RunLookups(client: client)
        self.registry = RunRegistry(limit: settings.limit, metrics: metrics)
        self.shutdown = shutdown
        self.status = WorkerStatus()
        let logSettings = settings.logsToAPI
        let secrets = secrets ?? KnownSecrets(settings.secretValues)
        self.secrets = secrets
        // The shippers' own lines (a batch kept for the next attempt) are the worker's, never a run's.
        let shipperLog = Logger(output: Logger.Output(redact: { secrets.redact($0) }, runLine: nil))
        self.logs = APIShipper(client: client, metrics: metrics, log: shipperLog, path: "/logs/", what: "shipping flow run logs",
                               capacity: 20_000, batchSize: 500,
                               maxBatchBytes: logSettings.maxBatchBytes, interval: logSettings.batchInterval) { runID, count in
            FlowRunLog.shippable(runID: runID, level: .warning,
                                 message: "\(count) line(s) of output were dropped: the Prefect API was unreachable for too long.",
                                 maxSize: logSettings.maxLogSize)
        }
        let logs = self.logs
        var runLine: (@Sendable (Log.Level, String, String) -> Void)?
        if logSettings.enabled {
            runLine = { level, runID, message in
                logs.add(FlowRunLog.shippable(runID: runID, level: level, message: message, maxSize: logSettings.maxLogSize))
            }
        }
        let log = Logger(output: Logger.Output(redact: { secrets.redact($0) }, runLine: runLine))
        self.log = log
        self.journal = RunJournal(stateDirectory: settings.stateDirectory, log: log)
        self.outbox = Outbox(stateDirectory: settings.stateDirectory, client: client, metrics: metrics, shutdown: shutdown, log: log)
        let eventsSocket = EventsSocket(client: client, settings: settings, log: shipperLog)
        self.events = WorkerEvents(settings: settings,
                                   shipper: APIShipper(client: client, metrics: metrics, log: shipperLog, path: "/events",
                                                       what: "emitting worker events",
                                                       capacity: settings.eventsQueueCapacity, interval: 1,
                                                       countDropped: { $0.eventsDropped($1) }, deliver: { try await eventsSocket.deliver($0) }),
                                   secrets: secrets, socket: eventsSocket)
        self.notifier = SystemdNotifier(environment: settings.environment)
    }

    /// What a run's supervisor uses (`RunDependencies`).
    var runDependencies: RunDependencies {
        RunDependencies(settings: settings, client: client, shutdown: shutdown, log: log, metrics: metrics, spawner: spawner,
                        journal: journal, identity: identity, outbox: outbox, logs: logs, events: events, secrets: secrets,
                        lookups: lookups)
    }

    /// What `/health` and `/metrics` read.
    var healthSources: HealthService.Sources {
        HealthService.Sources(settings: settings, status: status, metrics: metrics, client: client, shutdown: shutdown)
    }

    /// The work pool as last read (`RunLookups`).
    var pool: WorkPool? {
        get { lookups.pool }
        set { lookups.pool = newValue }
    }

    /// The worker's id, once Prefect Cloud has told us (`RunLookups`).
    var workerID: String? {
        get { lookups.workerID }
        set { lookups.workerID = newValue }
    }

    /// Per-job cgroups, set once at start-up (`RunLookups`).
    var cgroups: CgroupHost.Detection {
        get { lookups.cgroups }
        set { lookups.cgroups = newValue }
    }
}
