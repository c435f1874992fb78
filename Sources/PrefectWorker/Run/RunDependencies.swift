import Foundation

/// What a run's supervisor uses from the worker, and nothing else: not the registry, the poll, the push
/// signals or the worker's status. The run's owner (`RunLifecycle`) hands it over; the parts of a run take
/// only the fields they use (`RunClaim`: the client and the shutdown; `StateReporter`: the client; …).
struct RunDependencies: Sendable {
    let settings: Settings
    let client: PrefectClient
    let shutdown: Shutdown
    /// The worker's logger; each run makes its own with `forRun`.
    let log: Logger
    let metrics: Metrics
    /// Starts jobs and reports how they ended.
    let spawner: any ProcessSpawner
    /// Where a started job is recorded, so a restarted worker can adopt it.
    let journal: RunJournal
    /// This worker process, as recorded in journal entries.
    let identity: JournalEntry.Identity
    /// Final states and the job's pid, persisted before they are delivered.
    let outbox: Outbox
    /// Job output shipped to the run's logs.
    let logs: APIShipper
    let events: WorkerEvents
    /// The secrets kept out of everything the worker writes; a run adds its own while it runs.
    let secrets: KnownSecrets
    let lookups: RunLookups
}
