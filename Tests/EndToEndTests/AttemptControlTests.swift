import Foundation
@testable import PrefectWorker
import XCTest

/// Real engine flows and the attempt control session: a cancelled flow ends CANCELLED with its
/// `on_cancellation` hooks, a shutdown can hand a run back to its pool, and an engine that promised to
/// conclude its attempt and did not is CRASHED.
final class AttemptControlTests: RunControlTestCase, @unchecked Sendable {
    let engineTimeout = 90.0

    /// The names of the hook marker files in `directory`, sorted.
    func hooksThatRan(_ directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }

    /// Waits until the engine runs the flow's task (RUNNING, plus time to arm its control session).
    func waitUntilRunningInTask(_ id: String) async throws {
        _ = try await waitForState(id, ["RUNNING"], timeout: engineTimeout)
        try await Task.sleep(seconds: 4)
    }

    /// A worker (20 s kill grace, `arguments`) and a run of the `hooked` flow sleeping `seconds` in its task,
    /// its hooks writing to `markers`.
    func startHookedRun(seconds: Int, arguments: [String] = [], environment: [String: String] = [:]) async throws -> (worker: WorkerProcess, pool: String, id: String, markers: String) {
        let pool = try await makeProcessPool()
        let deployment = try await api.createEngineDeployment(pool: pool, name: uniqueName(), flow: "hooked")
        let worker = try startWorker(pool: pool, arguments: Self.fastArguments + [
            "--kill-grace-seconds", "20", "--state-dir", try stateDirectory(),
        ] + arguments, environment: environment)
        let markers = try temporaryDirectory("markers")
        let id = try await api.createFlowRun(deployment: deployment, parameters: .object([
            "marker_dir": .string(markers), "seconds": .int(seconds),
        ]))
        track(id)
        return (worker, pool, id, markers)
    }

    func testACancelledEngineFlowEndsCancelledAndRunsItsOnCancellationHook() async throws {
        let (started, _, id, markers) = try await startHookedRun(seconds: 60)
        let worker = started
        try await waitUntilRunningInTask(id)
        try await setState(id, "CANCELLING")

        let run = try await waitForFinalState(id, timeout: 60)
        XCTAssertEqual(run.stateType, "CANCELLED", "final state: \(run.stateSummary)\n\(Self.lines(of: worker.log, mentioning: id))")
        XCTAssertEqual(run["run_count"]?.asInt, 1)
        let history = try await stateHistory(id)
        XCTAssertFalse(history.contains("CRASHED"), "state history: \(history)")
        XCTAssertEqual(history.last, "CANCELLED", "state history: \(history)")
        _ = try? await E2E.eventually(timeout: 10, "the on_cancellation hook's marker") {
            self.hooksThatRan(markers).contains("on_cancellation") ? true : nil
        }
        XCTAssertEqual(hooksThatRan(markers), ["on_cancellation"], "hooks that ran (on_crashed must not)")
        XCTAssertTrue(worker.log.contains("acknowledged the 'cancel' intent"), Self.lines(of: worker.log, mentioning: id))
        XCTAssertTrue(worker.isRunning)
    }

    func testHostileLocalClientsOnTheControlPortGetNothingAndTheCancellationStillWorks() async throws {
        let (started, _, id, markers) = try await startHookedRun(seconds: 60)
        let worker = started
        let pid = try await waitForJobPID(id, timeout: engineTimeout)
        let environment = try XCTUnwrap(ProcFS.environment(of: pid))
        let port = try XCTUnwrap(environment["PREFECT__CONTROL_PORT"].flatMap { UInt16($0) }, "the engine's control port")
        XCTAssertEqual(environment["PREFECT__CONTROL_TOKEN"]?.count, 32)
        try await waitUntilRunningInTask(id)

        // The engine holds the session: the listener is closed, and anything else that connects gets nothing.
        for attempt in 0..<20 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = in_addr_t(UInt32(0x7f00_0001).bigEndian)
            address.sin_port = port.bigEndian
            var timeout = timeval(tv_sec: 1, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if connected == 0 {
                let junk = attempt % 2 == 0 ? "\(environment["PREFECT__CONTROL_TOKEN"]!)\n\u{0}PF\u{2}\u{1}" : "GET / HTTP/1.1\r\n\r\n"
                _ = junk.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
                var byte: UInt8 = 0
                XCTAssertLessThanOrEqual(recv(fd, &byte, 1, 0), 0, "a hostile client got a byte")
            }
            close(fd)
        }
        XCTAssertTrue(worker.isRunning)

        try await setState(id, "CANCELLING")
        let run = try await waitForFinalState(id, timeout: 60)
        XCTAssertEqual(run.stateType, "CANCELLED", "final state: \(run.stateSummary)\n\(Self.lines(of: worker.log, mentioning: id))")
        _ = try? await E2E.eventually(timeout: 10, "the on_cancellation hook's marker") {
            self.hooksThatRan(markers).contains("on_cancellation") ? true : nil
        }
        XCTAssertEqual(hooksThatRan(markers), ["on_cancellation"])
    }

    func testAnEngineThatExitsWithoutConcludingItsAttemptIsCrashed() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createEngineDeployment(pool: pool, name: uniqueName(), flow: "vanish")
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory())
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)

        let run = try await waitForFinalState(id, timeout: engineTimeout)
        XCTAssertEqual(run.stateType, "CRASHED", "final state: \(run.stateSummary)\n\(Self.lines(of: worker.log, mentioning: id))")
        XCTAssertTrue(run.stateMessage.contains("exited with code 0 without reporting"), run.stateMessage)
    }

    func testWithRescheduleAStoppedEngineRunGoesBackToItsPoolAndAnotherWorkerFinishesIt() async throws {
        let (started, pool, id, markers) = try await startHookedRun(
            seconds: 8, arguments: ["--drain-timeout", "1"], environment: ["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "reschedule"])
        let first = started
        try await waitUntilRunningInTask(id)

        first.isServing = false
        kill(first.pid, SIGTERM)
        let code = await first.waitForExit(timeout: 40)
        XCTAssertEqual(code, 0, "the first worker drains, hands the run back and exits 0:\n\(Self.lines(of: first.log, mentioning: id))")
        let handedBack = try await api.readFlowRun(id)
        XCTAssertEqual(handedBack.stateType, "SCHEDULED", "after the hand-back: \(handedBack.stateSummary)\n\(first.log)")
        XCTAssertEqual(handedBack["state_name"]?.asString, "AwaitingRetry")
        XCTAssertEqual(hooksThatRan(markers), [], "no hook runs for a hand-back (it is neither a crash nor a cancellation)")

        let second = try startRunControlWorker(pool: pool, stateDir: try stateDirectory())
        let run = try await waitForFinalState(id, timeout: engineTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "finished by the second worker: \(run.stateSummary)\n\(Self.lines(of: second.log, mentioning: id))")
        let history = try await stateHistory(id)
        XCTAssertFalse(history.contains("CRASHED"), "state history: \(history)")
    }

    func testByDefaultAnEngineRunStoppedByAShutdownIsCrashed() async throws {
        let (started, _, id, _) = try await startHookedRun(seconds: 60, arguments: ["--drain-timeout", "1"])
        let worker = started
        try await waitUntilRunningInTask(id)
        worker.isServing = false
        kill(worker.pid, SIGTERM)
        let code = await worker.waitForExit(timeout: 40)
        XCTAssertEqual(code, 0)
        let run = try await api.readFlowRun(id)
        XCTAssertEqual(run.stateType, "CRASHED", "\(run.stateSummary)\n\(Self.lines(of: worker.log, mentioning: id))")
    }
}
