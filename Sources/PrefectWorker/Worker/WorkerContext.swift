import Foundation
import Synchronization

/// What the worker's loops and run supervisors share.
public final class WorkerContext: Sendable {
    public let settings: Settings
    public let client: PrefectClient
    public let registry: RunRegistry
    public let shutdown: Shutdown
    public let status: WorkerStatus
    public let journal: RunJournal
    /// This worker process, as recorded in journal entries.
    public let identity = JournalEntry.Identity.current
    private let poolSnapshot = Mutex<WorkPool?>(nil)

    public init(settings: Settings, client: PrefectClient, shutdown: Shutdown = Shutdown()) {
        self.settings = settings
        self.client = client
        self.registry = RunRegistry(limit: settings.limit)
        self.shutdown = shutdown
        self.status = WorkerStatus()
        self.journal = RunJournal(stateDirectory: settings.stateDirectory)
    }

    /// The work pool as last read; each run freezes a copy when it is submitted.
    public var pool: WorkPool? {
        get { poolSnapshot.withLock { $0 } }
        set { poolSnapshot.withLock { $0 = newValue } }
    }
}

/// When the loops last succeeded: for logs now, for health checks later.
public final class WorkerStatus: Sendable {
    private let times = Mutex<(heartbeat: Date?, poll: Date?)>((nil, nil))
    public let started = Date()

    public init() {}

    public var lastHeartbeat: Date? { times.withLock { $0.heartbeat } }
    public var lastPoll: Date? { times.withLock { $0.poll } }
    public func heartbeatSucceeded() { times.withLock { $0.heartbeat = Date() } }
    public func pollSucceeded() { times.withLock { $0.poll = Date() } }
}
