import Foundation
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

final class ProcFSTests: XCTestCase {
    private typealias P = ProcessTestSupport

    func testOwnProcess() throws {
        let me = getpid()
        let start = try XCTUnwrap(ProcFS.startTime(of: me))
        XCTAssertGreaterThan(start, 0)
        XCTAssertEqual(ProcFS.startTime(of: me), start, "stable")
        XCTAssertEqual(ProcFS.state(of: me), "R", "we are running while we read it")
        XCTAssertTrue(ProcFS.isAlive(me, startTime: start))
        XCTAssertTrue(ProcFS.isAlive(me, startTime: nil))
        XCTAssertFalse(ProcFS.isAlive(me, startTime: start + 1), "a reused pid does not count")
    }

    func testMissingProcesses() {
        XCTAssertNil(ProcFS.startTime(of: 0x3fff_fff0))
        XCTAssertNil(ProcFS.state(of: 0x3fff_fff0))
        XCTAssertNil(ProcFS.environment(of: 0x3fff_fff0))
        XCTAssertFalse(ProcFS.isAlive(0x3fff_fff0, startTime: nil))
        XCTAssertFalse(ProcFS.isAlive(0, startTime: nil))
        XCTAssertFalse(ProcFS.isAlive(-1, startTime: nil))
    }

    func testChildIdentityAndEnvironment() async throws {
        let runID = UUID().uuidString.lowercased()
        let process = try ChildProcesses.shared.spawn(P.request(P.sleep, ["30"], environment: ["PREFECT__FLOW_RUN_ID": runID, "X": "1"]))
        XCTAssertTrue(P.waitForExec(process.pid))
        let start = try XCTUnwrap(ProcFS.startTime(of: process.pid))
        XCTAssertGreaterThanOrEqual(start, try XCTUnwrap(ProcFS.startTime(of: getpid())))
        XCTAssertNotNil(ProcFS.state(of: process.pid))
        XCTAssertNotEqual(ProcFS.state(of: process.pid), "Z")
        XCTAssertTrue(ProcFS.isAlive(process.pid, startTime: start))
        XCTAssertTrue(ProcFS.environment(of: process.pid, contains: "X=1"))
        XCTAssertFalse(ProcFS.environment(of: process.pid, contains: "X=12"), "whole entries only")
        XCTAssertEqual(ProcFS.environment(of: process.pid), ["PREFECT__FLOW_RUN_ID": runID, "X": "1"])
        XCTAssertFalse(ProcFS.environment(of: process.pid, contains: "X="))
        XCTAssertEqual(ProcFS.processes(ofRun: runID), [process.pid])
        XCTAssertEqual(ProcFS.processes(ofRun: String(runID.dropLast())), [], "the run id must match exactly")
        await P.killAndReap(process.pid)
        XCTAssertFalse(ProcFS.isAlive(process.pid, startTime: start))
        XCTAssertEqual(ProcFS.processes(ofRun: runID), [])
    }

    func testWaitForExitOfAProcessThatIsNotOurChild() async throws {
        let process = try P.shell("setsid sleep 0.3 & echo $!")
        let stdout = try XCTUnwrap(process.stdout)
        let orphan = try XCTUnwrap(P.readLine(stdout).flatMap { pid_t($0) })
        _ = await ChildProcesses.shared.waitForExit(process.pid)
        close(stdout)
        if let stderr = process.stderr { close(stderr) }
        let start = Date()
        let returned = await finishes(within: 5) { await ProcFS.waitForExit(of: orphan, startTime: nil) }
        XCTAssertTrue(returned)
        XCTAssertLessThan(Date().timeIntervalSince(start), 3)
        XCTAssertFalse(ProcFS.isAlive(orphan, startTime: nil))
    }

    func testWaitForExitOfAGoneProcessReturnsAtOnce() async {
        let returned = await finishes(within: 2) { await ProcFS.waitForExit(of: 0x3fff_fff0, startTime: nil) }
        XCTAssertTrue(returned)
    }
}
