import Foundation
import XCTest
@testable import PrefectWorker

/// PENDING/Submitting before the job starts, and submitted flows (bundle execution steps) left to the engine,
/// on `FakePrefectAPI` and `FakeSpawner`.
final class SubmittingStateTests: XCTestCase {
    private var fake: FakePrefectAPI!
    private var stateDirectory: String!
    /// The run's state type on the fake server.
    private let serverState = FakeAPIBox("SCHEDULED")
    /// How the fake answers a PENDING/Submitting proposal; nil: ACCEPT.
    private let submittingAnswer = FakeAPIBox<(@Sendable () -> FakePrefectAPI.Response)?>(nil)
    private let spawner = FakeSpawner()
    /// Whether a job had been started when each PENDING/Submitting proposal arrived.
    private let spawnedAtSubmitting = FakeAPIBox<[Bool]>([])
    /// The supervisor of the run `supervise` runs, for answers that act on it.
    private let supervisor = FakeAPIBox<FlowRunSupervisor?>(nil)

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("submitting-tests-\(UUID().uuidString)").path
        let serverState = serverState, submittingAnswer = submittingAnswer, spawner = spawner, spawnedAtSubmitting = spawnedAtSubmitting
        fake.route("GET", "/api/flow_runs/*") { _, path, _ in
            .json(200, fakeFlowRunJSON(id: String(path.split(separator: "/").last!), stateType: serverState.value))
        }
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            let state = (try? JSON.decode(body))?["state"] ?? .null
            if state["name"]?.stringValue == "Submitting" {
                spawnedAtSubmitting.update { $0.append(!spawner.spawned.isEmpty) }
                if let answer = submittingAnswer.value { return answer() }
            }
            serverState.value = state["type"]?.stringValue ?? serverState.value
            return .json(201, JSON.object(["status": "ACCEPT", "details": .object(["type": "accept_details"]), "state": state]))
        }
        fake.route("PATCH", "/api/flow_runs/*") { _, _, _ in .noContent }
        fake.route("PATCH", "/api/flow_runs/*/labels") { _, _, _ in .noContent }
    }

    override func tearDown() {
        fake.stop()
        fake = nil
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    /// A context whose pool has `storage` as its `storage_configuration` (nil: none).
    private func makeContext(storage: JSON? = nil) async throws -> WorkerContext {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = stateDirectory
        settings.environment = ["PATH": "/usr/bin:/bin"]
        let context = WorkerContext(settings: settings, client: fake.client(), spawner: spawner)
        try context.journal.prepare()
        try await context.outbox.prepare()
        var pool: [String: JSON] = ["id": "p-1", "name": "pool", "type": "process", "base_job_template": .object([:])]
        if let storage { pool["storage_configuration"] = storage }
        context.pool = try JSONDecoder().decode(WorkPool.self, from: Data(JSON.object(pool).encoded().utf8))
        return context
    }

    /// Supervises a run of `command` from claim to end. Its program must be on /usr/bin:/bin (`env python …`
    /// for a Python command), though the fake spawner runs nothing.
    private func supervise(_ id: String, _ command: String, in context: WorkerContext) async throws {
        let fields: [String: JSON] = [
            "id": .string(id), "state_id": "s-1", "run_count": .int(0),
            "job_variables": .object(["command": .string(command), "stream_output": .bool(false)]),
            "state": .object(["id": "s-1", "type": "SCHEDULED", "name": "Scheduled"]),
        ]
        let run = try JSONDecoder().decode(FlowRun.self, from: Data(JSON.object(fields).encoded().utf8))
        let supervisor = FlowRunSupervisor(context: context, runID: id)
        self.supervisor.value = supervisor
        _ = await context.registry.reserve(run, for: supervisor)
        let finished = await finishes(within: 30) { await supervisor.run(run) }
        XCTAssertTrue(finished, "the run should be supervised to its end")
    }

    /// Proposed state names in order ("pid" for the pid), as the fake received them.
    private func reports(_ id: String) -> [String] {
        fake.requests.filter { $0.path == "/api/flow_runs/\(id)" && $0.method == "PATCH" || $0.path == "/api/flow_runs/\(id)/set_state" }
            .map { request in
                guard request.method != "PATCH" else { return "pid" }
                let state = request.json?["state"]
                return state?["name"]?.stringValue == "Submitting" ? "Submitting" : (state?["type"]?.stringValue ?? "?")
            }
    }

    /// `reports(id)` once the pid has arrived: an engine run has no final report of the worker's behind which
    /// the pid is delivered, so it may arrive just after the supervision ends.
    private func reportsWithPID(_ id: String) async throws -> [String] {
        let deadline = Date().addingTimeInterval(5)
        while !reports(id).contains("pid"), Date() < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
        return reports(id)
    }

    /// A pool storage configuration whose execution step runs `module` (as `prefect work-pool storage
    /// configure` writes it, with a launcher).
    private static func storage(executing module: String) -> JSON {
        .object([
            "bundle_upload_step": .object(["bundles.upload": .object(["launcher": .array(["python"]), "dir": "/srv/bundles"])]),
            "bundle_execution_step": .object([.init(module): .object(["launcher": .array(["python"]), "dir": "/srv/bundles"])]),
            "default_result_storage_block_id": .null,
        ])
    }

    // MARK: - PENDING/Submitting

    func testSubmittingIsProposedAfterTheClaimAndBeforeRUNNINGAndTheJob() async throws {
        let context = try await makeContext()
        try await supervise("run-plain", "sh -c true", in: context)
        XCTAssertEqual(reports("run-plain"), ["PENDING", "Submitting", "RUNNING", "pid", "COMPLETED"])
        XCTAssertEqual(spawnedAtSubmitting.value, [false], "Submitting is proposed before the job starts")
        XCTAssertEqual(spawner.spawned.count, 1)
        let submitting = fake.requests("POST", "/api/flow_runs/run-plain/set_state")[1].json?["state"]
        XCTAssertEqual(submitting?["type"], "PENDING")
        XCTAssertEqual(submitting?["name"], "Submitting")
    }

    func testARefusedSubmittingOfARunBeingCancelledStartsNoJobAndReportsCancelled() async throws {
        let context = try await makeContext()
        let serverState = serverState
        submittingAnswer.value = {
            serverState.value = "CANCELLING"  // the user cancelled the run after the claim
            return .json(200, #"{"status":"ABORT","details":{"type":"abort_details","reason":"This run is in a CANCELLING state and cannot transition to a PENDING state."}}"#)
        }
        try await supervise("run-cancelled", "sh -c true", in: context)
        XCTAssertEqual(spawner.spawned.count, 0, "the job must not start")
        XCTAssertEqual(reports("run-cancelled"), ["PENDING", "Submitting", "CANCELLED"])
        XCTAssertEqual(serverState.value, "CANCELLED")
    }

    func testARefusedSubmittingOfARunThatLeftPendingStartsNoJobAndLeavesTheRunAlone() async throws {
        let context = try await makeContext()
        let serverState = serverState
        submittingAnswer.value = {
            serverState.value = "SCHEDULED"  // rescheduled by someone after the claim
            return .json(200, #"{"status":"ABORT","details":{"type":"abort_details","reason":"This run is in a SCHEDULED state."}}"#)
        }
        try await supervise("run-rescheduled", "sh -c true", in: context)
        XCTAssertEqual(spawner.spawned.count, 0, "the job must not start")
        XCTAssertEqual(reports("run-rescheduled"), ["PENDING", "Submitting"], "nothing more is proposed")
        XCTAssertEqual(serverState.value, "SCHEDULED")
    }

    /// An accepted Submitting is followed by a last look: a cancel that came during its round trip wins.
    func testACancelDuringTheSubmittingRoundTripStartsNoJob() async throws {
        let context = try await makeContext()
        let serverState = serverState, supervisor = supervisor
        submittingAnswer.value = {
            let cancelled = DispatchSemaphore(value: 0)
            Task { await supervisor.value?.requestCancel(); cancelled.signal() }
            cancelled.wait()
            serverState.value = "PENDING"
            return .json(201, #"{"status":"ACCEPT","details":{"type":"accept_details"},"state":{"type":"PENDING","name":"Submitting"}}"#)
        }
        try await supervise("run-cancel-submitting", "sh -c true", in: context)
        XCTAssertEqual(spawner.spawned.count, 0, "the job must not start")
        XCTAssertEqual(reports("run-cancel-submitting"), ["PENDING", "Submitting", "CANCELLED"])
    }

    func testADrainDuringTheSubmittingRoundTripHandsTheRunBack() async throws {
        let context = try await makeContext()
        let shutdown = context.shutdown, serverState = serverState
        submittingAnswer.value = {
            _ = shutdown.advance()  // draining
            serverState.value = "PENDING"
            return .json(201, #"{"status":"ACCEPT","details":{"type":"accept_details"},"state":{"type":"PENDING","name":"Submitting"}}"#)
        }
        try await supervise("run-drain-submitting", "sh -c true", in: context)
        XCTAssertEqual(spawner.spawned.count, 0, "the job must not start")
        XCTAssertEqual(reports("run-drain-submitting"), ["PENDING", "Submitting", "SCHEDULED"], "handed back to the pool")
    }

    func testAWaitForSubmittingThatADrainInterruptsHandsTheRunBack() async throws {
        let context = try await makeContext()
        let shutdown = context.shutdown
        submittingAnswer.value = {
            _ = shutdown.advance()  // the worker is told to stop while the server asks it to wait
            return .json(200, #"{"status":"WAIT","details":{"type":"wait_details","delay_seconds":30}}"#)
        }
        let start = Date()
        try await supervise("run-drained", "sh -c true", in: context)
        XCTAssertLessThan(Date().timeIntervalSince(start), 10, "a drain does not wait out the server's delay")
        XCTAssertEqual(spawner.spawned.count, 0, "the job must not start")
        XCTAssertEqual(reports("run-drained"), ["PENDING", "Submitting", "SCHEDULED"], "handed back to the pool")
    }

    func testAnUnansweredSubmittingStillStartsTheJob() async throws {
        let context = try await makeContext()
        submittingAnswer.value = { .json(503, #"{"exception_message":"Service Unavailable"}"#, headers: ["Retry-After": "0"]) }
        try await supervise("run-unanswered", "sh -c true", in: context)
        XCTAssertEqual(spawner.spawned.count, 1, "the run is claimed: Submitting is informative, as under Prefect's worker")
        XCTAssertEqual(reports("run-unanswered").filter { $0 != "Submitting" }, ["PENDING", "RUNNING", "pid", "COMPLETED"])
        XCTAssertGreaterThan(reports("run-unanswered").filter { $0 == "Submitting" }.count, 1, "given up only after the ordinary retries")
    }

    // MARK: - Submitted flows are engine-owned

    func testARunOfThePoolsBundleExecutionStepIsLeftToTheEngine() async throws {
        let context = try await makeContext(storage: Self.storage(executing: "bundles.execute"))
        try await supervise("run-bundle", "env python -m bundles.execute --dir /srv/bundles --key 3f2a", in: context)
        XCTAssertEqual(spawner.spawned.count, 1)
        let reported = try await reportsWithPID("run-bundle")
        XCTAssertEqual(reported, ["PENDING", "Submitting", "pid"], "neither RUNNING nor COMPLETED: the bundle's engine reports them")
    }

    func testTheSameCommandOnAPoolWithoutThatStepIsAPlainCommand() async throws {
        // The control for the test above: recognised from the pool's configuration, not from the module's name.
        let context = try await makeContext(storage: Self.storage(executing: "other.execute"))
        try await supervise("run-not-bundle", "env python -m bundles.execute --dir /srv/bundles --key 3f2a", in: context)
        XCTAssertEqual(reports("run-not-bundle"), ["PENDING", "Submitting", "RUNNING", "pid", "COMPLETED"])
    }

    func testPrefectsOwnBundleExecutorIsLeftToTheEngineWithoutAConfiguredStep() async throws {
        let context = try await makeContext()
        try await supervise("run-fallback", "env uv run --python 3.11 -m prefect.bundles.execute --key /srv/bundles/3f2a", in: context)
        let reported = try await reportsWithPID("run-fallback")
        XCTAssertEqual(reported, ["PENDING", "Submitting", "pid"])
    }
}
