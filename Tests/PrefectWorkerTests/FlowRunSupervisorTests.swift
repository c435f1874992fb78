import Foundation
import XCTest
@testable import PrefectWorker

/// `FlowRunSupervisor` against `FakePrefectAPI`: claiming, and what the registry remembers of a claim.
final class FlowRunSupervisorTests: XCTestCase {
    private var fake: FakePrefectAPI!
    private var stateDirectory: String!
    /// The run as the fake server holds it: state type, state id and the transition id of its state.
    private let server = FakeAPIBox((type: "SCHEDULED", stateID: "s-1", transitionID: "t-0"))

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        stateDirectory = FileManager.default.temporaryDirectory
            .appendingPathComponent("supervisor-tests-\(UUID().uuidString)").path
        let server = server
        fake.route("GET", "/api/flow_runs/*") { _, path, _ in
            let run = server.value
            let id = String(path.split(separator: "/").last!)
            return .json(200, """
                {"id": "\(id)", "name": "fake-run", "flow_id": "f-1", "deployment_id": null, "parameters": {}, "job_variables": {},
                 "state_type": "\(run.type)", "state_name": "x", "infrastructure_pid": null, "tags": [], "run_count": 0,
                 "state": {"id": "\(run.stateID)", "type": "\(run.type)", "name": "x", "timestamp": "2026-11-23T08:53:40.364141Z",
                           "message": null, "state_details": {"flow_run_id": "\(id)", "transition_id": "\(run.transitionID)"}}}
                """)
        }
        // Accepts every proposal and makes it the run's state.
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            let state = (try? JSON.decode(body))?["state"] ?? .null
            server.update { run in
                run.type = state["type"]?.stringValue ?? run.type
                run.stateID = UUID().uuidString
                run.transitionID = state["state_details"]?["transition_id"]?.stringValue ?? ""
            }
            return .json(201, JSON.object(["status": .string("ACCEPT"), "details": .object(["type": .string("accept_details")]),
                                           "state": state]))
        }
    }

    override func tearDown() {
        fake.stop()
        fake = nil
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    private func makeContext() -> WorkerContext {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = stateDirectory
        return WorkerContext(settings: settings, client: fake.client())
    }

    /// The run as a poll returns it: SCHEDULED, in scheduled state `stateID`.
    private func polledRun(_ id: String, stateID: String = "s-1") throws -> FlowRun {
        let json = JSON.object(["id": .string(id), "state_id": .string(stateID), "run_count": .int(0),
                                "state": .object(["id": .string(stateID), "type": .string("SCHEDULED"), "name": .string("Scheduled")])])
        return try JSONDecoder().decode(FlowRun.self, from: Data(json.encoded().utf8))
    }

    /// Regression: a claim that met a few failed reads left the run for "the next poll", but the registry kept
    /// its run id and state id as submitted, so this worker never took it again (until the server re-marked
    /// it Late, with a new state id; a run already Late stayed stranded until a restart).
    func testARunWhoseClaimMetFailedReadsIsTakenAgainOnTheNextPoll() async throws {
        let context = makeContext()
        let supervisor = FlowRunSupervisor(context: context)
        let registry = context.registry
        let run = try polledRun("run-stranded")
        // Every attempt of the read before the claim fails (the quick policy makes 4).
        fake.inject(Array(repeating: .unavailable(retryAfter: "0"), count: 4), method: "GET", path: "/api/flow_runs/*")

        let reserved = await registry.reserve(run)
        XCTAssertTrue(reserved)
        let first = await supervisor.claim(run)
        XCTAssertFalse(first, "no read succeeded: the run cannot be claimed now")
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/*/set_state").count, 0, "nothing was proposed")
        XCTAssertEqual(fake.unusedFaults, 0, "the claim should have used up the failed reads")
        await registry.release(run.id)

        // The next poll returns the same run in the same scheduled state: it must be taken again.
        let again = await registry.reserve(run)
        XCTAssertTrue(again, "a run left for the next poll must be taken on the next poll")
        let second = await supervisor.claim(run)
        XCTAssertTrue(second, "the server is back: the claim succeeds")
        XCTAssertEqual(server.value.type, "PENDING")
        await registry.release(run.id)

        // Claimed once: a stale poll that still shows it SCHEDULED in that state never starts it a second time.
        let stale = await registry.reserve(run)
        XCTAssertFalse(stale, "a run this worker claimed is never taken again in the same scheduled state")
        // A re-run (a new SCHEDULED state) may be taken again.
        let rerun = await registry.reserve(try polledRun("run-stranded", stateID: "s-2"))
        XCTAssertTrue(rerun)
    }

    /// A PENDING whose answer was lost may have landed: the run may be ours. Left "for the next poll" then, it
    /// would stay PENDING with nobody to start it (a poll returns only SCHEDULED runs). So after an unanswered
    /// proposal the claim keeps reading the run until it knows.
    func testAClaimWhoseAnswerWasLostKeepsReadingUntilItKnows() async throws {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = stateDirectory
        let context = WorkerContext(settings: settings, client: fake.client(requestTimeout: 1))
        let supervisor = FlowRunSupervisor(context: context)
        let run = try polledRun("run-lost-answer")
        // The proposal is applied after 2 s, when the client has given up on its answer (1 s timeout)...
        fake.inject([.delay(2)], method: "POST", path: "/api/flow_runs/*/set_state")
        // ... and the reads after it fail for a while (the first read, before the proposal, passes).
        fake.inject([.delay(0)] + Array(repeating: .unavailable(retryAfter: "0"), count: 4), method: "GET", path: "/api/flow_runs/*")
        let reserved = await context.registry.reserve(run)
        XCTAssertTrue(reserved)
        let claimed = await supervisor.claim(run)
        XCTAssertEqual(server.value.type, "PENDING", "the lost proposal did land")
        XCTAssertTrue(claimed, "the run is ours (PENDING with our transition id): it must not be left PENDING with nobody to run it")
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/*/set_state").count, 1, "one proposal; the rest were reads")
    }

    /// The same when the claim was never tried because the deployment could not be read.
    func testARunLeftBecauseItsDeploymentCouldNotBeReadIsTakenAgain() async throws {
        let context = makeContext()
        let supervisor = FlowRunSupervisor(context: context)
        let registry = context.registry
        let fields = JSON.object(["id": "run-d", "state_id": "s-1", "deployment_id": "d-1"])
        let run = try JSONDecoder().decode(FlowRun.self, from: Data(fields.encoded().utf8))
        fake.outage = .unavailable(retryAfter: "0")
        let reserved = await registry.reserve(run)
        XCTAssertTrue(reserved)
        await supervisor.run(run)
        await registry.release(run.id)
        XCTAssertFalse(fake.requests("GET", "/api/deployments/d-1").isEmpty, "the deployment read was tried")
        let again = await registry.reserve(run)
        XCTAssertTrue(again, "a run left for the next poll must be taken on the next poll")
    }

    /// Per-run order: the job's pid is queued before its final state, so it reaches the server first even
    /// for a job that ends at once. (It was handed to the outbox from an unstructured Task, which could run
    /// after the final state had been queued.)
    func testAFastJobsPidReachesTheServerBeforeItsFinalState() async throws {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = stateDirectory
        settings.environment = ["PATH": "/usr/bin:/bin"]
        let context = WorkerContext(settings: settings, client: fake.client())
        try context.journal.prepare()
        try await context.outbox.prepare()
        context.pool = try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p-1", "name": "pool", "type": "process", "base_job_template": {}}"#.utf8))
        fake.route("PATCH", "/api/flow_runs/*") { _, _, _ in .noContent }
        fake.route("PATCH", "/api/flow_runs/*/labels") { _, _, _ in .noContent }
        let supervisor = FlowRunSupervisor(context: context)
        // Before the fix about one run in fifteen came out in the wrong order here; twenty make a failure likely.
        for i in 0..<20 {
            let id = "run-fast-\(i)"
            server.value = (type: "SCHEDULED", stateID: "s-\(i)", transitionID: "t-0")
            let json = JSON.object(["id": .string(id), "state_id": .string("s-\(i)"), "run_count": .int(0),
                                    "job_variables": .object(["command": "true", "stream_output": .bool(false)]),
                                    "state": .object(["id": .string("s-\(i)"), "type": "SCHEDULED", "name": "Scheduled"])])
            let run = try JSONDecoder().decode(FlowRun.self, from: Data(json.encoded().utf8))
            let reserved = await context.registry.reserve(run)
            XCTAssertTrue(reserved)
            let finished = await finishes(within: 30) { await supervisor.run(run) }
            XCTAssertTrue(finished, "the run should be supervised to its end")
            await context.registry.release(id)
            let reports = fake.requests.filter { $0.path == "/api/flow_runs/\(id)" && $0.method == "PATCH" || $0.path == "/api/flow_runs/\(id)/set_state" }
                .map { $0.method == "PATCH" ? "pid" : ($0.json?["state"]?["type"]?.stringValue ?? "?") }
            XCTAssertEqual(reports, ["PENDING", "RUNNING", "pid", "COMPLETED"], "run \(i)")
            XCTAssertEqual(server.value.type, "COMPLETED")
        }
    }
}
