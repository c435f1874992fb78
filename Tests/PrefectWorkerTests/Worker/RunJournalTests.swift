import Foundation
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

/// `RunJournal` on a real directory.
final class RunJournalTests: XCTestCase {
    private var stateDirectory: String!

    override func setUpWithError() throws {
        stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("journal-tests-\(UUID().uuidString)").path
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    private func entry(_ runID: String, workerName: String = "worker") -> JournalEntry {
        JournalEntry(runID: runID, pid: 4242, processStart: 99, owner: "worker", workerName: workerName, pool: "pool",
                     workerPID: 1, workerStart: 2)
    }

    func testRecordThenRemove() async throws {
        let journal = RunJournal(stateDirectory: stateDirectory, log: .console)
        try journal.prepare()
        await journal.record(entry("run-a"))
        let data = try XCTUnwrap(FileManager.default.contents(atPath: journal.path("run-a")))
        XCTAssertEqual(try JSONDecoder().decode(JournalEntry.self, from: data), entry("run-a"))
        let mode = try FileManager.default.attributesOfItem(atPath: journal.path("run-a"))[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600)
        await journal.remove("run-a")
        XCTAssertFalse(FileManager.default.fileExists(atPath: journal.path("run-a")))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: journal.directory), [], "no temporary file left")
    }

    /// Regression: `record` ignored short writes, so a write cut off (disk full, file size limit) renamed a
    /// truncated entry over the good one. A failed write must leave the previous entry as it was.
    func testAShortWriteLeavesThePreviousEntryInPlace() async throws {
        let journal = RunJournal(stateDirectory: stateDirectory, log: .console)
        try journal.prepare()
        await journal.record(entry("run-s"))
        let before = try XCTUnwrap(FileManager.default.contents(atPath: journal.path("run-s")))

        // A file size limit below the new entry's size: write() stops short at the limit (then fails with EFBIG).
        let bigger = entry("run-s", workerName: String(repeating: "w", count: 8192))
        let previousHandler = signal(SIGXFSZ, SIG_IGN)
        var saved = rlimit()
        XCTAssertEqual(getrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &saved), 0)
        var limit = saved
        limit.rlim_cur = 4096
        XCTAssertEqual(setrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &limit), 0)
        await journal.record(bigger)
        XCTAssertEqual(setrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &saved), 0)
        signal(SIGXFSZ, previousHandler)

        let after = try XCTUnwrap(FileManager.default.contents(atPath: journal.path("run-s")))
        XCTAssertEqual(after, before, "a cut-off write replaced the journal entry (now \(after.count) bytes)")
        XCTAssertNoThrow(try JSONDecoder().decode(JournalEntry.self, from: after))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: journal.directory), ["run-s.json"], "no temporary file left")

        // Without the limit the new entry is written whole.
        await journal.record(bigger)
        let whole = try XCTUnwrap(FileManager.default.contents(atPath: journal.path("run-s")))
        XCTAssertEqual(try JSONDecoder().decode(JournalEntry.self, from: whole), bigger)
    }
}
