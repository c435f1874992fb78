import Foundation
@testable import PrefectWorker
import XCTest

/// Real `@flow`s from Tests/fixtures/flows.py, run by the default command (`python -m prefect.engine`).
final class EngineRunTests: E2ETestCase, @unchecked Sendable {
    /// Engine runs start a Python interpreter and import Prefect: seconds each on a small machine.
    let engineTimeout = 60.0

    func testHelloFlowCompletesThroughTheEngine() async throws {
        let pool = try await makeProcessPool()
        let poolID = try await api.readPool(pool)?["id"]?.asString
        let deployment = try await api.createEngineDeployment(pool: pool, name: uniqueName(), flow: "hello")
        let workerName = uniqueName("-worker")
        let worker = try startWorker(pool: pool, name: workerName)

        let parameters = try E2E.json(#"{"name": "e2e-Zoë", "numbers": [1, 2, 3]}"#)
        let id = try await api.createFlowRun(deployment: deployment, parameters: parameters)
        let run = try await waitForFinalState(id, timeout: engineTimeout)

        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
        XCTAssertEqual(run["state_name"]?.asString, "Completed")
        XCTAssertEqual(run["run_count"]?.asInt, 1, "the engine proposes RUNNING once; the worker must not add its own")
        let states = try await api.states(id).compactMap { $0["type"]?.asString }
        XCTAssertEqual(states.filter { $0 == "RUNNING" }.count, 1, "state history: \(states)")

        // infrastructure_pid: the bare pid of the process the worker spawned (not the worker itself).
        let pidText = run["infrastructure_pid"]?.asString
        let pid = pidText.flatMap { Int32($0) }
        XCTAssertNotNil(pid, "infrastructure_pid should be a bare decimal pid, got \(String(describing: pidText))")
        if let pid {
            XCTAssertGreaterThan(pid, 1)
            XCTAssertNotEqual(pid, worker.pid, "infrastructure_pid is the job's pid, not the worker's")
            XCTAssertTrue(worker.log.contains("pid \(pid)"), "the worker log should name the job's pid \(pid)")
        }

        let labels = run["labels"]
        XCTAssertEqual(labels?["prefect.worker.name"]?.asString, workerName)
        XCTAssertEqual(labels?["prefect.worker.type"]?.asString, "process")
        XCTAssertEqual(labels?["prefect.work-pool.name"]?.asString, pool)
        XCTAssertNotNil(poolID)
        XCTAssertEqual(labels?["prefect.work-pool.id"]?.asString, poolID)

        // The parameters reached the flow function: it logs them through the engine.
        var messages: [String] = []
        do {
            _ = try await E2E.eventually(timeout: 15, "the flow's log line 'hello, e2e-Zoë! [1, 2, 3]' in \(messages)") {
                messages = try await api.logMessages(id)
                return messages.contains { $0.contains("hello, e2e-Zoë! [1, 2, 3]") } ? true : nil
            }
        } catch {
            XCTFail("the parameters did not reach the flow: \(error)")
        }
        XCTAssertTrue(worker.isRunning)
    }

    func testCrashingEnginesAreReportedCrashed() async throws {
        let pool = try await makeProcessPool()
        let crash = try await api.createEngineDeployment(pool: pool, name: uniqueName("-crash"), flow: "crash")
        let killSelf = try await api.createEngineDeployment(pool: pool, name: uniqueName("-kill"), flow: "kill_self")
        let worker = try startWorker(pool: pool)

        // Both at once: the worker runs them concurrently, which keeps this test short.
        let crashID = try await api.createFlowRun(deployment: crash, parameters: try E2E.json(#"{"code": 3}"#))
        let killID = try await api.createFlowRun(deployment: killSelf)
        let runs = try await waitForFinalStates([crashID, killID], timeout: engineTimeout)

        let crashed = try XCTUnwrap(runs[crashID])
        XCTAssertEqual(crashed.stateType, "CRASHED", "os._exit(3): \(crashed.stateSummary)")
        XCTAssertTrue(E2E.containsNumber(crashed.stateMessage, 3), "message should give exit code 3: \(crashed.stateMessage)")

        let killed = try XCTUnwrap(runs[killID])
        XCTAssertEqual(killed.stateType, "CRASHED", "SIGKILL: \(killed.stateSummary)")
        XCTAssertTrue(killed.stateMessage.contains("SIGKILL"), "message should name SIGKILL: \(killed.stateMessage)")

        XCTAssertTrue(worker.isRunning, "the worker must survive crashing jobs")
    }
}
