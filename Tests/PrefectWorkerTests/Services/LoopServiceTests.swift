import Foundation
import XCTest
@testable import PrefectWorker

/// The poll and the cancellation watch, each run on its own against `FakePrefectAPI`.
final class LoopServiceTests: XCTestCase {
    private var fake: FakePrefectAPI!

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
    }

    override func tearDown() {
        fake.stop()
        fake = nil
    }

    private func context(_ configure: (inout Settings) -> Void = { _ in }) -> WorkerContext {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("loops-\(UUID().uuidString)").path
        configure(&settings)
        return WorkerContext(settings: settings, client: fake.client())
    }

    private func scheduled(_ id: String) -> JSON {
        .object(["id": .string(id), "state_id": .string("s-" + id), "run_count": .int(0),
                 "state": .object(["id": .string("s-" + id), "type": "SCHEDULED", "name": "Scheduled"])])
    }

    /// Runs `service` for `seconds`, then stops it as its stage would (a cancelled task), and waits for it.
    private func run(_ service: any Service, for seconds: Double) async -> Bool {
        let task = Task { await service.run() }
        try? await Task.sleep(nanoseconds: UInt64(seconds * 1_000_000_000))
        task.cancel()
        return await finishes(within: 5) { await task.value }
    }

    func testThePollReservesWithinTheLimitAndWaitsForASlotInsteadOfPolling() async throws {
        let context = context {
            $0.limit = 2
            $0.querySeconds = 0.1
        }
        context.pool = try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p-1", "name": "pool", "type": "process", "base_job_template": {}}"#.utf8))
        let answer = JSON.array(["r-1", "r-2", "r-3"].map { .object(["flow_run": scheduled($0)]) }).encoded()
        fake.route("POST", "/api/work_pools/pool/get_scheduled_flow_runs") { _, _, _ in .json(200, answer) }
        // The launcher's own loop is not running: submitted runs wait there, holding their slots.
        let stopped = await run(PollService(context: context, runs: RunLifecycle(context: context)), for: 0.5)
        XCTAssertTrue(stopped, "the poll ends when its task is cancelled")
        let ids = await context.registry.runIDs
        XCTAssertEqual(ids, ["r-1", "r-2"], "two slots, two runs, in the order the poll gave them")
        let polls = fake.requests("POST", "/api/work_pools/pool/get_scheduled_flow_runs")
        XCTAssertEqual(polls.first?.json?["limit"], .int(2), "asks for no more runs than it has slots")
        XCTAssertLessThan(polls.count, 3, "with every slot taken it waits for a release (or the interval) instead of polling")
    }

    func testTheCancellationWatchAsksOnlyWhileRunsAreInFlightAndCancelsThoseTheServerNames() async throws {
        let context = context { $0.cancellationPollSeconds = 0.1 }
        let filter = #"/api/flow_runs/filter"#
        fake.route("POST", filter) { _, _, _ in .json(200, "[" + fakeFlowRunJSON(id: "run-a", stateType: "CANCELLING") + "]") }
        let idle = await run(CancellationWatch(context: context), for: 0.35)
        XCTAssertTrue(idle)
        XCTAssertEqual(fake.requests("POST", filter).count, 0, "an idle worker makes no request")

        let a = FlowRunSupervisor(context: context, runID: "run-a"), b = FlowRunSupervisor(context: context, runID: "run-b")
        for (supervisor, id) in [(a, "run-a"), (b, "run-b")] {
            let run = try JSONDecoder().decode(FlowRun.self, from: Data(scheduled(id).encoded().utf8))
            let reserved = await context.registry.reserve(run, for: supervisor)
            XCTAssertTrue(reserved)
        }
        let busy = await run(CancellationWatch(context: context), for: 0.35)
        XCTAssertTrue(busy)
        let asked = fake.requests("POST", filter)
        XCTAssertGreaterThan(asked.count, 0)
        let ids = asked.first?.json?["flow_runs"]?["id"]?["any_"]
        XCTAssertEqual(ids, .array(["run-a", "run-b"]), "asks about exactly the runs in flight")
        let cancelledA = await a.cancelRequested, cancelledB = await b.cancelRequested
        XCTAssertTrue(cancelledA, "the server said run-a is CANCELLING")
        XCTAssertFalse(cancelledB)
    }
}
