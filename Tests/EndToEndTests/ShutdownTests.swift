import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// SIGTERM: stop claiming, hand back what has not started, drain, exit 0; a second signal or
/// `--drain-timeout` stops the jobs. And `--run-once`.
final class ShutdownTests: RunControlTestCase, @unchecked Sendable {
    /// Waits until the worker has finished starting up (pool synced, first heartbeat, recovery done).
    func waitUntilServing(_ worker: WorkerProcess) async throws {
        let serving = await worker.waitForLog(containing: "serving work pool", timeout: 20)
        XCTAssertNotNil(serving, "the worker did not start serving; log: \(worker.log)")
        try checkWorkersAlive()
    }

    /// SIGTERM (or another signal) to a worker this test started.
    func signal(_ worker: WorkerProcess, _ signal: Int32 = SIGTERM) {
        XCTAssertEqual(kill(worker.pid, signal), 0, "kill(\(worker.pid), \(signal))")
    }

    /// A deployment whose command is `command`, a run of it, a worker with `arguments`; returns once the job runs.
    func startJob(_ command: String, arguments: [String] = []) async throws -> (worker: WorkerProcess, id: String, pid: pid_t) {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string(command),
        ]))
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory(), arguments: arguments)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let pid = try await waitForJobPID(id, timeout: 30)
        return (worker, id, pid)
    }

    func testIdleWorkerExits0WithinASecondOfSIGTERM() async throws {
        let pool = try await makeProcessPool()
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory())
        try await waitUntilServing(worker)
        // Let it settle into its idle loop (a poll or two).
        try await Task.sleep(nanoseconds: 1_000_000_000)
        worker.isServing = false
        let sent = Date()
        signal(worker)
        let code = await worker.waitForExit(timeout: 10)
        let elapsed = Date().timeIntervalSince(sent)
        XCTAssertEqual(code, 0, "exit code after SIGTERM; log: \(worker.log.suffix(2000))")
        XCTAssertLessThan(elapsed, 1.0, "an idle worker should exit at once; took \(String(format: "%.2f", elapsed)) s")
        print("idle worker exited \(String(format: "%.3f", elapsed)) s after SIGTERM")
    }

    func testSIGTERMDuringARunLetsItCompleteThenExits0() async throws {
        let (worker, id, _) = try await startJob("sleep 3")
        worker.isServing = false
        signal(worker)
        let draining = await worker.waitForLog(containing: "draining", timeout: 5)
        XCTAssertNotNil(draining, "the worker should log that it is draining; log: \(worker.log.suffix(2000))")
        try await Task.sleep(nanoseconds: 500_000_000)
        XCTAssertTrue(worker.isRunning, "the worker must wait for the run in flight")

        let run = try await api.waitForFinalState(id, timeout: 20)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
        let code = await worker.waitForExit(timeout: 15)
        XCTAssertEqual(code, 0, "exit code after draining; log: \(worker.log.suffix(2000))")
    }

    func testSecondSIGTERMWhileDrainingStopsTheJobAndReportsCrashed() async throws {
        let (worker, id, _) = try await startJob("sleep 300")
        worker.isServing = false
        signal(worker)
        let draining = await worker.waitForLog(containing: "draining", timeout: 5)
        XCTAssertNotNil(draining, "the worker should log that it is draining; log: \(worker.log.suffix(2000))")
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertTrue(worker.isRunning, "the worker must still be draining")
        signal(worker)

        let run = try await api.waitForFinalState(id, timeout: 20)
        XCTAssertEqual(run.stateType, "CRASHED", "final state: \(run.stateSummary)")
        let message = run.stateMessage
        XCTAssertTrue(message.contains(worker.label) && (message.contains("shut down") || message.contains("stopped")),
                      "the message should say the worker shut down: \(message)")
        let code = await worker.waitForExit(timeout: 15)
        XCTAssertEqual(code, 0, "exit code; log: \(worker.log.suffix(2000))")
        let left = ProcScan.processes(ofRun: id)
        XCTAssertEqual(left.map(\.pid), [], "the job was not stopped: \(ProcScan.describe(left))")
    }

    func testDrainTimeoutStopsTheJobAndReportsCrashed() async throws {
        let (worker, id, _) = try await startJob("sleep 300", arguments: ["--drain-timeout", "2"])
        worker.isServing = false
        let sent = Date()
        signal(worker)

        let run = try await api.waitForFinalState(id, timeout: 25)
        let elapsed = Date().timeIntervalSince(sent)
        XCTAssertEqual(run.stateType, "CRASHED", "final state: \(run.stateSummary)")
        XCTAssertTrue(run.stateMessage.contains("shut down"), "the message should say the worker shut down: \(run.stateMessage)")
        XCTAssertGreaterThanOrEqual(elapsed, 2.0, "the job was stopped before the 2 s drain timeout")
        XCTAssertLessThan(elapsed, 12, "the job should be stopped about 2 s after SIGTERM")
        let code = await worker.waitForExit(timeout: 15)
        XCTAssertEqual(code, 0, "exit code; log: \(worker.log.suffix(2000))")
        let left = ProcScan.processes(ofRun: id)
        XCTAssertEqual(left.map(\.pid), [], "the job was not stopped: \(ProcScan.describe(left))")
    }

    func testAClaimedRunThatHasNotStartedIsHandedBackOnSIGTERM() async throws {
        let pool = try await makeProcessPool()
        let marker = try temporaryDirectory("marker") + "/started"
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'echo $PREFECT__FLOW_RUN_ID > \(marker)'"),
        ]))
        let id = try await createScheduledRun(deployment: deployment, at: Date().addingTimeInterval(20))
        track(id)
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory(), arguments: ["--prefetch-seconds", "30"])
        _ = try await waitForState(id, ["PENDING"], timeout: 15)
        let waiting = await worker.waitForLog(containing: "scheduled for", timeout: 5)
        XCTAssertNotNil(waiting, "the worker should wait for the scheduled time; log: \(Self.lines(of: worker.log, mentioning: id))")

        worker.isServing = false
        let sent = Date()
        signal(worker)
        let code = await worker.waitForExit(timeout: 15)
        XCTAssertEqual(code, 0, "exit code; log: \(worker.log.suffix(2000))")
        print("worker with a claimed run exited \(String(format: "%.2f", Date().timeIntervalSince(sent))) s after SIGTERM")

        let run = try await api.readFlowRun(id)
        XCTAssertEqual(run.stateType, "SCHEDULED", "the claimed run should be handed back: \(run.stateSummary)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "the handed-back run's command ran")
        let history = try await stateHistory(id)
        XCTAssertEqual(history.suffix(2), ["PENDING", "SCHEDULED"], "state history: \(history)")
    }

    func testRunOnceRunsWhatIsDueAndExits0ByItself() async throws {
        let pool = try await makeProcessPool()
        let file = try temporaryDirectory("once") + "/ids.txt"
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'sleep 1; echo $PREFECT__FLOW_RUN_ID >> \(file)'"),
        ]))
        let ids = [try await api.createFlowRun(deployment: deployment), try await api.createFlowRun(deployment: deployment)]
        track(ids)
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory(), arguments: ["--run-once"])
        worker.isServing = false
        let code = await worker.waitForExit(timeout: 60)
        XCTAssertEqual(code, 0, "--run-once should exit 0 by itself; log: \(worker.log.suffix(3000))")
        let runs = try await api.waitForFinalStates(ids, timeout: 10)
        for id in ids {
            XCTAssertEqual(runs[id]?.stateType, "COMPLETED", "\(id): \(runs[id]?.stateSummary ?? "?")")
        }
        let lines = Set((E2E.readText(file) ?? "").split(separator: "\n").map(String.init))
        XCTAssertEqual(lines, Set(ids), "both jobs ran")
    }
}
