import Foundation
import Synchronization
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

/// `RunLifecycle`, the one owner of a run's life (reserve → claim → launch → release), on the fake API and the
/// fake spawner, through the same `offer` and `adopt` the poll and the recovery call.
final class RunLifecycleTests: XCTestCase {
    private typealias P = ProcessTestSupport
    private var fake: FakePrefectAPI!
    private var stateDirectory: String!
    /// Each run's state type on the fake server, by run id (SCHEDULED until proposed otherwise).
    private let states = FakeAPIBox([String: String]())

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("lifecycle-\(UUID().uuidString)").path
        let states = states
        fake.route("GET", "/api/flow_runs/*") { _, path, _ in
            let id = String(path.split(separator: "/").last!)
            let type = states.value[id] ?? "SCHEDULED"
            return .json(200, """
                {"id": "\(id)", "name": "r", "flow_id": "f-1", "parameters": {}, "job_variables": {}, "state_type": "\(type)",
                 "run_count": 0, "state": {"id": "s-\(type)", "type": "\(type)", "name": "x", "timestamp": "2026-12-02T00:00:00Z"}}
                """)
        }
        fake.route("POST", "/api/flow_runs/*/set_state") { _, path, body in
            let id = String(path.split(separator: "/").dropLast().last!)
            let state = (try? JSON.decode(body))?["state"] ?? .null
            states.update { $0[id] = state["type"]?.stringValue ?? "?" }
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

    private func makeRuns(limit: Int? = nil, spawner: FakeSpawner) async throws -> (WorkerContext, RunLifecycle, Task<Void, Never>) {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = stateDirectory
        settings.environment = ["PATH": "/usr/bin:/bin"]
        settings.limit = limit
        let context = WorkerContext(settings: settings, client: fake.client(), spawner: spawner)
        try context.journal.prepare()
        try await context.outbox.prepare()
        context.pool = try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p-1", "name": "pool", "type": "process", "base_job_template": {}}"#.utf8))
        let runs = RunLifecycle(registry: context.registry, dependencies: context.runDependencies)
        return (context, runs, Task { await runs.run() })
    }

    private func polledRun(_ id: String) throws -> FlowRun {
        let json = JSON.object([
            "id": .string(id), "state_id": "s-SCHEDULED", "run_count": .int(0),
            "job_variables": .object(["command": "true", "stream_output": .bool(false)]),
            "state": .object(["id": "s-SCHEDULED", "type": "SCHEDULED", "name": "Scheduled"]),
        ])
        return try JSONDecoder().decode(FlowRun.self, from: Data(json.encoded().utf8))
    }

    private func eventually(_ what: String, timeout: Double = 10, _ condition: () async -> Bool) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while await !condition(), Date() < deadline { try await Task.sleep(seconds: 0.02) }
        let held = await condition()
        XCTAssertTrue(held, what)
    }

    /// An offered run is claimed, run and reported, and its slot is released; offered again from the same poll
    /// answer (the same scheduled state) it is not taken a second time.
    func testAnOfferedRunIsClaimedRunReleasedAndNotTakenAgainInTheSameState() async throws {
        let (context, runs, running) = try await makeRuns(spawner: FakeSpawner())
        let run = try polledRun("run-1")
        let taken = await runs.offer(run)
        XCTAssertTrue(taken)
        try await eventually("the run ends COMPLETED and its slot is released") {
            let count = await context.registry.count
            return count == 0 && states.value["run-1"] == "COMPLETED"
        }
        let again = await runs.offer(run)
        XCTAssertFalse(again, "claimed once in this scheduled state: a stale poll answer does not run it twice")
        runs.finish()
        await running.value
    }

    /// At the limit an offer is refused, and a run being handled is not taken twice; a released slot takes the next.
    func testAnOfferIsRefusedWhenEverySlotIsTakenOrTheRunIsInFlight() async throws {
        let spawner = FakeSpawner { _ in .runsUntilSignalled }
        let (context, runs, running) = try await makeRuns(limit: 1, spawner: spawner)
        let first = try polledRun("run-a"), second = try polledRun("run-b")
        let takenFirst = await runs.offer(first)
        XCTAssertTrue(takenFirst)
        let takenTwice = await runs.offer(first)
        XCTAssertFalse(takenTwice, "a run in flight is not taken twice")
        let takenOverLimit = await runs.offer(second)
        XCTAssertFalse(takenOverLimit, "one slot, taken")
        try await eventually("the job runs") { await context.registry.supervisor("run-a")?.pid != nil }
        let firstJob = await context.registry.supervisor("run-a")?.pid
        let pid = try XCTUnwrap(firstJob)
        spawner.end(pid, .exited(0))
        try await eventually("the slot is released") { await context.registry.count == 0 }
        let takenAfter = await runs.offer(second)
        XCTAssertTrue(takenAfter, "the freed slot takes the next run")
        try await eventually("the second run is running") { await context.registry.supervisor("run-b")?.pid != nil }
        let secondRunning = await context.registry.supervisor("run-b")?.pid
        let secondPID = try XCTUnwrap(secondRunning)
        spawner.end(secondPID, .exited(0))
        runs.finish()
        await running.value
        let left = await context.registry.count
        XCTAssertEqual(left, 0)
    }

    /// After `finish()` nothing is taken, so nothing outlives `run()`: an offer is refused and leaves no slot
    /// behind, and so is an adoption.
    func testNothingIsTakenAfterFinish() async throws {
        let (context, runs, running) = try await makeRuns(spawner: FakeSpawner())
        runs.finish()
        await running.value
        let taken = await runs.offer(try polledRun("run-late"))
        XCTAssertFalse(taken)
        let adopted = await runs.adopt(runID: "run-adopted", pid: getpid(), processStart: ProcFS.startTime(of: getpid()), owner: .engine)
        XCTAssertFalse(adopted)
        let count = await context.registry.count
        XCTAssertEqual(count, 0, "a refused offer or adoption holds no slot")
        XCTAssertTrue(fake.requests("POST", "/api/flow_runs/*/set_state").isEmpty, "nothing was claimed")
    }

    /// An adopted job holds its slot while it runs and gives it back when it exits.
    func testAnAdoptedJobHoldsItsSlotUntilItExits() async throws {
        let (context, runs, running) = try await makeRuns(limit: 1, spawner: FakeSpawner())
        let job = try ChildProcesses.shared.spawn(P.request(P.sleep, ["0.5"]))
        let adopted = await runs.adopt(runID: "run-adopted", pid: job.pid, processStart: ProcFS.startTime(of: job.pid), owner: .engine)
        XCTAssertTrue(adopted)
        let takenMeanwhile = await runs.offer(try polledRun("run-new"))
        XCTAssertFalse(takenMeanwhile, "the adopted job holds the only slot")
        _ = await ChildProcesses.shared.waitForEnd(job.pid)
        try await eventually("the slot is released once the adopted job has exited") { await context.registry.count == 0 }
        runs.finish()
        await running.value
    }
}
