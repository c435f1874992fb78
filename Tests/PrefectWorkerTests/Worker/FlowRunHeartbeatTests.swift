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
        let heartbeat = FlowRunHeartbeat(run: run, flowName: "f", pool: nil, events: context.events, every: seconds)
        try await Task.sleep(nanoseconds: 200_000_000)  // the heartbeat's task is asleep (or has trapped) by now
        heartbeat.stop()
        XCTAssertEqual(context.events.shipper.pending, 1, "the first heartbeat, at once")
    }
}
