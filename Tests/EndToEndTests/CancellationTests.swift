import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// Cancelling runs from the server (CANCELLING): the worker stops the whole job tree and reports CANCELLED.
final class CancellationTests: RunControlTestCase, @unchecked Sendable {
    func testCancellingATreeThatIgnoresSIGTERMKillsEveryProcessIncludingASetsidChild() async throws {
        let pool = try await makeProcessPool()
        // The job, its child, and a child that left the group and the session (setsid): all ignore SIGTERM.
        let command = #"sh -c 'trap "" TERM; setsid sh -c "trap \"\" TERM; sleep 300" & sleep 300'"#
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string(command),
        ]))
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory())
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)

        let jobPID = try await waitForJobPID(id, timeout: 30)
        let tree = try await E2E.eventually(timeout: 15, "the job tree of \(id) (with its setsid child) to be up: \(ProcScan.describe(ProcScan.processes(ofRun: id)))") { () -> [ProcScan.Stat]? in
            let stats = ProcScan.processes(ofRun: id)
            return stats.count >= 2 && Set(stats.map(\.session)).count >= 2 ? stats : nil
        }
        XCTAssertTrue(tree.contains { $0.pid == jobPID && $0.pgrp == jobPID }, "the job leads its own process group: \(ProcScan.describe(tree))")
        XCTAssertTrue(tree.contains { $0.pgrp != jobPID }, "a process left the job's group: \(ProcScan.describe(tree))")
        let before = try await api.readFlowRun(id)
        XCTAssertEqual(before.stateType, "RUNNING", before.stateSummary)

        let asked = Date()
        let result = try await setState(id, "CANCELLING")
        XCTAssertEqual(result["status"]?.asString, "ACCEPT", "set CANCELLING: \(result)")
        let run = try await waitForFinalState(id, timeout: 40)
        let elapsed = Date().timeIntervalSince(asked)

        XCTAssertEqual(run.stateType, "CANCELLED", "final state: \(run.stateSummary)")
        XCTAssertTrue(run.stateMessage.contains("SIGKILL") && run.stateMessage.contains("grace"),
                      "the message should say the job was killed with SIGKILL after the grace period: \(run.stateMessage)")
        XCTAssertGreaterThanOrEqual(elapsed, 2.0, "SIGKILL came before the 2 s grace period was over")
        let teardown = await waitForLogLine(worker, run: id, containing: "SIGTERM", timeout: 1)
        XCTAssertTrue(teardown?.contains("SIGKILL in 2 s") == true, "the worker should use the 2 s grace: \(teardown ?? Self.lines(of: worker.log, mentioning: id))")
        let left = ProcScan.processes(ofRun: id)
        XCTAssertEqual(left.map(\.pid), [], "processes of the cancelled run still alive: \(ProcScan.describe(left))")
        // Orphans re-parented to the worker (a subreaper) must have been reaped.
        let zombies = try? await E2E.eventually(timeout: 3, "no zombie children of the worker") {
            ProcScan.zombieChildren(of: worker.pid).isEmpty ? true : nil
        }
        XCTAssertNotNil(zombies, "zombie children of the worker: \(ProcScan.describe(ProcScan.zombieChildren(of: worker.pid)))")
        XCTAssertTrue(worker.isRunning, "the worker keeps serving after a cancellation")
    }

    func testCancellingAJobThatHonoursSIGTERMEndsWellBeforeTheGrace() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": "sleep 300",
        ]))
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory(), killGrace: 20)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        _ = try await waitForJobPID(id, timeout: 30)

        let asked = Date()
        let result = try await setState(id, "CANCELLING")
        XCTAssertEqual(result["status"]?.asString, "ACCEPT", "set CANCELLING: \(result)")
        let run = try await waitForFinalState(id, timeout: 40)
        let elapsed = Date().timeIntervalSince(asked)

        XCTAssertEqual(run.stateType, "CANCELLED", "final state: \(run.stateSummary)")
        XCTAssertTrue(run.stateMessage.contains("exited after SIGTERM"), "message: \(run.stateMessage)")
        XCTAssertLessThan(elapsed, 10, "a job that honours SIGTERM must not wait for the 20 s grace")
        let teardown = await waitForLogLine(worker, run: id, containing: "SIGTERM", timeout: 1)
        XCTAssertTrue(teardown?.contains("SIGKILL in 20 s") == true, "the worker should use the 20 s grace: \(teardown ?? Self.lines(of: worker.log, mentioning: id))")
        let left = ProcScan.processes(ofRun: id)
        XCTAssertEqual(left.map(\.pid), [], "processes of the cancelled run still alive: \(ProcScan.describe(left))")
        XCTAssertTrue(worker.isRunning)
    }

    func testARunCancelledAfterItWasClaimedButBeforeItStartedNeverStarts() async throws {
        let pool = try await makeProcessPool()
        let marker = try temporaryDirectory("marker") + "/started"
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'echo $PREFECT__FLOW_RUN_ID > \(marker)'"),
        ]))
        let scheduled = Date().addingTimeInterval(15)
        let id = try await createScheduledRun(deployment: deployment, at: scheduled)
        track(id)
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory(), arguments: ["--prefetch-seconds", "30"])

        // Claimed early (PENDING), waiting for its time.
        _ = try await waitForState(id, ["PENDING"], timeout: 10)
        let waiting = await worker.waitForLog(containing: "scheduled for", timeout: 5)
        XCTAssertNotNil(waiting, "the worker should say it waits for the scheduled time; log: \(Self.lines(of: worker.log, mentioning: id))")
        let result = try await setState(id, "CANCELLING")
        XCTAssertEqual(result["status"]?.asString, "ACCEPT", "set CANCELLING: \(result)")

        let run = try await waitForFinalState(id, timeout: 10)
        XCTAssertEqual(run.stateType, "CANCELLED", "final state: \(run.stateSummary)")
        XCTAssertLessThan(Date(), scheduled, "the run should be CANCELLED before its scheduled time")
        // Past its scheduled time it still has not started.
        let wait = scheduled.timeIntervalSinceNow + 1.5
        if wait > 0 { try await Task.sleep(nanoseconds: UInt64(wait * 1_000_000_000)) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "the cancelled run's command ran")
        let after = try await api.readFlowRun(id)
        XCTAssertEqual(after.stateType, "CANCELLED", "after the scheduled time: \(after.stateSummary)")
        XCTAssertNil(after["infrastructure_pid"]?.asString, "a run that never started has no infrastructure_pid")
        let history = try await stateHistory(id)
        XCTAssertFalse(history.contains("RUNNING"), "state history: \(history)")
        XCTAssertFalse(worker.log.contains("started command"), "the worker started a job: \(Self.lines(of: worker.log, mentioning: id))")
        XCTAssertTrue(worker.isRunning)
    }

    func testCancellingARunWhoseProcessAlreadyExitedLeavesItsFinalState() async throws {
        let pool = try await makeProcessPool()
        let dir = try temporaryDirectory("exited")
        let engine = try await api.createEngineDeployment(pool: pool, name: uniqueName("-engine"), flow: "hello")
        let command = try await api.createCommandDeployment(pool: pool, name: uniqueName("-cmd"), jobVariables: .object([
            "command": "sleep 1",
        ]))
        let racing = try await api.createCommandDeployment(pool: pool, name: uniqueName("-race"), jobVariables: .object([
            "command": .string("sh -c 'echo $PREFECT__FLOW_RUN_ID > \(dir)/$PREFECT__FLOW_RUN_ID'"),
        ]))
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory())
        let engineID = try await api.createFlowRun(deployment: engine)
        let commandID = try await api.createFlowRun(deployment: command)
        let racingID = try await api.createFlowRun(deployment: racing)
        track(engineID, commandID, racingID)

        // As soon as a run is COMPLETED (the engine's process may still be exiting), ask to cancel it.
        var cancelled: [String: JSON] = [:]
        try await E2E.eventually(timeout: 60, interval: 0.05, "runs \(engineID), \(commandID) to complete (cancelled so far: \(cancelled.keys.sorted()))") { () -> Bool? in
            try checkWorkersAlive()
            for id in [engineID, commandID] where cancelled[id] == nil {
                let run = try await api.readFlowRun(id)
                if TestAPI.terminalTypes.contains(run.stateType ?? "") {
                    XCTAssertEqual(run.stateType, "COMPLETED", "\(id) before the cancel: \(run.stateSummary)")
                    cancelled[id] = try await setState(id, "CANCELLING")
                }
            }
            // The racing job: cancel the moment its job has written its file (it exits right after).
            if cancelled[racingID] == nil, FileManager.default.fileExists(atPath: "\(dir)/\(racingID)") {
                cancelled[racingID] = try await setState(racingID, "CANCELLING")
            }
            return cancelled.count == 3 ? true : nil
        }
        for id in [engineID, commandID] {
            XCTAssertNotEqual(cancelled[id]?["status"]?.asString, "ACCEPT", "the server let a COMPLETED run be cancelled: \(String(describing: cancelled[id]))")
        }
        // Let the worker see the processes exit and make its cancellation checks.
        let engineSeen = await waitForLogLine(worker, run: engineID, containing: "the engine reported", timeout: 15)
        XCTAssertNotNil(engineSeen, "the worker should note what the engine reported; log: \(Self.lines(of: worker.log, mentioning: engineID))")
        try await Task.sleep(nanoseconds: 2_000_000_000)

        for id in [engineID, commandID] {
            let run = try await api.readFlowRun(id)
            XCTAssertEqual(run.stateType, "COMPLETED", "\(id): \(run.stateSummary)")
            let history = try await stateHistory(id)
            XCTAssertEqual(history.last, "COMPLETED", "\(id): state history \(history)")
            XCTAssertFalse(history.contains("CANCELLED") || history.contains("CRASHED"), "\(id): state history \(history)")
        }
        for id in [engineID, commandID] {
            let lines = Self.lines(of: worker.log, mentioning: id)
            XCTAssertFalse(lines.contains("SIGTERM") || lines.contains("cancelling it"), "the worker acted on a cancel of a finished run: \(lines)")
        }

        // Cancelled while its job was exiting: whichever came first, the run ends final, never stuck CANCELLING.
        let race = try await waitForFinalState(racingID, timeout: 15)
        let accepted = cancelled[racingID]?["status"]?.asString == "ACCEPT"
        if accepted {
            XCTAssertEqual(race.stateType, "CANCELLED", "cancel accepted before the worker reported: \(race.stateSummary)")
        } else {
            XCTAssertEqual(race.stateType, "COMPLETED", "cancel refused (\(String(describing: cancelled[racingID]))): \(race.stateSummary)")
        }
        print("racing cancel: set_state \(cancelled[racingID]?["status"]?.asString ?? "?"), final \(race.stateSummary)")
        XCTAssertTrue(worker.isRunning)
    }
}
