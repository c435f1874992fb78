import XCTest
@testable import PrefectWorker

/// `FlowRunHeartbeat.seconds`: the heartbeat interval as the engine reads its setting.
final class FlowRunHeartbeatTests: XCTestCase {
    func testHeartbeatFrequencyAsTheEngineReadsIt() {
        typealias S = FlowRunHeartbeat
        XCTAssertEqual(S.seconds([:], log: .console), 180, "Prefect's default")
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"], log: .console), 30)
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "45"], log: .console), 45)
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "5"], log: .console), 30, "Prefect's minimum")
        XCTAssertEqual(S.seconds(["PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "60"], log: .console), 60, "the legacy name")
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "40", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "60"], log: .console), 40)
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "often"], log: .console), 180)
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "99999999999"], log: .console), 86_400 * 365, "at most a year")
    }

    /// Regression: a huge frequency in a job's env became more nanoseconds than a UInt64 holds, and the
    /// heartbeat's sleep trapped, crashing the worker.
    func testAHugeFrequencyDoesNotTrap() async throws {
        let fake = try FakePrefectAPI()
        defer { fake.stop() }
        let settings = Settings(apiURL: fake.apiURL, pool: "p", workerName: "w")
        let context = WorkerContext(settings: settings, client: fake.client())
        let run = try JSONTreeDecoder.decode(FlowRun.self, from: Data(fakeFlowRunJSON(id: "r1", stateType: "RUNNING").utf8))
        let seconds = FlowRunHeartbeat.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "99999999999"], log: .console)
        let heartbeat = Task { await FlowRunHeartbeat(events: context.events, every: seconds).beat(run, flowName: "f", pool: nil) }
        try await Task.sleep(nanoseconds: 200_000_000)  // the heartbeat's task is asleep (or has trapped) by now
        heartbeat.cancel()
        XCTAssertEqual(context.events.shipper.pending, 1, "the first heartbeat, at once")
    }

    /// An adopted job that ends while its run is still being read stops the heartbeat quietly: the read's
    /// cancellation was logged as "cannot read the adopted run" WARNING.
    func testStoppingAnAdoptedJobsHeartbeatDuringItsReadLogsNoWarning() async throws {
        let fake = try FakePrefectAPI()
        defer { fake.stop() }
        fake.route("GET", "/api/flow_runs/*") { _, _, _ in .json(200, fakeFlowRunJSON(id: "r1", stateType: "RUNNING")) }
        fake.inject([.delay(5)], method: "GET", path: "/api/flow_runs/*")
        let context = WorkerContext(settings: Settings(apiURL: fake.apiURL, pool: "p", workerName: "w"), client: fake.client())
        let output = await capturingStderr {
            let heartbeat = Task {
                await FlowRunHeartbeat(events: context.events, every: 30)
                    .beat(adopting: "r1", client: context.client, lookups: context.lookups, log: context.log)
            }
            for _ in 0..<100 where fake.requests("GET", "/api/flow_runs/r1").isEmpty { try? await Task.sleep(nanoseconds: 20_000_000) }
            heartbeat.cancel()
            try? await Task.sleep(nanoseconds: 300_000_000)
        }
        XCTAssertEqual(fake.requests("GET", "/api/flow_runs/r1").count, 1)
        XCTAssertFalse(output.contains("WARNING"), output)
        XCTAssertEqual(context.events.shipper.pending, 0, "no heartbeat for a job that ended")
    }

    /// A run that is gone (404) gets no heartbeats, and is not read again every interval.
    func testAnAdoptedRunThatIsGoneIsNotReadAgainAndAgain() async throws {
        let fake = try FakePrefectAPI()
        defer { fake.stop() }
        fake.route("GET", "/api/flow_runs/*") { _, _, _ in .json(404, #"{"detail":"Flow run not found"}"#) }
        let context = WorkerContext(settings: Settings(apiURL: fake.apiURL, pool: "p", workerName: "w"), client: fake.client())
        let output = await capturingStderr {
            let heartbeat = Task {
                await FlowRunHeartbeat(events: context.events, every: 0.1)
                    .beat(adopting: "r1", client: context.client, lookups: context.lookups, log: context.log)
            }
            try? await Task.sleep(nanoseconds: 600_000_000)
            heartbeat.cancel()
        }
        XCTAssertEqual(fake.requests("GET", "/api/flow_runs/r1").count, 1, output)
        XCTAssertEqual(output.components(separatedBy: "cannot read the adopted run").count - 1, 1, output)
    }
}
