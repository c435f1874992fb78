import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// A worker killed with SIGKILL, then started again with the same state directory (or the same name).
final class RecoveryTests: RunControlTestCase, @unchecked Sendable {
    /// A command deployment, a run of it and a worker; returns once the job runs (and has its infrastructure_pid).
    func startCommandRun(_ command: String, pool: String, stateDir: String, name: String? = nil) async throws -> (worker: WorkerProcess, id: String, pid: pid_t) {
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string(command),
        ]))
        let worker = try startRunControlWorker(pool: pool, stateDir: stateDir, name: name)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let pid = try await waitForJobPID(id, timeout: 30)
        return (worker, id, pid)
    }

    /// SIGKILL to the job's process group (the job leads it), after checking the leader is that run's job.
    func killJobGroup(_ pid: pid_t, run id: String) async {
        guard let stat = ProcScan.stat(pid), stat.pgrp == pid,
              ProcScan.environment(of: pid, contains: "PREFECT__FLOW_RUN_ID=" + id) else {
            XCTFail("pid \(pid) is not the live leader of run \(id)'s process group: \(ProcScan.describe(ProcScan.stat(pid).map { [$0] } ?? []))")
            return
        }
        XCTAssertEqual(kill(-pid, SIGKILL), 0, "kill(-\(pid), SIGKILL)")
        let gone = await waitForNoJobProcesses(id, timeout: 5)
        XCTAssertTrue(gone, "the job's processes survived SIGKILL: \(ProcScan.describe(ProcScan.processes(ofRun: id)))")
    }

    func testJobGoneWithTheWorkerIsReportedCrashedByTheNextWorker() async throws {
        let pool = try await makeProcessPool()
        let stateDir = try stateDirectory()
        let (first, id, pid) = try await startCommandRun("sleep 300", pool: pool, stateDir: stateDir)
        let running = try await api.readFlowRun(id)
        XCTAssertEqual(running.stateType, "RUNNING", running.stateSummary)
        await killWorker(first)
        await killJobGroup(pid, run: id)
        let still = try await api.readFlowRun(id)
        XCTAssertEqual(still.stateType, "RUNNING", "nobody should have reported the run yet: \(still.stateSummary)")

        let second = try startRunControlWorker(pool: pool, stateDir: stateDir)
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "CRASHED", "final state: \(run.stateSummary); log: \(Self.lines(of: second.log, mentioning: id))")
        XCTAssertTrue(run.stateMessage.contains("job process was gone"), "message: \(run.stateMessage)")
        XCTAssertTrue(second.isRunning)
    }

    func testEngineRunLeftRunningIsAdoptedAndItsEngineReportIsKept() async throws {
        let pool = try await makeProcessPool()
        let stateDir = try stateDirectory()
        let deployment = try await api.createEngineDeployment(pool: pool, name: uniqueName(), flow: "sleepy")
        let first = try startRunControlWorker(pool: pool, stateDir: stateDir)
        let id = try await api.createFlowRun(deployment: deployment, parameters: try E2E.json(#"{"seconds": 6}"#))
        track(id)
        // The engine reports RUNNING right before the flow function sleeps its 6 s.
        _ = try await waitForState(id, ["RUNNING"], timeout: 60)
        let pid = try await waitForJobPID(id, timeout: 10)
        await killWorker(first)
        XCTAssertFalse(ProcScan.processes(ofRun: id).isEmpty, "the job must outlive the worker")

        let second = try startRunControlWorker(pool: pool, stateDir: stateDir)
        let adopted = await waitForLogLine(second, run: id, containing: "adopting job pid \(pid)", timeout: 20)
        XCTAssertNotNil(adopted, "the new worker should adopt pid \(pid); log: \(second.log.suffix(3000))")
        let run = try await waitForFinalState(id, timeout: 60)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")

        // The new worker sees the process exit; what it then does must leave the engine's report alone.
        let exited = await waitForLogLine(second, run: id, containing: "job (pid \(pid))", timeout: 20)
        XCTAssertNotNil(exited, "the new worker should notice the adopted job exit; log: \(Self.lines(of: second.log, mentioning: id))")
        try await Task.sleep(nanoseconds: 2_000_000_000)
        let after = try await api.readFlowRun(id)
        XCTAssertEqual(after.stateType, "COMPLETED", "after the adopted job exited: \(after.stateSummary)")
        let history = try await stateHistory(id)
        XCTAssertEqual(history.last, "COMPLETED", "state history: \(history)")
        XCTAssertFalse(history.contains("CRASHED"), "state history: \(history)")
        XCTAssertEqual(after["run_count"]?.asInt, 1)
        let about = Self.lines(of: second.log, mentioning: id)
        XCTAssertFalse(about.contains("reported COMPLETED") || about.contains("reported CRASHED"),
                       "the engine reports an engine run's final state, not the worker: \(about)")
        XCTAssertTrue(second.isRunning)
    }

    func testCommandRunLeftRunningIsAdoptedAndReportedCrashedWhenItExits() async throws {
        let pool = try await makeProcessPool()
        let stateDir = try stateDirectory()
        // Long enough for the new worker to come up and adopt it on a slow machine.
        let (first, id, pid) = try await startCommandRun("sleep 6", pool: pool, stateDir: stateDir)
        await killWorker(first)
        XCTAssertFalse(ProcScan.processes(ofRun: id).isEmpty, "the job must outlive the worker")

        let second = try startRunControlWorker(pool: pool, stateDir: stateDir)
        let adopted = await waitForLogLine(second, run: id, containing: "adopting job pid \(pid)", timeout: 20)
        XCTAssertNotNil(adopted, "the new worker should adopt pid \(pid); log: \(second.log.suffix(3000))")
        let during = try await api.readFlowRun(id)
        XCTAssertEqual(during.stateType, "RUNNING", "while the adopted job runs: \(during.stateSummary)")
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "CRASHED", "final state: \(run.stateSummary)")
        XCTAssertTrue(run.stateMessage.contains("exit status could not be observed"), "message: \(run.stateMessage)")
        XCTAssertTrue(ProcScan.processes(ofRun: id).isEmpty, "the job should have exited by itself")
        XCTAssertTrue(second.isRunning)
    }

    func testLostJournalRunLabelledWithTheWorkersNameIsReportedCrashed() async throws {
        let pool = try await makeProcessPool()
        let stateDir = try stateDirectory()
        let name = uniqueName("-stable")
        let (first, id, pid) = try await startCommandRun("sleep 300", pool: pool, stateDir: stateDir, name: name)
        let labelled = try await E2E.eventually(timeout: 10, "run \(id) to be labelled with worker \(name)") { () -> JSON? in
            let run = try await api.readFlowRun(id)
            return run["labels"]?["prefect.worker.name"]?.asString == name ? run : nil
        }
        XCTAssertEqual(labelled.stateType, "RUNNING", labelled.stateSummary)
        // The journal (in the state directory) knew the run: losing it is what this test is about.
        let journalled = FileManager.default.enumerator(atPath: stateDir)?.allObjects.compactMap { $0 as? String }.contains { $0.contains(id) }
        XCTAssertEqual(journalled, true, "the state directory should hold an entry for \(id)")
        await killWorker(first)
        await killJobGroup(pid, run: id)
        try FileManager.default.removeItem(atPath: stateDir)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stateDir))

        let second = try startRunControlWorker(pool: pool, stateDir: stateDir, name: name)
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "CRASHED", "final state: \(run.stateSummary); log: \(Self.lines(of: second.log, mentioning: id))")
        XCTAssertTrue(run.stateMessage.contains("job process was gone"), "message: \(run.stateMessage)")
        XCTAssertTrue(second.isRunning)
    }
}
