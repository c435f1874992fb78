import XCTest
@testable import PrefectWorker

/// `FlowRunHeartbeat.seconds`: the heartbeat interval as the engine reads its setting.
final class FlowRunHeartbeatTests: XCTestCase {
    func testHeartbeatFrequencyAsTheEngineReadsIt() {
        typealias S = FlowRunHeartbeat
        XCTAssertEqual(S.seconds([:], run: "r"), 180, "Prefect's default")
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"], run: "r"), 30)
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "45"], run: "r"), 45)
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "5"], run: "r"), 30, "Prefect's minimum")
        XCTAssertEqual(S.seconds(["PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "60"], run: "r"), 60, "the legacy name")
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "40", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "60"], run: "r"), 40)
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "often"], run: "r"), 180)
    }
}
