import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One launched job, as recorded in the journal.
struct JournalEntry: Codable, Sendable, Equatable {
    var runID: String
    var pid: Int32
    /// The job's start time from /proc, so a reused pid is not mistaken for the job.
    var processStart: UInt64?
    var owner: String
    var workerName: String
    /// The work pool the run came from; a restarted worker recovers only its own pool's runs.
    var pool: String?
    var workerPID: Int32
    var workerStart: UInt64?

    enum CodingKeys: String, CodingKey {
        case runID = "run_id", pid, owner, pool
        case processStart = "process_start"
        case workerName = "worker_name"
        case workerPID = "worker_pid"
        case workerStart = "worker_start"
    }

    var stateOwner: StateOwner { StateOwner(rawValue: owner) ?? .engine }
}

/// The runs this host's workers launched and have not finished reporting: one small JSON file per run in
/// `<state dir>/journal/`, written atomically and durably (`AtomicFile`) after the spawn and removed after the
/// final report. A worker that starts after a crash finds the entries of workers that are gone and recovers
/// their runs.
final class RunJournal: Sendable {
    private let folder: RecordFolder<JournalEntry>
    var directory: String { folder.directory }
    /// Entry writes and removals, off the threads async code runs on. One run's writes never overlap (its
    /// supervisor awaits each), so runs are written concurrently.
    private let disk = DispatchQueue.global(qos: .utility)
    private let log: Logger

    init(stateDirectory: String, log: Logger) {
        self.log = log
        folder = RecordFolder(directory: stateDirectory + "/journal")
    }

    /// Creates the directory (mode 0700). Throws a message naming the path.
    func prepare() throws {
        try folder.prepare("the state directory", advice: "; set --state-dir or PREFECT_WORKER_STATE_DIR to a writable directory")
    }

    func path(_ runID: String) -> String { folder.path(runID) }

    /// Writes the run's entry (atomically and durably); it is on disk when this returns.
    func record(_ entry: JournalEntry) async {
        guard let data = encoded(entry) else { return }
        do {
            try await AtomicFile.write(data, to: path(entry.runID), on: disk)
        } catch {
            logFailure(entry.runID, error)
        }
    }

    /// `record` for callers that are not async (taking over entries at start-up).
    func recordNow(_ entry: JournalEntry) {
        guard let data = encoded(entry) else { return }
        do {
            try AtomicFile.write(data, to: path(entry.runID))
        } catch {
            logFailure(entry.runID, error)
        }
    }

    private func encoded(_ entry: JournalEntry) -> Data? { folder.encoded(entry) }

    private func logFailure(_ runID: String, _ error: AtomicFile.Failure) {
        log.warning("cannot write journal entry \(path(runID)): \(error); a worker started after a crash of this one would not recover the run", run: runID)
    }

    func remove(_ runID: String) async {
        await AtomicFile.remove(path(runID), on: disk)
    }

    /// Entries written by workers that are no longer alive. Each is taken over atomically (renamed to a name
    /// of ours), so two workers starting at once never recover the same run.
    func takeOverOrphans(me: JournalEntry.Identity, pool: String) -> [JournalEntry] {
        var taken: [JournalEntry] = []
        for (_, file, entry) in folder.scan() {
            guard let entry else {
                log.warning("ignoring unreadable journal entry \(file)")
                continue
            }
            if entry.workerPID == me.pid && entry.workerStart == me.start { continue }
            if let entryPool = entry.pool, entryPool != pool { continue }
            if ProcFS.isAlive(entry.workerPID, startTime: entry.workerStart) { continue }
            let claimed = file + ".recovering-\(me.pid)"
            guard rename(file, claimed) == 0 else { continue }
            // From here on we own it: put it back under the run's name, as ours.
            var mine = entry
            mine.workerPID = me.pid
            mine.workerStart = me.start
            recordNow(mine)
            unlink(claimed)
            taken.append(entry)
        }
        return taken
    }
}

extension JournalEntry {
    /// A worker process, identified across pid reuse.
    struct Identity: Sendable {
        var pid: Int32
        var start: UInt64?
        static var current: Identity { Identity(pid: getpid(), start: ProcFS.startTime(of: getpid())) }
    }
}
